"""FINN estimates through the finn-plus venv: the subprocess protocol against a fake venv (fast, everywhere),
and the real estimate-only build of small brevitas CNNs (slow; skipped without `.venv-finn`)."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from edgemtl.backends.finn import DEFAULT_FINN_VENV, PROVENANCE, finn_estimates, finn_python
from edgemtl.errors import EdgemtlError
from edgemtl.targets import load_target

PART = "xczu7ev-ffvc1156-2-e"
ZCU104_LOGIC = load_target("zcu104").fabric.model_dump()


def test_absent_venv_says_how_to_create_it(tmp_path):
    out = finn_estimates(tmp_path / "model.onnx", "scene", PART, 200, [1000], tmp_path / "w", venv=tmp_path / "nope")
    assert out["available"] is False and out["how_to_create"] == "edgemtl toolchain install finn"
    assert finn_python(tmp_path / "nope") is None


# ---- the protocol, with a fake venv whose "python" plays the worker ------------------------------------

FAKE_PYTHON = """#!/bin/bash
# called as: python -P finn_worker.py REQUEST RESULT
case "$FAKE_FINN_MODE" in
  ok) cp "$FAKE_FINN_RESULT" "$4" ;;
  crash) echo "Traceback (most recent call last):"; echo "ImportError: boom in finn"; exit 3 ;;
  slow) sleep 20 ;;
