"""The zcu104 flow's hls4ml step enforces what it records: the C simulation equals the quantized model and the
g++ testbench's run agrees with the C simulation. Fast: the backend faked at the flow's boundary; slow: the
tiny mtl-cnn's scene path through real hls4ml, g++ and a corrupted testbench log."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import edgemtl.flows.fpga_hls4ml as flow
from edgemtl.errors import EdgemtlError
from edgemtl.flow import CompileOptions, FlowContext, FlowState
from edgemtl.targets import load_target

TARGET = load_target("zcu104")
CSIM = {"samples": 2, "max_abs_diff_lsb": 0.0, "passed": True, "exact": True,
        "provenance": {"kind": "simulated", "source": "hls4ml C simulation",
                       "detail": "bit-accurate: equal to the quantized model on 2 samples"}}
NOT_FOUND = {"built": False, "ran": False, "reason": "g++ not found on PATH"}
AGREES = {"built": True, "ran": True, "exit_status": 0, "tb_samples": 2, "matches_csim": True}


def fake_ctx(tmp_path: Path) -> SimpleNamespace:
    path = SimpleNamespace(fabric=lambda x: torch.zeros(len(x), 3), host_resize=None, host_softmax=None)
    return SimpleNamespace(progress=FlowContext.progress, target=TARGET, options=CompileOptions(csim_samples=2),
                           bundle=tmp_path,
                           loaded=SimpleNamespace(spec=None, model=None), state=FlowState(quantized={"scene": path}),
                           manifest={"tasks": {"scene": {"artifacts": {"qonnx": "tasks/scene/model.qonnx.onnx"}}}})


@pytest.fixture()
def fake_backend(monkeypatch):
    """Everything hls4ml_step calls, faked; returns a setter for what the testbench reports."""
    project = SimpleNamespace(precision_table={"layer": {"result_t": "fixed<8,0>"}}, seconds=1.0)

    def build(qonnx, out_dir, *args):
        out_dir.mkdir(parents=True, exist_ok=True)  # as hls4ml writes the project
        return project

    monkeypatch.setattr(flow, "build_hls_project", build)
    monkeypatch.setattr(flow, "_grid_samples", lambda ctx, qmodel, count: torch.zeros(count, 3, 4, 4))
    monkeypatch.setattr(flow, "csim_check", lambda *args: dict(CSIM))
    monkeypatch.setattr(flow, "output_lsb", lambda qmodel: 1.0)
    monkeypatch.setattr(flow, "_io_description", lambda *args: {"task": "scene"})
    bench = {}
    monkeypatch.setattr(flow, "build_testbench", lambda p: dict(bench["result"]))
    return lambda result: bench.update(result=result)


@pytest.mark.parametrize("bench, expected", [
    ({**AGREES, "matches_csim": False, "tb_max_abs_diff": 0.25},
     "task 'scene': the g++ testbench of tasks/scene/hls4ml disagrees with the hls4ml C simulation: "
     "max |testbench - C simulation| 0.25 over 2 samples"),
    ({**AGREES, "matches_csim": False, "tb_samples": 1, "tb_reason": "output 'scene': 2 values in the log, expected 3"},
     "task 'scene': the g++ testbench of tasks/scene/hls4ml disagrees with the hls4ml C simulation: "
     "output 'scene': 2 values in the log, expected 3"),
    ({"built": True, "ran": True, "exit_status": 0, "matches_csim": False,
      "tb_reason": "it wrote no tb_data/csim_results.log"},
     "task 'scene': the g++ testbench of tasks/scene/hls4ml disagrees with the hls4ml C simulation: "
     "it wrote no tb_data/csim_results.log"),
    ({"built": True, "ran": True, "exit_status": 134, "matches_csim": False, "tb_reason": "it exited with status 134"},
     "task 'scene': the g++ testbench of tasks/scene/hls4ml disagrees with the hls4ml C simulation: "
     "it exited with status 134"),
    ({"built": True, "ran": True, "exit_status": 0},  # an older record without the verdict: not agreement
     "task 'scene': the g++ testbench of tasks/scene/hls4ml disagrees with the hls4ml C simulation: "
     "its run gave no output to compare"),
])
def test_a_testbench_that_ran_and_disagrees_fails_the_compile(tmp_path, fake_backend, bench, expected):
    fake_backend(bench)
    with pytest.raises(EdgemtlError) as err:
        flow.hls4ml_step(fake_ctx(tmp_path))
    assert str(err.value) == expected


def test_an_agreeing_testbench_and_a_missing_gxx_are_recorded_as_they_are(tmp_path, fake_backend):
    fake_backend(AGREES)
    ctx = fake_ctx(tmp_path)
    flow.hls4ml_step(ctx)
    hls = ctx.manifest["tasks"]["scene"]["hls4ml"]
    assert hls["ok"] and hls["csim"] == CSIM and hls["testbench"] == AGREES
    assert json.loads((tmp_path / "tasks/scene/hls4ml/io.json").read_text()) == {"task": "scene"}

    fake_backend(NOT_FOUND)  # without g++ the compile goes on and says the testbench was not built, and why
    ctx = fake_ctx(tmp_path)
    flow.hls4ml_step(ctx)
    assert ctx.manifest["tasks"]["scene"]["hls4ml"]["testbench"] == NOT_FOUND


# ---- the real thing: the tiny mtl-cnn's scene path ---------------------------------------------------------


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    """The tiny zoo mtl-cnn's scene path, w4a4 (2 QAT steps), exported to QONNX as export_step does."""
    pytest.importorskip("hls4ml")
    from conftest import tiny_model
    from edgemtl.backends.qonnx_export import export_qonnx
    from edgemtl.data import load_data
    from edgemtl.passes.quantize_brevitas import QuantConfig, quantize_task

    folder = tmp_path_factory.mktemp("zcu104_scene")
    model, spec = tiny_model("mtl-cnn")
    train, val = load_data("scenes", "train", n=64), load_data("scenes", "val", n=16)
    qmodel, _ = quantize_task(model, spec, "scene", train, val,
                              QuantConfig(precision="w4a4", qat_steps=2, nearest_upsampling=True, host_resize=True))
    export_qonnx(qmodel.fabric, spec, folder / "model.qonnx.onnx")
    return qmodel, spec, val, folder / "model.qonnx.onnx"


