"""ruff passes on the package, the tests, the benchmarks and the examples (pyproject.toml's [tool.ruff] says which
rules), in the test command like the layer contracts (test_architecture.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.fail("ruff is missing: the test extra installs it (make setup)")
    done = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "edgemtl", "tests",
                           "benchmarks", "examples"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