esac
"""

RAW = {"target_fps": 1000.0, "lut": 2300.0, "bram18": 4.0, "uram": 0.0, "dsp": 2.0,
       "estimated_fps": 2712.7, "estimated_latency_ms": 0.77, "max_cycles": 73728, "bottleneck_layer": "MVAU_hls_1",
       "critical_path_cycles": 153603, "cycles_per_layer": {"MVAU_hls_1": 73728}, "resources_per_layer": {},
       "layers_without_lut_estimate": [], "folding": {}}


def expected_entry(raw: dict) -> dict:
    """What finn_estimates must make of one worker entry: its figures unchanged, plus provenance, meets_target
    and the utilisation of the XCZU7EV (DS891: the data sheet's own figures, against targets/zcu104.toml)."""
    renamed = {"estimated_latency_ms": "latency_ms"}
    entry = {renamed.get(k, k): v for k, v in raw.items()}
    totals = {"lut": 230_400, "bram18": 624, "uram": 96, "dsp": 1728}
    return {**entry, "provenance": PROVENANCE, "meets_target": raw["estimated_fps"] >= raw["target_fps"],
            "utilisation": {k: raw[k] / v for k, v in totals.items()}}


@pytest.fixture()
def fake_venv(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    (venv / "lib/python3.11/site-packages/finn/builder").mkdir(parents=True)
    (venv / "lib/python3.11/site-packages/finn/builder/build_dataflow.py").write_text("")
    python = venv / "bin" / "python"
    python.parent.mkdir()
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read by the fake")
    monkeypatch.setenv("FAKE_FINN_MODE", "ok")
    return venv, model


def test_protocol_ok(fake_venv, tmp_path, monkeypatch):
    venv, model = fake_venv
    result = tmp_path / "canned.json"
    result.write_text(json.dumps({"version": 1, "ok": True, "finn_version": "1.6.1", "nodes_unmapped": ["Transpose_0"],
                                  "by_fps": {"1000": RAW}}))
    monkeypatch.setenv("FAKE_FINN_RESULT", str(result))
    out = finn_estimates(model, "scene", PART, 200, [1000], tmp_path / "work", venv=venv, logic=ZCU104_LOGIC)
    assert out["available"] and out["ok"] and out["provenance"] == PROVENANCE == {"kind": "estimated", "source": "FINN analytical model"}
    assert out["tool"] == "finn-plus 1.6.1" and out["nodes_unmapped"] == ["Transpose_0"]
    assert list(out["by_target_fps"]) == ["1000"]
    assert out["by_target_fps"]["1000"] == expected_entry(RAW)  # every figure is the worker's, none dropped or made up
    request = json.loads((tmp_path / "work" / "finn_request.json").read_text())
    assert request == {"version": 1, "qonnx_path": str(model.resolve()), "task": "scene", "part": PART,
                       "clock_mhz": 200.0, "target_fps": [1000.0], "work_dir": str((tmp_path / "work").resolve())}


def test_the_zcu104_flow_records_finns_figures_per_task(fake_venv, tmp_path, monkeypatch):
    """estimates_step puts finn_estimates' answer (from the worker's result) into the manifest as it is, next to
    the roofline, for every target fps in targets/zcu104.toml, and removes FINN's work folder."""
    import functools
    from types import SimpleNamespace

    import torch

    import edgemtl.backends.finn as finn
    import edgemtl.flows.fpga_hls4ml as flow
    from edgemtl.flow import CompileOptions, FlowContext, FlowState
    from edgemtl.targets import load_target

    venv, model = fake_venv
    fast = {**RAW, "target_fps": 10000.0, "lut": 9100.0, "estimated_fps": 10240.0, "max_cycles": 19531}
    result = tmp_path / "canned.json"
    result.write_text(json.dumps({"version": 1, "ok": True, "finn_version": "1.6.1", "nodes_unmapped": [],
                                  "by_fps": {"1000": RAW, "10000": fast}}))
    monkeypatch.setenv("FAKE_FINN_RESULT", str(result))
    monkeypatch.setattr(flow, "finn_estimates", functools.partial(finn.finn_estimates, venv=venv))
    roofline = {"provenance": {"kind": "estimated", "source": "edgemtl roofline"}, "fps": 1.0}
    monkeypatch.setattr(flow, "estimate_model", lambda *args: dict(roofline))
    bundle = tmp_path / "bundle"
    (bundle / "tasks/scene").mkdir(parents=True)
    (bundle / "tasks/scene/model.qonnx.onnx").write_bytes(model.read_bytes())
    target = load_target("zcu104")
    ctx = SimpleNamespace(progress=FlowContext.progress, target=target, options=CompileOptions(), bundle=bundle,
                          state=FlowState(tasks=["scene"]),
                          loaded=SimpleNamespace(model=torch.nn.Identity(), spec=None),
                          manifest={"tasks": {"scene": {"artifacts": {"qonnx": "tasks/scene/model.qonnx.onnx"}}}})
    flow.estimates_step(ctx)
    entry = ctx.manifest["tasks"]["scene"]
    assert entry["roofline"] == roofline
    recorded = entry["finn"]
    assert recorded["available"] and recorded["ok"] and recorded["provenance"] == PROVENANCE
    assert recorded["tool"] == "finn-plus 1.6.1" and recorded["clock_mhz"] == 200.0 and recorded["part"] == target.part
    assert [float(k) for k in recorded["by_target_fps"]] == [float(f) for f in target.target_fps]
    assert recorded["by_target_fps"] == {"1000": expected_entry(RAW), "10000": expected_entry(fast)}
    assert not (bundle / "work").exists()


def test_protocol_refusal_crash_and_timeout(fake_venv, tmp_path, monkeypatch):
    venv, model = fake_venv
    refusal = tmp_path / "refusal.json"
    refusal.write_text(json.dumps({"version": 1, "ok": False, "step": "step_convert_to_hw",
                                   "reason": "step_convert_to_hw: no FINN hardware layer for Gather"}))
    monkeypatch.setenv("FAKE_FINN_RESULT", str(refusal))
    out = finn_estimates(model, "scene", PART, 200, [1000], tmp_path / "w1", venv=venv)
    assert out["available"] and not out["ok"] and "no FINN hardware layer for Gather" in out["reason"]

    monkeypatch.setenv("FAKE_FINN_MODE", "crash")
    out = finn_estimates(model, "scene", PART, 200, [1000], tmp_path / "w2", venv=venv)
    assert not out["ok"] and "status 3" in out["reason"] and "ImportError: boom in finn" in out["reason"]

    monkeypatch.setenv("FAKE_FINN_MODE", "slow")
    start = time.perf_counter()
    out = finn_estimates(model, "scene", PART, 200, [1000], tmp_path / "w3", venv=venv, timeout_s=1)
    assert not out["ok"] and "within 1 s" in out["reason"] and time.perf_counter() - start < 15


def test_bad_requests_raise_one_line(fake_venv, tmp_path):
    venv, model = fake_venv
    with pytest.raises(EdgemtlError, match="does not exist"):
        finn_estimates(tmp_path / "missing.onnx", "scene", PART, 200, [1000], tmp_path / "w", venv=venv)
    with pytest.raises(EdgemtlError, match="target_fps"):
        finn_estimates(model, "scene", PART, 200, [], tmp_path / "w", venv=venv)


# ---- the real thing ---------------------------------------------------------------------------------------

needs_finn = pytest.mark.skipif(finn_python(DEFAULT_FINN_VENV) is None,
                                reason=f"no finn-plus venv at {DEFAULT_FINN_VENV} (edgemtl toolchain install finn)")


def small_cnn(heads: int, path: Path) -> Path:
    """A 4-bit brevitas CNN (8-bit fixed-point input), one or two linear heads, exported to QONNX."""
    import torch
    from torch import nn

    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w4 = dict(weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=4, bias=False)
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(3, 8, 3, padding=1, **w4)
            self.relu1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.conv2 = qnn.QuantConv2d(8, 16, 3, padding=1, **w4)
            self.relu2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.pool = nn.MaxPool2d(2)
            self.heads = nn.ModuleList(qnn.QuantLinear(16 * 4 * 4, n, **w4) for n in (10, 5)[:heads])

        def forward(self, x):
            x = self.pool(self.relu1(self.conv1(self.inp(x))))
            x = self.pool(self.relu2(self.conv2(x))).flatten(1)
            outs = tuple(head(x) for head in self.heads)
            return outs[0] if heads == 1 else outs

    torch.manual_seed(0)
    export_qonnx(Net().eval(), torch.randn(1, 3, 16, 16), export_path=str(path))
    return path


@pytest.mark.slow
@pytest.mark.needs_finn
@needs_finn
def test_real_estimate_of_a_small_cnn(tmp_path):
    model = small_cnn(1, tmp_path / "cnn.onnx")
    start = time.perf_counter()
    out = finn_estimates(model, "cnn", PART, 200, [1000, 10000], tmp_path / "finn")
    seconds = time.perf_counter() - start
    assert out["available"] and out["ok"], out.get("reason")
    slow, fast = out["by_target_fps"]["1000"], out["by_target_fps"]["10000"]
    for entry in (slow, fast):
        assert entry["provenance"] == PROVENANCE
        assert entry["lut"] > 0 and entry["bram18"] >= 0 and entry["dsp"] >= 0 and entry["cycles_per_layer"]
        assert entry["estimated_fps"] == pytest.approx(200e6 / entry["max_cycles"])
        assert entry["latency_ms"] == pytest.approx(entry["critical_path_cycles"] / 200e3)
        assert any(name.startswith("MVAU") for name in entry["cycles_per_layer"])
    # folding for 10k fps reaches it (SetFolding raises SIMD/PE until the slowest layer fits the budget)
    assert fast["estimated_fps"] >= 10_000 > slow["estimated_fps"] >= 1000
    assert fast["max_cycles"] < slow["max_cycles"]
    for key, entry in out["by_target_fps"].items():  # every figure is FINN's own, from its report files
        reports = tmp_path / "finn" / f"fps_{key}" / "report"
        resources = json.loads((reports / "estimate_layer_resources.json").read_text())
        perf = json.loads((reports / "estimate_network_performance.json").read_text())
        total = resources.pop("total")
        assert (entry["lut"], entry["bram18"], entry["uram"], entry["dsp"]) == (
            total.get("LUT", 0.0), total.get("BRAM_18K", 0.0), total.get("URAM", 0.0), total.get("DSP", 0.0))
        assert entry["cycles_per_layer"] == json.loads((reports / "estimate_layer_cycles.json").read_text())
        assert entry["resources_per_layer"] == resources
        assert entry["max_cycles"] == perf["max_cycles"]
        assert entry["critical_path_cycles"] == perf["critical_path_cycles"]
        assert entry["bottleneck_layer"] == perf["max_cycles_node_name"]
    print(f"FINN estimate: {seconds:.1f} s; 10k fps target -> {fast['estimated_fps']:.0f} fps, "
          f"{fast['lut']:.0f} LUT, {fast['bram18']:.0f} BRAM18, {fast['dsp']:.0f} DSP")


@pytest.mark.slow
@pytest.mark.needs_finn
@needs_finn
def test_real_estimate_of_two_heads_and_a_refusal(tmp_path):
    import torch

    two = small_cnn(2, tmp_path / "two.onnx")
    out = finn_estimates(two, "all", PART, 200, [10000], tmp_path / "two")
    assert out["ok"], out.get("reason")
    layers = out["by_target_fps"]["10000"]["cycles_per_layer"]
    # the branch point became a DuplicateStreams layer feeding both heads' matrix units
    assert any(name.startswith("DuplicateStreams") for name in layers)
    assert sum(name.startswith("MVAU") for name in layers) == 4

    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 14 * 14, 5))
    path = tmp_path / "float.onnx"
    torch.onnx.export(plain, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False)
    out = finn_estimates(path, "x", PART, 200, [1000], tmp_path / "float")
    assert out["available"] and out["ok"] is False
    assert "no FINN hardware layer" in out["reason"] and "\n" not in out["reason"]


