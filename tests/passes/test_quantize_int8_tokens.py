"""The int8 path on transformers and the layers of common edge CNNs beyond convolutions: a plain ViT of the zoo's
blocks (layernorm, attention, GELU, position embedding, token mean), softmax heads, average pools, permutes before
a dense layer, activation chains as one table; each close to float on real images and the C equal to the
reference bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY_CONFIG
from edgemtl.backends.c import run_on_host
from edgemtl.data import data_spec, load_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import RANGES, dequantize, quantize_input, run_reference
from edgemtl.model.spec import ModelSpec, TaskSpec
from edgemtl.model.zoo import build_model, zoo_spec
from edgemtl.passes.quantize_int8 import Int8Config, build_int_graph

QUICK = Int8Config(calibration_samples=16, values_per_tensor=20_000)


@pytest.fixture(scope="module")
def images():
    return load_data("scenes", "train", n=16), load_data("scenes", "val", n=8)


def _vit(moe_every: int = 0):
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec("m3vit", input_spec, tasks, {**TINY_CONFIG["m3vit"], "moe_every": moe_every}, data="scenes")
    torch.manual_seed(0)
    return build_model(spec).eval(), spec


def _sqnr_db(graph, model, images: np.ndarray, run) -> float:
    with torch.no_grad():
        want = run(model, torch.from_numpy(images)).numpy().astype(np.float64)
    got = dequantize(graph, run_reference(graph, quantize_input(graph, images))[graph.output]).reshape(want.shape)
    return float(10 * np.log10((want**2).mean() / ((want - got) ** 2).mean()))


def _assert_c_bit_exact(graph, tmp_path, images: np.ndarray) -> None:
    q = quantize_input(graph, images)
    lo, hi = RANGES[graph.tensors[graph.input].dtype]
    q = np.concatenate([q, np.full_like(q[:1], lo), np.full_like(q[:1], hi)])  # both extremes of the input range
    got = run_on_host(graph, q, tmp_path)
    want = run_reference(graph, q)[graph.output]
    assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize("task, floor_db", [("depth", 25), ("scene", 15)])  # random weights: 3 near-constant logits
def test_a_plain_vit_quantizes_close_to_float_and_its_c_is_bit_exact(images, task, floor_db, tmp_path):
    calibration, val = images
    model, spec = _vit()
    graph = build_int_graph(model, spec, task, calibration, QUICK)
    ops = {n.op for n in graph.nodes}
    assert {"layernorm", "softmax", "matmul", "transpose", "slice", "add_const", "lut", "gemm"} <= ops
    x = val.normalise(val.images)
    assert _sqnr_db(graph, model, x, lambda m, v: m(v, task=task)[task]) > floor_db
    _assert_c_bit_exact(graph, tmp_path, x[:4])


@pytest.mark.parametrize("task, floor_db", [("depth", 25), ("scene", 15)])
def test_an_moe_vit_quantizes_with_one_integer_moe_node_per_layer_and_bit_exact_c(images, task, floor_db, tmp_path):
    """Before: refused (its routed dispatch had no integer form). Each MoE layer becomes one `moe` node: the router
    with the task's embedding folded in, top-2 gates, every expert's fc1 -> GELU -> fc2; the C runs it expert by
    expert over the routed tokens only and equals the dense reference bit for bit."""
    calibration, val = images
    model, spec = _vit(moe_every=2)
    graph = build_int_graph(model, spec, task, calibration, QUICK)
    moe = [n for n in graph.nodes if n.op == "moe"]
    layer = model.moe_layers()[0]
    assert len(moe) == len(model.moe_layers()) == 1
    assert moe[0].params["fc1"].shape == (layer.num_experts, layer.w1.shape[2], layer.w1.shape[1])
    assert moe[0].attrs["top_k"] == layer.top_k
    x = val.normalise(val.images)
    assert _sqnr_db(graph, model, x, lambda m, v: m(v, task=task)[task]) > floor_db
    _assert_c_bit_exact(graph, tmp_path, x[:4])


def test_a_task_path_with_fewer_experts_deploys_only_those(images):
    """The expert path of a task (partition_experts keeps the experts it routes to): the integer layer holds the
    kept experts' weights and routes among them only."""
    from edgemtl.passes.partition_experts import _keep_experts  # noqa: PLC0415

    model, spec = _vit(moe_every=2)
    block = next(b for b in model.blocks if b.mlp is model.moe_layers()[0])
    block.mlp = _keep_experts(block.mlp, [0, 2, 3])
    graph = build_int_graph(model, spec, "depth", images[0], QUICK)
    moe = next(n for n in graph.nodes if n.op == "moe")
    assert moe.params["fc1"].shape[0] == 3 and moe.params["router"].shape[0] == 3


