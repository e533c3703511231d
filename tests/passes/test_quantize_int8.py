"""int8 post-training quantization into the integer graph: agreement with float, the requantisation arithmetic,
int32 safety, concatenation alignment, unsupported ops, persistence."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from conftest import tiny_model
from custom_models import HEADS_SPEC_YAML, TwoHeadUNet, regression_and_raw_heads
from edgemtl.data import data_spec, load_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import (INT32, IntGraph, Node, TensorInfo, check_int32, dequantize, quantize_input,
                                    requantize, run_reference, worst_case_accumulator)
from edgemtl.model.spec import ModelSpec, TaskSpec, parse_model_spec
from edgemtl.passes.int8.float_graph import fold_batchnorm
from edgemtl.passes.quantize_int8 import (Int8Config, build_int_graph, choose_requant, choose_scale,
                                          quantize_int8)

QUICK = Int8Config(calibration_samples=16, values_per_tensor=20_000)


@pytest.fixture(scope="module")
def data():
    return load_data("scenes", "train", n=16), load_data("scenes", "val", n=16)


def _relative_rms(graph: IntGraph, float_out: np.ndarray, images: np.ndarray) -> float:
    q = run_reference(graph, quantize_input(graph, images))[graph.output]
    error = dequantize(graph, q) - float_out
    return float(np.sqrt((error**2).mean() / (float_out**2).mean()))


@pytest.mark.parametrize("task", ["depth", "scene"])  # dense head (bilinear resizes, skip concat) and pooled linear head
def test_reference_executor_agrees_with_the_float_path(data, task):
    calibration, val = data
    model, spec = tiny_model("mtl-cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph, record = quantize_int8(model, spec, task, calibration, val, QUICK)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the float model is untouched

    images = val.normalise(val.images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images), task=task)[task].numpy().astype(np.float64)
    assert _relative_rms(graph, expected, images) < 0.05

    ops = [n.op for n in graph.nodes]
    if task == "depth":
        assert {"conv", "add", "concat", "resize_bilinear"} <= set(ops)
    else:
        assert ops[-2:] == ["avgpool_global", "gemm"]
    assert graph.tensors[graph.input].dtype == "int8"
    assert graph.tensors[graph.output].shape == spec.task(task).output_shape
    assert graph.tensors[graph.nodes[0].output].dtype == "uint8"  # the stem's conv + ReLU, fused
    for node in graph.nodes:
        if node.op in ("conv", "gemm"):
            assert node.params["weight"].dtype == np.int8 and np.abs(node.params["weight"]).max() == 127
            assert np.all(node.params["add"].astype(np.int64) % node.params["mul"].astype(np.int64) == 0)
    check_int32(graph)
    assert graph.tensors[graph.output].dtype == "int8"

    out = record.to_dict()
    assert out["task"] == task and out["metric"] == spec.task(task).metric
    assert set(out["metric_float"]) == set(out["metric_int8"]) and out["calibration_samples"] == 16
    assert out["weight_bytes"] == graph.weight_bytes() > 0 and out["seconds"] > 0
    assert set(out["layers"]) == {n.name for n in graph.nodes}
    assert all(0 <= layer["shift"] <= 31 for layer in out["layers"].values() if "shift" in layer)


def test_concat_inputs_at_other_scales_get_requant_nodes_and_maxpool_nearest_map():
    """A U-Net whose concatenations join a nearest upsampling and a skip that other layers also read."""
    calibration = load_data("scenes", "train", n=8, image_size=32)
    torch.manual_seed(0)
    model = TwoHeadUNet(width=4).eval()
    input_spec, _ = data_spec("scenes", 32)
    spec = ModelSpec(input=input_spec, tasks=[TaskSpec(name="seg", kind="segmentation", output_shape=[3, 32, 32]),
                                              TaskSpec(name="depth", kind="depth", output_shape=[1, 32, 32])])
    graph = build_int_graph(model, spec, "seg", calibration, QUICK)
    ops = [n.op for n in graph.nodes]
    assert ops.count("maxpool") == 2 and ops.count("resize_nearest") == 2 and ops.count("concat") == 2
    for node in graph.nodes:
        if node.op == "concat":
            out = graph.tensors[node.output]
            assert all((graph.tensors[i].scale, graph.tensors[i].dtype) == (out.scale, out.dtype) for i in node.inputs)
    assert "requant" in ops
    images = calibration.normalise(calibration.images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images))["seg"].numpy().astype(np.float64)
    assert _relative_rms(graph, expected, images) < 0.05


class ActivationHead(nn.Module):
    """A contract model whose depth head ends in an op the integer graph lacks."""

    def __init__(self, activation) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": self.activation(self.conv(x))}


@pytest.mark.parametrize("activation, op", [(lambda x: torch.cumsum(x, 1), "CumSum"), (torch.floor, "Floor")])
def test_unsupported_op_names_the_op_the_layer_and_the_task(data, activation, op):
    input_spec, tasks = data_spec("scenes")
    spec = ModelSpec(input=input_spec, tasks=[t for t in tasks if t.name == "depth"])
    with pytest.raises(EdgemtlError, match=rf"task 'depth': layer '[^']*{op}[^']*' is an ONNX '{op}'") as info:
        quantize_int8(ActivationHead(activation).eval(), spec, "depth", *data, QUICK)
    assert "\n" not in str(info.value)


def test_a_softplus_head_is_one_table(data):
    input_spec, tasks = data_spec("scenes")
    spec = ModelSpec(input=input_spec, tasks=[t for t in tasks if t.name == "depth"])
    graph = build_int_graph(ActivationHead(F.softplus).eval(), spec, "depth", data[0], QUICK)
    assert graph.nodes[-1].op == "lut" and graph.nodes[-1].attrs["function"] == "Softplus"


@pytest.mark.parametrize("task, last_ops", [("landmarks", ["gemm", "flatten"]), ("age", ["avgpool_global", "gemm"]),
                                             ("anchors", ["maxpool", "conv"])])
def test_regression_and_raw_heads_of_any_shape_quantize(task, last_ops):
    """A rank-1 regression and raw heads: a dense map, and a dense layer's output reshaped to (5, 2), which is the
    same row-major bytes (the reshape is a relabelling node, not refused)."""
    import yaml

    model, spec = regression_and_raw_heads().eval(), parse_model_spec(yaml.safe_load(HEADS_SPEC_YAML), "test")
    calibration = load_data("scenes", "train", n=16, image_size=32)
    graph = build_int_graph(model, spec, task, calibration, QUICK)
    assert [n.op for n in graph.nodes][-2:] == last_ops
    assert graph.tensors[graph.output].shape == spec.task(task).output_shape
    images = calibration.normalise(calibration.images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images))[task].numpy().astype(np.float64)
    assert _relative_rms(graph, expected, images) < 0.05


class Decoder(nn.Module):
    """CenterFace's decoder in small: a learnt x2 upsampling (ConvTranspose + BatchNorm + ReLU) and a sigmoid
    heat map."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 8, 2, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.heat = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"heat": torch.sigmoid(self.heat(self.up(self.down(x))))}