@pytest.fixture(scope="module")
def mtl_cnn_qonnx(tmp_path_factory):
    """The tiny zoo mtl-cnn's scene and depth paths, w4a4 (2 QAT steps), exported to QONNX: 32-bit bias Quant
    nodes on every conv / the Gemm, residual Adds, GlobalAveragePool (scene); a skip Concat and resizes (depth,
    nearest; and bilinear, which FINN has no layer for)."""
    from conftest import tiny_model
    from edgemtl.backends.qonnx_export import export_qonnx
    from edgemtl.data import load_data
    from edgemtl.passes.quantize_brevitas import QuantConfig, quantize_task

    folder = tmp_path_factory.mktemp("mtl_cnn_qonnx")
    model, spec = tiny_model("mtl-cnn")
    train, val = load_data("scenes", "train", n=64), load_data("scenes", "val", n=16)
    paths = {}
    for name, task, nearest in (("scene", "scene", True), ("depth", "depth", True), ("depth_bilinear", "depth", False)):
        qmodel, _ = quantize_task(model, spec, task, train, val,
                                  QuantConfig(precision="w4a4", qat_steps=2, nearest_upsampling=nearest))
        paths[name] = export_qonnx(qmodel, spec, folder / f"{name}.qonnx.onnx")
    return paths


