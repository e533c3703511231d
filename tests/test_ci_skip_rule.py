"""The CI skip rule, run on a throwaway suite in a subprocess: locally a skip stays a skip; with CI=true every kind
of skip (in the test, a skipif marker, a module-level importorskip) fails the run, and an xfail stays an xfail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SUITE = '''
import pytest

def test_passes():
    pass

def test_skips_inside():
    pytest.skip("no tool")

@pytest.mark.skipif(True, reason="missing gcc")
def test_skipif_marker():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
'''


def _run(folder: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(Path(__file__).parent)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def _suite(tmp_path: Path, with_module_skip: bool) -> Path:
    (tmp_path / "conftest.py").write_text("from ci_skip_rule import pytest_make_collect_report, pytest_runtest_makereport\n")
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (tmp_path / "test_suite.py").write_text(SUITE)
    if with_module_skip:
        (tmp_path / "test_module.py").write_text('import pytest\npytest.importorskip("no_such_module_edgemtl")\n'
                                                 "def test_never():\n    pass\n")
    return tmp_path


def test_locally_a_skip_is_a_skip(tmp_path):
    result = _run(_suite(tmp_path, with_module_skip=True), ci=None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout


def test_in_ci_every_skip_fails_and_says_why(tmp_path):
    result = _run(_suite(tmp_path, with_module_skip=False), ci="true")
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in result.stdout  # a setup-time skip is reported as an error
    assert "skipped in CI (no tool)" in result.stdout and "skipped in CI (missing gcc)" in result.stdout


def test_in_ci_a_module_level_importorskip_fails(tmp_path):
    result = _run(_suite(tmp_path, with_module_skip=True), ci="true")
    assert result.returncode != 0 and "skipped in CI (could not import 'no_such_module_edgemtl'" in result.stdout