def test_a_learnt_upsampling_and_a_sigmoid_head_quantize(data):
    torch.manual_seed(0)
    model = Decoder()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so the fold is tested
        model.up[1].running_mean.uniform_(-0.2, 0.2)
        model.up[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    input_spec, _ = data_spec("scenes")
    spec = ModelSpec(input=input_spec, tasks=[TaskSpec(name="heat", kind="raw", output_shape=[1, 64, 64])])
    graph = build_int_graph(model, spec, "heat", data[0], QUICK)
    assert [n.op for n in graph.nodes] == ["conv", "conv_transpose", "conv", "lut"]
    assert graph.tensors[graph.output].dtype == "uint8" and graph.tensors[graph.output].scale == 1 / 255
    images = data[1].normalise(data[1].images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images))["heat"].numpy().astype(np.float64)
    got = dequantize(graph, run_reference(graph, quantize_input(graph, images))[graph.output])
    assert np.abs(got - expected).max() < 0.05  # a few steps of 1/255 on a probability


class ElementwiseHead(nn.Module):
    """conv -> one elementwise layer -> conv: the layer sits between two requantising nodes, as in real models."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.conv, self.layer, self.head = nn.Conv2d(3, 8, 3, padding=1), layer, nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(self.layer(self.conv(x)))}


class _Scale(nn.Module):
    def __init__(self, per_channel: bool, op: str) -> None:
        super().__init__()
        self.op = op
        self.register_buffer("k", torch.linspace(0.5, 2.0, 8).reshape(1, 8, 1, 1) if per_channel else torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return {"mul": x * self.k, "add": x + self.k, "sub": self.k - x, "div": x / self.k}[self.op]


@pytest.mark.parametrize("layer, op", [
    (nn.PReLU(8, init=0.1), "PRelu"), (nn.PReLU(1, init=0.2), "PRelu"), (nn.LeakyReLU(0.1), "LeakyRelu"),
    (nn.Hardswish(), "HardSwish"), (nn.Hardsigmoid(), "HardSigmoid"), (nn.Tanh(), "Tanh"), (nn.ReLU6(), "Clip"),
    (nn.ELU(), "Elu"), (_Scale(True, "mul"), "Mul"), (_Scale(False, "add"), "Add"), (_Scale(True, "sub"), "Sub"),
    (_Scale(False, "div"), "Div")])  # a constant right after a conv would be folded into it: a ReLU comes first
def test_elementwise_layers_become_tables_close_to_float_on_real_activations(data, layer, op):
    """Each op as a table (per channel for PReLU's slopes and a per-channel constant): the int8 path's output on
    held-out real images stays within a few output steps of the float model's."""
    torch.manual_seed(0)
    model = ElementwiseHead(nn.Sequential(nn.ReLU(), layer) if isinstance(layer, _Scale) else layer).eval()
    input_spec, _ = data_spec("scenes")
    spec = ModelSpec(input=input_spec, tasks=[TaskSpec(name="out", kind="raw", output_shape=[2, 64, 64])])
    graph = build_int_graph(model, spec, "out", data[0], QUICK)
    lut = [n for n in graph.nodes if n.op == "lut"]
    assert len(lut) == 1 and lut[0].attrs["function"] == op
    if isinstance(layer, (nn.PReLU, _Scale)) and layer_channels(layer) > 1:
        assert lut[0].params["table"].shape == (8, 256)
    images = data[1].normalise(data[1].images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images))["out"].numpy().astype(np.float64)
    assert _relative_rms(graph, expected, images) < 0.05


