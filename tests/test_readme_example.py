"""The README's own-model example, run line by line as written (in a copy of examples/own_model)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _example_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- own-model example -->\n```bash\n(.*?)```", readme, re.S)
    assert block, "README.md lost its own-model example block"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_own_model_example_runs_as_written(tmp_path):
    lines = _example_lines()
    assert lines[0] == "cd examples/own_model"
    workdir = tmp_path / "repo" / "examples" / "own_model"
    shutil.copytree(ROOT / "examples" / "own_model", workdir, ignore=shutil.ignore_patterns("my_images", "weights.pt"))
    bin_dir = Path(sys.executable).parent  # the README's ../../.venv/bin is this venv, wherever the copy lives
    for line in lines[1:]:
        argv = shlex.split(line)
        argv[0] = str(bin_dir / Path(argv[0]).name)
        done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
    manifest = json.loads((workdir / "build" / "weights-host" / "manifest.json").read_text())
    assert manifest["data"]["kind"] == "folder" and manifest["data"]["labelled_tasks"] == ["seg", "depth"]
    assert manifest["tasks"]["seg"]["metrics"]["miou"] > 0.2  # trained on the folder, not random weights
