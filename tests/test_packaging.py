"""An installed edgemtl has its target files and board kits (package data), not only a source checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the checkout's files (tracked and new, not ignored): setuptools builds in the source
    tree, and a stale build/ there would put files into the wheel that the checkout no longer has."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    for name in listed:
        origin = REPO / name
        if origin.is_file() and not origin.is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                           "-w", str(out)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"pip wheel failed: {done.stderr[-2000:]}")
    return next(out.glob("edgemtl-*.whl"))


def test_the_wheel_carries_every_target_file_and_board_kit(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for target in (REPO / "edgemtl" / "resources" / "targets").glob("*.toml"):
        assert f"edgemtl/resources/targets/{target.name}" in names
    for kit_file in ("zcu104/driver.py", "zcu104/block_design.tcl", "gap9/main.c", "gap9/Makefile",
                     "arm64/ort_runner.py", "arm64/make_emulated_board.sh"):
        assert f"edgemtl/resources/hw/{kit_file}" in names
    assert "edgemtl/backends/c/kernels.c" in names and "edgemtl/backends/hls4ml_ext/nnet_window_pool_stream.h" in names


def test_an_installed_copy_outside_the_checkout_finds_its_targets(wheel, tmp_path):
    """Unpacked where no checkout is (what pip install does), `edgemtl targets` lists the four boards from the
    package itself."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import json, edgemtl, edgemtl.targets as t; "
            "print(json.dumps([edgemtl.__file__, sorted(t.available_targets()), str(t.load_target('zcu104').source)]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    module, names, source = json.loads(done.stdout)
    assert module.startswith(str(site)) and names == ["arm64", "gap9", "host", "zcu104"]
    assert source.startswith(str(site / "edgemtl" / "resources" / "targets"))