def layer_channels(layer: nn.Module) -> int:
    return layer.weight.numel() if isinstance(layer, nn.PReLU) else layer.k.numel()


def test_a_transposed_convolution_with_overlapping_windows_is_refused(data):
    class Overlapping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(3, 1, 4, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"up": self.up(x)}

    input_spec, _ = data_spec("scenes")
    spec = ModelSpec(input=input_spec, tasks=[TaskSpec(name="up", kind="raw", output_shape=[1, 128, 128])])
    with pytest.raises(EdgemtlError, match=r"'ConvTranspose' \(kernel \[4, 4\] with strides \[2, 2\]"):
        build_int_graph(Overlapping().eval(), spec, "up", data[0], QUICK)


# -- requantisation arithmetic ------------------------------------------------------------------------------
def _rq(acc, mul=1, add=0, shift=0, dtype="int8"):
    acc = np.asarray(acc, dtype=np.int64).reshape(-1, 1)
    return requantize(acc, np.array([mul]), np.array([add]), shift, dtype).reshape(-1).tolist()


def test_requantize_rounds_half_up_and_shifts_arithmetically():
    # x.5 goes up (toward +inf) for both signs: 1.5 -> 2, -1.5 -> -1, 0.5 -> 1, -0.5 -> 0
    assert _rq([3, -3, 1, -1], shift=1) == [2, -1, 1, 0]
    # negative values: floor of (v + 2) / 4 -- -1.25 -> -1, -1.75 -> -2, -2.5 -> -2
    assert _rq([-5, -7, -10], shift=2) == [-1, -2, -2]
    # shift 0: no rounding term, exact acc * mul + add
    assert _rq([3, -4], mul=5, add=-2, shift=0) == [13, -22]
    # mul and add applied before the shift: (7 * 3 + 6 + 4) >> 3 = 31 >> 3 = 3
    assert _rq([7], mul=3, add=6, shift=3) == [3]


def test_requantize_saturates_at_both_ends():
    assert _rq([1000, -1000, 127, -128], dtype="int8") == [127, -128, 127, -128]
    assert _rq([300, -5, 255, 0], dtype="uint8") == [255, 0, 255, 0]
    assert _rq([2**40, -(2**40)], mul=2**20, shift=31, dtype="int8") == [127, -128]  # exact in int64


def test_requantize_is_per_channel_on_the_channel_axis():
    acc = np.array([[[10, -10]], [[10, -10]]]).reshape(1, 2, 2)  # (N, C, X)
    out = requantize(acc, np.array([1, 3]), np.array([0, 4]), 1, "int8")
    assert out.tolist() == [[[5, -5], [17, -13]]]