class EdgeCnn(nn.Module):
    """Layers of common edge CNNs and detectors beyond conv + ReLU: PReLU, SiLU (x * sigmoid(x)), GELU, average
    pooling, a channel softmax (a segmentation head), and a permute to channels-last before a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.prelu = nn.PReLU(8)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.seg = nn.Conv2d(8, 3, 1)
        self.dense = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.prelu(self.stem(x))
        y = self.mid(y)
        y = y * torch.sigmoid(y)                                        # SiLU as exported: Sigmoid, Mul
        y = F.avg_pool2d(F.gelu(y), 2)                                  # Erf chain, AveragePool
        seg = F.interpolate(torch.softmax(self.seg(y), dim=1), scale_factor=4, mode="bilinear", align_corners=False)
        tokens = y.permute(0, 2, 3, 1)                                  # (N, H, W, C): Transpose before the dense
        return {"seg": seg, "regress": self.dense(tokens).mean(dim=(1, 2))}


@pytest.mark.parametrize("task", ["seg", "regress"])
def test_edge_cnn_layers_quantize_close_to_float_and_c_is_bit_exact(images, task, tmp_path):
    calibration, val = images
    input_spec, _ = data_spec("scenes")
    spec = ModelSpec(input=input_spec, tasks=[TaskSpec(name="seg", kind="segmentation", output_shape=[3, 64, 64]),
                                              TaskSpec(name="regress", kind="regression", output_shape=[4])])
    torch.manual_seed(1)
    model = EdgeCnn().eval()
    graph = build_int_graph(model, spec, task, calibration, QUICK)
    functions = {n.attrs.get("function") for n in graph.nodes if n.op == "lut"}
    assert "PRelu" in functions   # SiLU then GELU are functions of one value: one table for the whole chain
    assert any(f and f.startswith("Sigmoid+Mul") and "Erf" in f for f in functions), functions
    ops = {n.op for n in graph.nodes}
    assert ({"softmax", "resize_bilinear"} if task == "seg" else {"transpose", "gemm", "reduce_mean"}) <= ops
    x = val.normalise(val.images)
    assert _sqnr_db(graph, model, x, lambda m, v: m(v)[task]) > 20
    _assert_c_bit_exact(graph, tmp_path, x[:3])


def test_every_layer_records_its_error_against_float_on_real_images(images):
    """The manifest's per-layer record says where along the path the int8 error builds up: the SQNR of each layer's
    dequantized output against the float tensor of the same name, on held-out images."""
    from edgemtl.passes.quantize_int8 import quantize_int8

    calibration, val = images
    model, spec = _vit()
    graph, record = quantize_int8(model, spec, "depth", calibration, val, QUICK)
    measured = {name: layer["sqnr_db"] for name, layer in record.layers.items() if "sqnr_db" in layer}
    ops = {record.layers[name]["op"] for name in measured}
    assert {"layernorm", "softmax", "matmul", "gemm", "lut", "conv"} <= ops
    assert all(10 < db < 80 for db in measured.values()), measured
    assert measured[graph.nodes[-1].name] > 20   # the output itself


class TopKHead(nn.Module):
    """A top-k that is no MoE router: the largest 4 features of a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 64 * 64, 16)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"top": self.fc(x.flatten(1)).relu().topk(4, dim=1).values}


def test_a_top_k_outside_an_moe_layer_is_one_line(images):
    input_spec, _ = data_spec("scenes")
    spec = ModelSpec(input=input_spec, tasks=[TaskSpec(name="top", kind="raw", output_shape=[4])])
    with pytest.raises(EdgemtlError, match=r"task 'top': layer .* is an ONNX 'TopK' \(top-k over something other than "
                                           r"a router's constant-weight logits\)") as info:
        build_int_graph(TopKHead().eval(), spec, "top", images[0], QUICK)
    assert "\n" not in str(info.value)
