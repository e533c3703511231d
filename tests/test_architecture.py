"""The layers stay one-way: import-linter checks pyproject.toml's contracts (docs/architecture.md draws them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_no_module_imports_a_layer_above_its_own():
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.fail("lint-imports is missing: the test extra installs import-linter (make setup)")
    done = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


MAX_MODULE_LINES = 700  # past this a module holds more than one job: split it by job (docs/architecture.md)


def test_no_module_is_over_700_lines():
    long = {str(path.relative_to(REPO)): n for path in (REPO / "edgemtl").rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these by job: {long}"