def test_choose_requant_takes_the_largest_shift_that_fits_int32():
    multiplier = np.array([0.013, 0.0021, 0.5])
    acc_max = np.full(3, 300_000, dtype=np.int64)
    bias = np.array([100, -2000, 7])
    mul, add, shift = choose_requant(multiplier, acc_max, bias)
    worst = acc_max * np.abs(mul) + np.abs(add) + (1 << (shift - 1))
    assert worst.max() <= INT32[1]
    mul_up = np.rint(multiplier * 2.0 ** (shift + 1)).astype(np.int64)
    assert (acc_max * mul_up + np.abs(bias * mul_up) + (1 << shift)).max() > INT32[1]  # one more bit would not fit
    assert np.all(np.abs(mul / 2.0**shift - multiplier) <= 2.0 ** -(shift + 1))
    assert np.array_equal(add, bias * mul)
    # an accumulator that leaves int32 by itself: shift 0 comes back, for check_int32 to refuse
    assert choose_requant(np.array([0.5]), np.array([2**32]))[2] == 0


def test_choose_requant_keeps_constants_exact_in_float32():
    """Deeploy stores mul and add as float32: a large bias with a small accumulator must not push add + the
    rounding term past 2**24 (the default mtl-cnn hit this in a residual block's conv)."""
    multiplier, acc_max, bias = np.array([0.004, 0.01]), np.full(2, 20_000, dtype=np.int64), np.array([9000, -30000])
    mul, add, shift = choose_requant(multiplier, acc_max, bias)
    assert np.abs(mul).max() < 2**24 and np.abs(add).max() + (1 << (shift - 1)) < 2**24
    assert np.array_equal(add, bias * mul) and shift > 8


def test_choose_scale_methods():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=100_000), [40.0]]).astype(np.float32)
    peak = 40.0
    assert choose_scale(values, peak, "int8", Int8Config(scale_method="max")) == pytest.approx(40.0 / 127)
    assert choose_scale(values, peak, "uint8", Int8Config(scale_method="max")) == pytest.approx(40.0 / 255)
    percentile = choose_scale(values, peak, "int8", Int8Config(scale_method="percentile", percentile=99.0))
    assert percentile == pytest.approx(np.percentile(np.abs(values), 99.0) / 127)

    def mse(scale: float) -> float:
        return float(np.mean((np.clip(np.rint(values / scale), -128, 127) * scale - values) ** 2))

    best = choose_scale(values, peak, "int8", Int8Config())
    assert 4.0 / 127 < best < 40.0 / 127  # clips the lone outlier, but not down to the bulk's percentiles
    assert mse(best) < min(mse(40.0 / 127), mse(percentile), mse(np.percentile(np.abs(values), 99.99) / 127))
    assert choose_scale(np.zeros(10), 0.0, "int8", Int8Config()) == pytest.approx(1 / 127)


def test_config_is_validated():
    with pytest.raises(EdgemtlError, match="scale method"):
        Int8Config(scale_method="entropy")  # type: ignore[arg-type]
    with pytest.raises(EdgemtlError, match="percentile"):
        Int8Config(percentile=120.0)


# -- int32 safety ------------------------------------------------------------------------------------------
def _hand_made_conv(mul: int) -> IntGraph:
    tensors = {"x": TensorInfo("x", [64, 4, 4], "uint8", 0.01), "y": TensorInfo("y", [2, 4, 4], "int8", 0.02)}
    weight = np.full((2, 64, 3, 3), 127, dtype=np.int8)
    node = Node("stage3/conv", "conv", ["x"], "y", {"stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1, "shift": 20},
                {"weight": weight, "mul": np.array([mul, mul], np.int32), "add": np.zeros(2, np.int32)})
    return IntGraph("depth", "x", "y", tensors, [node])


def test_int32_check_names_the_layer():
    safe = _hand_made_conv(mul=1)
    safe.validate()
    check_int32(safe)  # 64 * 9 * 127 * 255 = 18.6M: fits with mul 1
    with pytest.raises(EdgemtlError, match=r"task 'depth', layer 'stage3/conv'.*beyond int32"):
        check_int32(_hand_made_conv(mul=1 << 8))
    graph = _hand_made_conv(mul=1)
    acc_max = worst_case_accumulator(graph.nodes[0], graph.tensors)
    mul, _, shift = choose_requant(np.full(2, 0.01 * 0.001 / 0.02), acc_max)
    graph.nodes[0].params["mul"], graph.nodes[0].attrs["shift"] = mul.astype(np.int32), shift
    check_int32(graph)  # what the quantizer picks always passes


# -- BatchNorm folding on the ONNX graph ------------------------------------------------------------------------
def test_batchnorm_after_conv_is_folded():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w", rng.normal(size=(4, 3, 3, 3))), ("b", rng.normal(size=4)), ("gamma", rng.uniform(0.5, 2, 4)),
        ("beta", rng.normal(size=4)), ("mean", rng.normal(size=4)), ("var", rng.uniform(0.5, 2, 4))]]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    expected = run(model)
    fold_batchnorm(model)
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    np.testing.assert_allclose(run(model), expected, rtol=1e-4, atol=1e-4)


