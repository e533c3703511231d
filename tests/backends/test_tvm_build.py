"""TVM (Relax) builds of a task graph: an aarch64 shared library for the board, an x86_64 one that runs here and
matches ONNX Runtime; clean one-line errors without TVM or the cross compiler."""

from __future__ import annotations

import numpy as np
import pytest

from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.backends import tvm_build
from edgemtl.model.onnx_export import export_task
from edgemtl.errors import EdgemtlError

from conftest import tiny_model


@pytest.fixture(scope="module")
def scene_graph(tmp_path_factory):
    model, spec = tiny_model("mtl-cnn")
    path = export_task(model, spec, "scene", tmp_path_factory.mktemp("tvm") / "scene.onnx")
    return path, [1, *spec.input.shape]


def test_missing_tvm_is_a_clear_error(monkeypatch, scene_graph, tmp_path):
    monkeypatch.setattr(tvm_build, "tvm_missing", lambda: "apache-tvm is not installed (tvm): pip install edgemtl[tvm]")
    with pytest.raises(EdgemtlError, match=r"pip install edgemtl\[tvm\]"):
        tvm_build.build_onnx(scene_graph[0], tmp_path / "m.so", "aarch64", scene_graph[1])


def test_missing_cross_compiler_names_the_apt_package(monkeypatch):
    monkeypatch.setattr(tvm_build.shutil, "which", lambda name: None)
    assert "apt-get install g++-aarch64-linux-gnu" in tvm_build.cross_compiler_missing("aarch64")


@pytest.mark.needs_tvm
def test_missing_cross_compiler_is_recorded_and_the_host_build_goes_on(monkeypatch, scene_graph, tmp_path):
    pytest.importorskip("tvm")
    real_which = tvm_build.shutil.which
    monkeypatch.setattr(tvm_build.shutil, "which", lambda name: None if name.startswith("aarch64") else real_which(name))
    builds = tvm_build.build_all(scene_graph[0], tmp_path, scene_graph[1], arches=("aarch64",))
    assert not builds["aarch64"].built and "apt-get install g++-aarch64-linux-gnu" in builds["aarch64"].reason
    assert builds["aarch64"].to_dict()["built"] is False


@pytest.mark.slow  # the default suite builds both arches in tests/profile/test_arm64_end_to_end.py
@pytest.mark.needs_tvm
def test_aarch64_and_host_builds(scene_graph, tmp_path):
    pytest.importorskip("tvm")
    if tvm_build.cross_compiler_missing("aarch64"):
        pytest.skip(tvm_build.cross_compiler_missing("aarch64"))
    path, shape = scene_graph
    builds = tvm_build.build_all(path, tmp_path, shape)
    arm, host = builds["aarch64"], builds["x86_64"]
    assert arm.built and host.built, (arm.reason, host.reason)
    header = arm.path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2 and int.from_bytes(header[18:20], "little") == 183  # ELF64, EM_AARCH64
    assert arm.target == tvm_build.AARCH64_TARGET and arm.to_dict(tmp_path)["path"] == "aarch64/model.so"
    if tvm_build.host_arch() != "x86_64":
        return
    images = np.random.default_rng(0).standard_normal((3, *shape[1:])).astype(np.float32)
    expected = ort_backend.run(ort_backend.make_session(path, 1), images)["scene"]
    got = tvm_build.run_module(host.path, images)
    assert len(got) == 1 and got[0].shape == expected.shape
    np.testing.assert_allclose(got[0], expected, atol=1e-4, rtol=1e-4)
