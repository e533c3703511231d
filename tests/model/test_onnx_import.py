"""Models that arrive as ONNX: conversion checked against ONNX Runtime, the batch freed, and one-line errors."""

from __future__ import annotations

import json
from importlib.util import find_spec

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from custom_models import SPEC_YAML, TwoHeadUNet, unet_two_heads
from edgemtl.analysis.cost import model_cost
from edgemtl.model.checkpoint import load
from test_cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.skipif(find_spec("onnx2torch") is None, reason="onnx2torch not installed (make setup)")

HEADS_SPEC = """\
input: {shape: [3, 32, 32], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
tasks:
  - {name: seg, kind: segmentation, output_shape: [4, 32, 32]}
  - {name: cls, kind: classification, output_shape: [5]}
  - {name: box, kind: raw, output_shape: [2, 4], onnx_output: "box:0"}
"""


class ThreeHeads(nn.Module):
    """Upsampled segmentation, pooled classifier and a flatten-slice-reshape box head: the shapes exporters bake in."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.seg, self.cls = nn.Conv2d(32, 4, 1), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.body(x)
        seg = nn.functional.interpolate(self.seg(f), scale_factor=2.0, mode="bilinear")
        return seg, self.cls(f.mean((2, 3))), f.flatten(1)[:, :8].reshape(x.shape[0], 2, 4)


def _export(module: nn.Module, path, names: list[str], dynamic: dict | None = None) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.3, 0.3)
    torch.onnx.export(module.eval(), torch.randn(1, 3, 32, 32), path, input_names=["image"], output_names=names,
                      dynamic_axes=dynamic, do_constant_folding=False, dynamo=False, opset_version=20)


class _UNetTuple(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.net = TwoHeadUNet(width)

    def forward(self, x):
        out = self.net(x)
        return out["seg"], out["depth"]


@pytest.fixture
def heads_onnx(tmp_path):
    path, spec = tmp_path / "heads.onnx", tmp_path / "heads.yaml"
    _export(ThreeHeads(), path, ["seg", "cls", "box:0"])  # batch fixed at 1, weights behind Constant nodes, opset 20
    spec.write_text(HEADS_SPEC)
    return path, spec


def _onnxruntime(path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})


def test_a_batch_one_graph_converts_batches_and_matches_onnxruntime(heads_onnx):
    path, spec = heads_onnx
    loaded = load(path, spec_path=spec)
    assert loaded.source == "onnx" and loaded.spec.arch == "onnx:heads.onnx"
    details = loaded.details
    assert details["opset"] == {"ai.onnx": 20} and details["converted_at_opset"] == 17
    assert details["batch"].startswith("fixed at 1") and details["outputs"]["box"] == "box:0"
    assert {"Reshape", "Slice", "Resize"} <= set(details["constant_arguments_bound"])
    assert max(details["check_vs_onnxruntime"]["max_abs_error"].values()) < 1e-4
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = loaded.model(x)
    for i in range(3):  # the ONNX graph takes one image at a time; the converted module takes a batch
        want = _onnxruntime(path, x[i:i + 1].numpy())
        for task, reference in zip(("seg", "cls", "box"), want):
            np.testing.assert_allclose(got[task][i:i + 1].numpy(), reference, atol=1e-4)
    cost = model_cost(loaded.model, loaded.spec, loaded.spec.task_names).to_dict()  # torch.export traces it
    assert cost["tasks"]["cls"]["macs"] > 0


def test_free_height_and_width_are_fixed_from_the_spec(tmp_path):
    path, spec = tmp_path / "unet.onnx", tmp_path / "spec.yaml"
    _export(_UNetTuple(), path, ["seg", "depth"], dynamic={"image": {0: "N", 2: "H", 3: "W"}})
    spec.write_text(SPEC_YAML)
    loaded = load(path, spec_path=spec)
    assert loaded.details["fixed_dims"] == [{"axis": 2, "was": "H", "now": 32}, {"axis": 3, "was": "W", "now": 32}]
    assert loaded.details["batch"] == "dynamic"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = loaded.model(x)
    reference = _onnxruntime(path, x.numpy())
    np.testing.assert_allclose(got["seg"].numpy(), reference[0], atol=1e-4)
    np.testing.assert_allclose(got["depth"].numpy(), reference[1], atol=1e-4)


def test_compile_and_inspect_take_an_onnx_model(capsys, tmp_path, heads_onnx):
    path, spec = heads_onnx
    images = np.random.default_rng(0).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    npz = tmp_path / "own.npz"
    np.savez(npz, images=images, cls=np.arange(24) % 5)
    code, out, err = run_cli(capsys, "inspect", path, "--spec", spec, "--json")
    assert code == 0, err
    assert set(json.loads(out)["tasks"]) == {"seg", "cls", "box"}
    code, _, err = run_cli(capsys, "compile", path, "--spec", spec, "--target", "host", "--data", npz,
                           "-o", tmp_path / "bundle", "--no-latency")
    assert code == 0, err
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["source"] == "onnx" and manifest["model"]["import"]["converted_at_opset"] == 17
    assert "accuracy" in manifest["tasks"]["cls"]["metrics"]
    for task in ("seg", "cls", "box"):
        assert (tmp_path / "bundle" / "tasks" / task / "model.onnx").is_file()


def test_prune_an_onnx_model_gives_an_onnx_model_the_same_spec_loads(capsys, tmp_path):
    """Pruned to an .onnx (not a checkpoint only edgemtl could rebuild); its unlabelled seg is guarded, not frozen."""
    path, spec = tmp_path / "unet.onnx", tmp_path / "spec.yaml"
    _export(_UNetTuple(width=32), path, ["seg", "depth"], dynamic={"image": {0: "N"}})
    spec.write_text(SPEC_YAML)
    rng = np.random.default_rng(0)
    npz = tmp_path / "own.npz"
    np.savez(npz, images=rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8),
             depth=rng.uniform(0.5, 5, (40, 1, 32, 32)).astype(np.float32))
    quick = ["--finetune-steps", "2", "--final-finetune-steps", "2", "--oracle-samples", "8", "--sparsity-steps", "0"]
    code, _, err = run_cli(capsys, "prune", path, "--spec", spec, "--data", npz, *quick, "-o", tmp_path / "p.pt")
    assert_one_line_error(code, err, "a model read from ONNX is pruned to an .onnx file")
    code, out, err = run_cli(capsys, "prune", path, "--spec", spec, "--data", npz, "--flops-target", "0.6", *quick,
                             "-o", tmp_path / "pruned.onnx")
    assert code == 0, err
    assert "pruned ONNX:" in out
    before, after = (json.loads(run_cli(capsys, "inspect", p, "--spec", spec, "--json")[1])["all_tasks"]["macs"]
                     for p in (path, tmp_path / "pruned.onnx"))
    assert after < 0.8 * before
    code, _, err = run_cli(capsys, "compile", tmp_path / "pruned.onnx", "--spec", spec, "--target", "host",
                           "-o", tmp_path / "bundle", "--no-latency")
    assert code == 0, err


def _dense(path) -> None:
    """Flatten then a dense layer: runs only at the 3 x 32 x 32 it was built for."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [5, 3 * 32 * 32], np.zeros(5 * 3 * 32 * 32, np.float32))
    nodes = [helper.make_node("Flatten", ["image"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["cls"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("cls", TensorProto.FLOAT, [1, 5])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_a_dummy_fixed_size_is_overridden_and_recorded(tmp_path, heads_onnx):
    """Exporters write a dummy size into fully convolutional graphs; the spec's size wins, checked in ONNX Runtime."""
    path, spec = heads_onnx
    spec.write_text(HEADS_SPEC.replace("[3, 32, 32]", "[3, 64, 64]").replace("[4, 32, 32]", "[4, 64, 64]"))
    loaded = load(path, spec_path=spec)
    assert loaded.details["overridden_dims"] == [{"axis": 2, "was": 32, "now": 64}, {"axis": 3, "was": 32, "now": 64}]
    assert max(loaded.details["check_vs_onnxruntime"]["max_abs_error"].values()) < 1e-4


def _unconvertible(path, ir_version: int = 8) -> None:
    """Conv then Hardmax: ONNX Runtime runs it, onnx2torch has no converter for Hardmax."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [5, 3, 32, 32], np.zeros(5 * 3 * 32 * 32, np.float32))
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"]), helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Hardmax", ["f"], ["cls"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("cls", TensorProto.FLOAT, [1, 5])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version), path)


@pytest.mark.parametrize("case, pattern", [
    ("garbage", "is not a readable ONNX model"),
    ("missing-output", "reads ONNX output 'box:0'"),
    ("wrong-size", "with the spec's input [1, 3, 64, 64]"),
    ("factory", "leave out --model-factory"),
    ("no-spec", "pass --spec FILE"),
    ("unconvertible", "Hardmax"),
    ("ir-too-new", "cannot load the ONNX model with the spec's input"),
])
def test_bad_onnx_input_is_one_line(capsys, tmp_path, heads_onnx, case, pattern):
    path, spec = heads_onnx
    extra: list = ["--spec", spec]
    if case == "garbage":
        path = tmp_path / "garbage.onnx"
        path.write_bytes(b"\x08\x01not a protobuf at all" * 10)
    elif case == "missing-output":
        path = tmp_path / "renamed.onnx"
        _export(ThreeHeads(), path, ["seg", "cls", "boxes"])
    elif case == "wrong-size":  # a dense layer sized for 32 x 32, a spec that says 64 x 64
        path = tmp_path / "dense.onnx"
        _dense(path)
        spec.write_text("input: {shape: [3, 64, 64]}\ntasks:\n  - {name: cls, kind: classification, output_shape: [5]}\n")
    elif case == "factory":
        extra += ["--model-factory", "custom_models:unet_two_heads"]
    elif case == "no-spec":
        extra = []
    elif case in ("unconvertible", "ir-too-new"):
        path = tmp_path / "hardmax.onnx"
        _unconvertible(path, ir_version=8 if case == "unconvertible" else 99)
        spec.write_text("input: {shape: [3, 32, 32]}\ntasks:\n  - {name: cls, kind: classification, output_shape: [5]}\n")
    code, _, err = run_cli(capsys, "inspect", path, *extra)
    assert_one_line_error(code, err, pattern)


def test_a_starter_spec_from_the_real_outputs_loads_as_written(capsys, tmp_path, heads_onnx):
    path, _ = heads_onnx
    starter = tmp_path / "starter.yaml"
    code, _, err = run_cli(capsys, "spec", path, "-o", starter)
    assert code == 0, err
    text = starter.read_text()
    assert "# Check every task's `kind`" in text and "onnx_output: box:0" in text
    loaded = load(path, spec_path=starter)  # the starter needs no edit to load
    assert [(t.name, t.kind, t.output_shape) for t in loaded.spec.tasks] == [
        ("seg", "segmentation", [4, 32, 32]), ("cls", "classification", [5]), ("box_0", "raw", [2, 4])]
    code, _, err = run_cli(capsys, "spec", path, "-o", starter)
    assert_one_line_error(code, err, "does not overwrite")


def test_a_starter_spec_for_a_factory_model(capsys, tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save(unet_two_heads().state_dict(), weights)
    code, out, err = run_cli(capsys, "spec", weights, "--model-factory", "custom_models:unet_two_heads",
                             "--input-shape", "3,32,32")
    assert code == 0, err
    assert "name: depth\n  kind: depth\n  output_shape: [1, 32, 32]" in out
    code, _, err = run_cli(capsys, "spec", weights, "--model-factory", "custom_models:unet_two_heads")
    assert_one_line_error(code, err, "needs --input-shape C,H,W")


def test_a_starter_spec_needs_the_free_dims(capsys, tmp_path):
    path = tmp_path / "unet.onnx"
    _export(_UNetTuple(), path, ["seg", "depth"], dynamic={"image": {0: "N", 2: "H", 3: "W"}})
    code, _, err = run_cli(capsys, "spec", path)
    assert_one_line_error(code, err, "pass --input-shape C,H,W")
    code, out, err = run_cli(capsys, "spec", path, "--input-shape", "3,64,64")
    assert code == 0 and "output_shape: [1, 64, 64]" in out, err
    code, _, err = run_cli(capsys, "spec", path, "--input-shape", "3,x")
    assert_one_line_error(code, err, "--input-shape takes C,H,W")