# -- persistence --------------------------------------------------------------------------------------------
def test_int_graph_save_load_round_trip(tmp_path, data):
    calibration, val = data
    model, spec = tiny_model("mtl-cnn")
    graph = build_int_graph(model, spec, "segmentation", calibration, QUICK)
    graph.save(tmp_path / "g")
    loaded = IntGraph.load(tmp_path / "g")
    assert (loaded.task, loaded.input, loaded.output) == (graph.task, graph.input, graph.output)
    assert loaded.tensors == graph.tensors
    assert [(n.name, n.op, n.inputs, n.output, n.attrs) for n in loaded.nodes] == \
           [(n.name, n.op, n.inputs, n.output, n.attrs) for n in graph.nodes]
    for a, b in zip(loaded.nodes, graph.nodes):
        assert a.params.keys() == b.params.keys()
        assert all(np.array_equal(a.params[k], b.params[k]) and a.params[k].dtype == b.params[k].dtype for k in a.params)
    q = quantize_input(graph, val.normalise(val.images[:4]))
    assert np.array_equal(run_reference(loaded, q)[loaded.output], run_reference(graph, q)[graph.output])


class CeilModePools(nn.Module):
    """MTCNN's stem: conv -> PReLU -> max pools in ceil mode (odd sizes, so the last window hangs over the edge)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.prelu = nn.Conv2d(3, 8, 3), nn.PReLU(8, init=0.3)
        self.pool, self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(2, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"map": self.pool2(self.pool(self.prelu(self.conv(x))))}


def test_ceil_mode_max_pools_get_end_padding_that_never_wins(data):
    """Before: refused ('ceil_mode'). A ceil-mode pool is a floor-mode pool over end padding that never wins: the
    integer pool equals torch's ceil-mode pool of its own integer input, exactly, negative border windows too."""
    torch.manual_seed(0)
    model = CeilModePools().eval()
    input_spec, _ = data_spec("scenes")  # 64 x 64: conv 62 -> ceil pool 31 (floor 30) -> ceil pool 16 (floor 15)
    spec = ModelSpec(input=input_spec, tasks=[TaskSpec(name="map", kind="raw", output_shape=[8, 16, 16])])
    graph = build_int_graph(model, spec, "map", data[0], QUICK)
    pools = [n for n in graph.nodes if n.op == "maxpool"]
    assert [n.attrs["pads"] for n in pools] == [[0, 0, 1, 1], [0, 0, 1, 1]]
    images = data[1].normalise(data[1].images)
    values = run_reference(graph, quantize_input(graph, images), keep_all=True)
    for node in pools:
        x = torch.from_numpy(values[node.inputs[0]].astype(np.float64))
        want = F.max_pool2d(x, 3 if node is pools[0] else 2, 2, ceil_mode=True).numpy()
        assert np.array_equal(values[node.output], want.astype(values[node.output].dtype))
        assert (values[node.inputs[0]] < 0).any()


@pytest.mark.parametrize("budget, expected", [(-2.0, 4), (1e6, 1)])
def test_calibration_remedies_are_tried_in_order_until_the_task_is_within_its_budget(budget, expected):
    """A budget below any loss: every remedy, the best shipped. A loose one: the first only."""
    from edgemtl.passes.base import PassInput
    from edgemtl.passes.quantize_int8 import run

    class SmallSource:
        reference = "scenes"

        def load(self, split, n=None):
            return load_data("scenes", split, n=min(n or 16, 16))

    model, spec = tiny_model("mtl-cnn")
    source = SmallSource()
    config = Int8Config(calibration_samples=8, max_relative_loss=budget,
                        remedies=tuple((name, {**changes, "calibration_samples": 8} if "calibration_samples" in changes
                                        else changes) for name, changes in Int8Config().remedies))
    inputs = PassInput(model, spec, ["depth", "scene"], source=source, held_out=source.load("val"), labelled=["depth"])
    entries = run(inputs, config).record.tasks
    for task in ("depth", "scene"):  # scene unlabelled here: judged by 1 - cosine against float
        entry = entries[task]
        attempts = entry["attempts"]
        assert [a["remedy"] for a in attempts] == [name for name, _ in config.remedies][:expected]
        assert entry["relative_loss"] == min(a["relative_loss"] for a in attempts)
        assert entry["meets_target"] == (budget > 0)
    assert "agreement_with_float" in entries["scene"] and entries["depth"]["metric"] == "rmse"