@pytest.mark.slow
@pytest.mark.needs_finn
@needs_finn
def test_real_estimate_of_the_mtl_cnn_scene_path(mtl_cnn_qonnx, tmp_path):
    """brevitas' bias quantizers used to stop FINN's QONNX conversion ("cannot reshape array of size 1 into shape
    (1,4,1,1)"), and the pooled head's 1/(H*W) scale stayed unmapped between hardware layers."""
    start = time.perf_counter()
    out = finn_estimates(mtl_cnn_qonnx["scene"], "scene", PART, 200, [1000, 10000], tmp_path / "scene")
    seconds = time.perf_counter() - start
    assert out["available"] and out["ok"], out.get("reason")
    assert all(node.endswith("(Transpose)") for node in out["nodes_unmapped"])  # the input's NCHW -> NHWC only
    slow, fast = out["by_target_fps"]["1000"], out["by_target_fps"]["10000"]
    for entry in (slow, fast):
        layers = entry["cycles_per_layer"]
        assert entry["lut"] > 0 and entry["estimated_fps"] == pytest.approx(200e6 / entry["max_cycles"])
        assert sum(name.startswith("MVAU") for name in layers) == 10  # 9 convs (two 1x1 shortcuts among them) + the fc
        assert any(name.startswith("GlobalAccPool") for name in layers)
        # residual adds of equally scaled integers: no float rescaling left inside the trunk
        assert sum(name.startswith("ElementwiseAdd") for name in layers) == 3
        assert sum(name.startswith("ElementwiseMul") for name in layers) <= 1  # the output's scale
    assert fast["estimated_fps"] >= 10_000 > slow["estimated_fps"] >= 1000
    print(f"FINN estimate of mtl-cnn scene: {seconds:.1f} s; " + "; ".join(
        f"{k} fps target -> {e['estimated_fps']:.0f} fps, {e['lut']:.0f} LUT, {e['bram18']:.0f} BRAM18, "
        f"{e['dsp']:.0f} DSP" for k, e in out["by_target_fps"].items()))


@pytest.mark.slow
@pytest.mark.needs_finn
@needs_finn
def test_real_estimate_of_the_mtl_cnn_depth_path_and_a_bilinear_refusal(mtl_cnn_qonnx, tmp_path):
    out = finn_estimates(mtl_cnn_qonnx["depth"], "depth", PART, 200, [10000], tmp_path / "depth")
    assert out["ok"], out.get("reason")
    layers = out["by_target_fps"]["10000"]["cycles_per_layer"]
    assert sum(name.startswith("UpsampleNearestNeighbour") for name in layers) == 2
    assert sum(name.startswith("StreamingConcat") for name in layers) == 1
    assert out["by_target_fps"]["10000"]["estimated_fps"] >= 10_000

    start = time.perf_counter()
    out = finn_estimates(mtl_cnn_qonnx["depth_bilinear"], "depth", PART, 200, [1000], tmp_path / "bilinear")
    assert out["available"] and out["ok"] is False and "\n" not in out["reason"]
    assert out["reason"].startswith("step_prepare_qonnx: no FINN hardware layer for Resize mode 'linear'")
    assert time.perf_counter() - start < 60  # refused before streamlining