def real_ctx(scene_path, bundle: Path, samples: int) -> SimpleNamespace:
    qmodel, spec, val, qonnx = scene_path
    (bundle / "tasks/scene").mkdir(parents=True)
    (bundle / "tasks/scene/model.qonnx.onnx").write_bytes(qonnx.read_bytes())
    return SimpleNamespace(progress=FlowContext.progress, target=TARGET,
                           options=CompileOptions(csim_samples=samples), bundle=bundle,
                           loaded=SimpleNamespace(spec=spec, model=None), state=FlowState(quantized={"scene": qmodel}, data=val),
                           manifest={"tasks": {"scene": {"artifacts": {"qonnx": "tasks/scene/model.qonnx.onnx"}}}})


@pytest.mark.slow
@pytest.mark.needs_hls4ml
def test_the_real_scene_path_is_bit_accurate_and_its_testbench_agrees(scene_path, tmp_path):
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("g++ not found on PATH")
    ctx = real_ctx(scene_path, tmp_path, samples=8)
    flow.hls4ml_step(ctx)
    hls = ctx.manifest["tasks"]["scene"]["hls4ml"]
    csim, bench = hls["csim"], hls["testbench"]
    assert csim["exact"] and csim["max_abs_diff_lsb"] == 0.0 and csim["samples"] == 8
    assert csim["provenance"] == {"kind": "simulated", "source": "hls4ml C simulation",
                                  "detail": "bit-accurate: equal to the quantized model on 8 samples"}
    assert bench["built"] and bench["ran"] and bench["exit_status"] == 0, bench
    assert bench["matches_csim"] is True and bench["tb_samples"] == 8 and bench["tb_max_abs_diff"] == 0.0


@pytest.mark.slow
@pytest.mark.needs_hls4ml
def test_a_corrupted_testbench_output_fails_the_real_compile(scene_path, tmp_path, monkeypatch):
    """The g++ testbench really runs; its csim_results.log is then changed in one value before the flow reads it."""
    import shutil

    import edgemtl.backends.hls4ml_csim as csim

    if shutil.which("g++") is None:
        pytest.skip("g++ not found on PATH")
    compare = csim._compare_tb_log

    def corrupted(project, log, expected):
        lines = log.read_text().splitlines()
        values = lines[0].split()
        values[0] = repr(float(values[0]) + 0.5)
        log.write_text("\n".join([" ".join(values), *lines[1:]]) + "\n")
        return compare(project, log, expected)

    monkeypatch.setattr(csim, "_compare_tb_log", corrupted)
    with pytest.raises(EdgemtlError) as err:
        flow.hls4ml_step(real_ctx(scene_path, tmp_path, samples=2))
    assert str(err.value) == ("task 'scene': the g++ testbench of tasks/scene/hls4ml disagrees with the hls4ml C "
                              "simulation: max |testbench - C simulation| 0.5 over 2 samples")
