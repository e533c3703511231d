"""hls4ml backend: tiny brevitas models -> QONNX -> hls4ml (Vitis, io_stream) C simulation vs brevitas.

One g++ compile of the emulation library takes ~12 s; the fast tests share one compiled two-head project.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hls4ml")
brevitas_nn = pytest.importorskip("brevitas.nn")
torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from edgemtl.backends.hls4ml_backend import (  # noqa: E402
    build_hls_project, build_testbench, csim_check, csim_provenance, hls_predict)
from edgemtl.backends.hls4ml_graph import _float_biases  # noqa: E402
from edgemtl.backends.hls4ml_ext import pooled_size  # noqa: E402
from edgemtl.errors import EdgemtlError  # noqa: E402
from edgemtl.passes.quantize_brevitas import FixedPointPReLU  # noqa: E402
from edgemtl.targets import load_target  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from brevitas.export import export_qonnx  # noqa: E402
    from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint,  # noqa: E402
                                Int32Bias, Uint8ActPerTensorFixedPoint, Uint8ActPerTensorFloat)

pytestmark = pytest.mark.needs_hls4ml

TARGET = load_target("zcu104")
PART = TARGET.part
CLOCK_NS = 1000.0 / next(c.clock_mhz for c in TARGET.compute if c.kind == "fpga-fabric")


def qconv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Module:
    return brevitas_nn.QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False,
                                   weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=4)


def act(quant=Int8ActPerTensorFixedPoint, **kwargs) -> nn.Module:
    return brevitas_nn.QuantIdentity(act_quant=quant, **kwargs)


def relu(quant=Uint8ActPerTensorFixedPoint, **kwargs) -> nn.Module:
    return brevitas_nn.QuantReLU(act_quant=quant, **kwargs)


class TwoHeads(nn.Module):
    """Input quantizer, 4-bit conv, unsigned ReLU quantizer, two conv heads with their own output quantizers."""

    def __init__(self, relu_quant: nn.Module | None = None) -> None:
        super().__init__()
        self.inp = act()
        self.conv = qconv(3, 4)
        self.relu = relu_quant or relu()
        self.seg = qconv(4, 2, 1)
        self.depth = qconv(4, 1, 3)
        self.out_seg, self.out_depth = act(), act()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.relu(self.conv(self.inp(x)))
        return self.out_seg(self.seg(y)), self.out_depth(self.depth(y))


def calibrate_and_export(model: nn.Module, path: Path, shape=(3, 8, 8), scale: float = 1.0, seed: int = 0):
    """Let the quantizers see data, export QONNX (TorchScript exporter, batch 1, as the repo does); return the
    test inputs and the brevitas outputs as the reference."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, *shape) * scale)
    model.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        export_qonnx(model, torch.randn(1, *shape), export_path=str(path), dynamo=False)
    x = torch.randn(3, *shape) * scale
    with torch.no_grad():
        out = model(x)
    out = out if isinstance(out, tuple) else (out,)
    return x.numpy(), [o.numpy() for o in out]


def output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path)).graph.output]


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hls_two_heads")
    model = TwoHeads()
    path = folder / "two_heads.onnx"
    x, outs = calibrate_and_export(model, path)
    names = output_names(path)
    reference = dict(zip(names, outs))
    lsb = {names[0]: float(model.out_seg.act_quant.scale()), names[1]: float(model.out_depth.act_quant.scale())}
    project = build_hls_project(path, folder / "prj", "two_heads", PART, CLOCK_NS)
    return project, x, reference, lsb


def test_two_head_csim_equals_brevitas(two_heads):
    project, x, reference, lsb = two_heads
    assert sorted(project.outputs) == sorted(reference)
    assert project.input_channels_last and all(project.output_channels_last.values())
    result = csim_check(project, x, reference, lsb, "two_heads")
    assert result["passed"] and result["exact"] and result["samples"] == 3
    assert result["max_abs_diff_lsb"] == 0.0 and result["bound_lsb"] == 0.0
    assert result["per_sample_max_abs_diff_lsb"] == [0.0, 0.0, 0.0]
    assert all(out["differing_values"] == 0 for out in result["outputs"].values())
    assert result["provenance"] == csim_provenance(3) == {
        "kind": "simulated", "source": "hls4ml C simulation",
        "detail": "bit-accurate: equal to the quantized model on 3 samples"}
    got = hls_predict(project, x)  # NCHW in, NCHW out, per output name
    for name, ref in reference.items():
        np.testing.assert_array_equal(got[name], ref)  # value for value, not within a tolerance


def test_precision_follows_the_quantizers(two_heads):
    project = two_heads[0]
    table = project.precision_table
    assert table["global_in"]["result_t"].startswith("fixed<8,")  # the input quantizer's own type
    assert "RND_CONV" in table["global_in"]["result_t"] and "SAT" in table["global_in"]["result_t"]
    convs = {name: types for name, types in table.items() if "accum_t" in types}
    assert len(convs) == 3
    for types in convs.values():
        width = int(types["accum_t"].split("<")[1].split(",")[0])
        assert width >= 17  # exact accumulators, never hls4ml's fixed<16,6> default
        assert types["weight_t"].startswith("fixed<4,")  # the 4-bit weight quantizer
    results = [types["result_t"] for types in convs.values()]
    assert sum(r.startswith("ufixed<8,") for r in results) == 0  # the ReLU quantizer sits on the ReLU layer
    assert any(types.get("result_t", "").startswith("ufixed<8,") for types in table.values())


def test_a_constant_factor_is_reported_as_such(two_heads):
    project, x, reference, lsb = two_heads
    doubled = {name: 2 * ref for name, ref in reference.items()}  # the HLS output is then half the reference
    with pytest.raises(EdgemtlError) as err:
        csim_check(project, x, doubled, lsb, "two_heads")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("task 'two_heads': the HLS C simulation differs from the quantized model by a "
                              "constant factor 0.5")
    assert "not a power of two" in message


def test_a_plain_mismatch_is_reported_in_lsb(two_heads):
    project, x, reference, lsb = two_heads
    shifted = {name: ref + 3 * lsb[name] for name, ref in reference.items()}
    with pytest.raises(EdgemtlError, match=r"differs from the quantized model by up to 3 LSB") as err:
        csim_check(project, x, shifted, lsb, "two_heads")
    assert "constant factor" not in str(err.value)


def test_one_value_one_lsb_off_fails(two_heads):
    """Bit-accurate means equal: a single value 1 LSB off (what a float bias near a rounding tie gives) fails,
    and with float biases in the graph the message names them."""
    import dataclasses

    project, x, reference, lsb = two_heads
    name = project.outputs[0]
    nudged = {k: v.copy() for k, v in reference.items()}
    nudged[name].flat[5] += lsb[name]
    with_bias = dataclasses.replace(project, float_biases=["Gemm_0"])
    with pytest.raises(EdgemtlError) as err:
        csim_check(with_bias, x, nudged, lsb, "two_heads")
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"task 'two_heads': the HLS C simulation differs from the quantized model by up to 1 LSB in 1 "
                       f"of {reference[name].size} values of output {name!r} (3 samples; it must be bit-accurate, "
                       "0 LSB): float biases (Gemm_0) are rounded to fixed<32,16> in hls4ml: quantize them "
                       "(brevitas Int32Bias)")


def test_testbench_needs_gxx(two_heads, monkeypatch):
    import edgemtl.backends.hls4ml_csim as csim

    monkeypatch.setattr(csim.shutil, "which", lambda name: None)
    result = build_testbench(two_heads[0])
    assert result["built"] is False and "g++" in result["reason"]


@pytest.mark.slow
def test_generated_testbench_builds_with_plain_gxx_and_agrees(two_heads):
    project, x, reference, lsb = two_heads
    csim_check(project, x, reference, lsb, "two_heads")  # leaves the data the testbench runs on
    result = build_testbench(project)
    if not result["built"] and "not found" in result.get("reason", ""):
        pytest.skip(result["reason"])
    assert result["built"] and result["ran"] and result["exit_status"] == 0, result
    # equal, digit for digit: the results log prints every digit, not hls4ml's default 6
    assert result["tb_samples"] == 3 and result["matches_csim"] is True and result["tb_max_abs_diff"] == 0.0, result
    assert (project.out_dir / "tb_data" / "tb_input_features.dat").is_file()

    # the comparison sees a difference: expected outputs 1 LSB off in one value
    name = project.outputs[0]
    wrong = {k: v.copy() for k, v in project.last_csim["outputs"].items()}
    wrong[name].flat[0] += lsb[name]
    result = build_testbench(project, inputs=x, outputs=wrong)
    assert result["ran"] and result["matches_csim"] is False and result["tb_max_abs_diff"] == lsb[name], result


class Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv, self.out = act(), qconv(3, 2), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.interpolate(self.conv(self.inp(x)), scale_factor=2, mode="bilinear", align_corners=False))


class Absolute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv, self.out = act(), qconv(3, 2), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.abs(self.conv(self.inp(x))))


@pytest.mark.parametrize(("model", "op"), [(Bilinear, "Resize"), (Absolute, "Abs")])
def test_an_unmappable_op_is_one_line_naming_op_and_task(tmp_path, model, op):
    path = tmp_path / "m.onnx"
    calibrate_and_export(model(), path)
    with pytest.raises(EdgemtlError) as err:
        build_hls_project(path, tmp_path / "prj", "depth", PART, CLOCK_NS)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"task 'depth': hls4ml 1.3.0 cannot map ONNX op '{op}' (node ")
    assert not (tmp_path / "prj" / "firmware").exists()  # refused before anything was generated


@pytest.mark.slow
def test_non_power_of_two_scale_before_a_fork_fails_with_a_constant_factor(tmp_path):
    """hls4ml 1.3.0 turns a float-scale Quant into scale -> quantize -> rescale and moves the rescale down one
    branch only: the other head comes out divided by the scale (here 1.5)."""
    model = TwoHeads(relu(Uint8ActPerTensorFloat, scaling_impl_type="const", scaling_init=1.5 * 255))
    path = tmp_path / "float_scale.onnx"
    x, outs = calibrate_and_export(model, path, scale=8.0)
    names = output_names(path)
    project = build_hls_project(path, tmp_path / "prj", "seg", PART, CLOCK_NS)
    assert project.non_power_of_two_quants and "scale 1.5" in project.non_power_of_two_quants[0]
    lsb = {names[0]: float(model.out_seg.act_quant.scale()), names[1]: float(model.out_depth.act_quant.scale())}
    with pytest.raises(EdgemtlError, match=r"by a constant factor 0\.6\d+ .*a quantizer scale is not a power of two"):
        csim_check(project, x, dict(zip(names, outs)), lsb, "seg")


class Residual(nn.Module):
    """mtl-cnn's encoder pieces: stride-2 stem, a residual add with a 1x1 projection, a skip concatenation
    after nearest upsampling, and a pooled linear head, on a non-square image."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = act()
        self.stem, self.stem_relu = qconv(3, 4, stride=2), relu()
        self.conv1, self.relu1 = qconv(4, 8, stride=2), relu()
        self.conv2, self.proj = qconv(8, 8), qconv(4, 8, 1, stride=2)
        self.align_a, self.align_b, self.block_relu = act(), act(), relu()
        self.fuse, self.fuse_relu = qconv(12, 4), relu()
        self.seg, self.out_seg = qconv(4, 2, 1), act()
        self.fc = brevitas_nn.QuantLinear(8, 3, bias=True, weight_quant=Int8WeightPerTensorFixedPoint,
                                          weight_bit_width=4, bias_quant=Int32Bias)  # as edgemtl's quantizer
        self.pool_quant, self.out_cls = act(return_quant_tensor=True), act()  # Int32Bias needs the input scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.stem_relu(self.stem(self.inp(x)))
        deep = self.block_relu(self.align_a(self.conv2(self.relu1(self.conv1(skip)))) + self.align_b(self.proj(skip)))
        up = F.interpolate(deep, scale_factor=2, mode="nearest")
        seg = self.out_seg(self.seg(self.fuse_relu(self.fuse(torch.cat([up, skip], 1)))))
        cls = self.out_cls(self.fc(self.pool_quant(torch.flatten(F.adaptive_avg_pool2d(deep, 1), 1))))
        return seg, cls


@pytest.mark.slow
def test_add_concat_nearest_resize_and_pooled_linear_map_exactly(tmp_path):
    model = Residual()
    path = tmp_path / "residual.onnx"
    x, outs = calibrate_and_export(model, path, shape=(3, 16, 24))
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Add", "Concat", "Resize", "GlobalAveragePool", "Gemm"} <= ops
    names = output_names(path)
    project = build_hls_project(path, tmp_path / "prj", "multi", PART, CLOCK_NS)
    lsb = {names[0]: float(model.out_seg.act_quant.scale()), names[1]: float(model.out_cls.act_quant.scale())}
    assert project.float_biases == []
    result = csim_check(project, x, dict(zip(names, outs)), lsb, "multi")
    assert result["exact"] and result["max_abs_diff_lsb"] == 0.0 and result["samples"] == 3


def test_float_biases_are_found(tmp_path):
    """A float bias is rounded to `precision` in hls4ml (measured: 1 LSB on 3 of 192 pooled-head outputs over 64
    samples); the project names such nodes so a mismatch can say why."""
    import onnx

    class FloatBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.mid, self.out = act(return_quant_tensor=True), act(return_quant_tensor=True), act()
            self.fc = brevitas_nn.QuantLinear(12, 3, bias=True, weight_quant=Int8WeightPerTensorFixedPoint)
            self.fc_q = brevitas_nn.QuantLinear(3, 2, bias=True, weight_quant=Int8WeightPerTensorFixedPoint,
                                                bias_quant=Int32Bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.fc_q(self.mid(self.fc(self.inp(x.flatten(1))))))

    path = tmp_path / "float_bias.onnx"
    calibrate_and_export(FloatBias(), path, shape=(3, 2, 2))
    model = onnx.load(str(path))
    gemms = [n.name for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2 and _float_biases(model) == [gemms[0]]


def _qlinear(cin: int, cout: int) -> nn.Module:
    return brevitas_nn.QuantLinear(cin, cout, bias=False, weight_quant=Int8WeightPerTensorFixedPoint,
                                   weight_bit_width=4)


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv, self.relu, self.out = act(), qconv(3, 4), relu(), act()
        self.dw = brevitas_nn.QuantConv2d(4, 4, 3, padding=1, groups=4, bias=False,
                                          weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dw(self.relu(self.conv(self.inp(x)))))


class Leaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv, self.mid, self.leaky, self.q = act(), qconv(3, 4), act(), nn.LeakyReLU(0.125), act()
        self.head, self.out = qconv(4, 2, 1), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.q(self.leaky(self.mid(self.conv(self.inp(x)))))))


class PermuteThenDense(nn.Module):
    """MTCNN's order: a permute of the feature map (Transpose) before the dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv, self.relu, self.fc, self.out = act(), qconv(3, 4), relu(), _qlinear(64, 5), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(self.inp(x))).permute(0, 3, 2, 1).contiguous()
        return self.out(self.fc(y.reshape(y.shape[0], -1)))


class AvgPool(nn.Module):
    def __init__(self, window: int = 2, signed: bool = False) -> None:
        super().__init__()
        self.inp, self.conv, self.pool = act(), qconv(3, 4), nn.AvgPool2d(window)
        self.relu, self.mid = (act(), act()) if signed else (relu(), relu())
        self.head, self.out = qconv(4, 2, 1), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.mid(self.pool(self.relu(self.conv(self.inp(x)))))))


class SoftmaxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv, self.relu, self.fc, self.mid = act(), qconv(3, 4), relu(), _qlinear(64, 5), act()
        self.softmax, self.out = nn.Softmax(dim=1), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.softmax(self.mid(self.fc(self.relu(self.conv(self.inp(x))).flatten(1)))))


@pytest.mark.slow
@pytest.mark.parametrize(("model", "shape", "op"), [
    (Depthwise, (3, 8, 8), "Conv"), (Leaky, (3, 8, 8), "LeakyRelu"), (PermuteThenDense, (3, 4, 4), "Transpose"),
    (AvgPool, (3, 8, 8), "AveragePool"), (lambda: AvgPool(4, signed=True), (3, 8, 8), "AveragePool")],
    ids=["depthwise", "leaky-relu", "permute-dense", "avgpool-2x2", "avgpool-4x4-signed"])
def test_depthwise_leaky_relu_permute_and_average_pools_map_exactly(tmp_path, model, shape, op):
    """The layers of edge CNNs that hls4ml takes bit for bit (the operator table's 'yes', checked by running)."""
    import onnx

    module = model()
    path = tmp_path / "m.onnx"
    x, outs = calibrate_and_export(module, path, shape=shape)
    assert op in {node.op_type for node in onnx.load(str(path)).graph.node}
    names = output_names(path)
    project = build_hls_project(path, tmp_path / "prj", "t", PART, CLOCK_NS)
    result = csim_check(project, x, dict(zip(names, outs)), {names[0]: float(module.out.act_quant.scale())}, "t")
    assert result["exact"] and result["max_abs_diff_lsb"] == 0.0


class PReluThenPool(nn.Module):
    """MTCNN's conv -> PReLU -> max pool, with the pool given (slopes on the 2^-8 grid edgemtl's QAT keeps)."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.inp, self.conv, self.mid, self.prelu = act(), qconv(3, 4), act(), FixedPointPReLU(4)
        with torch.no_grad():
            self.prelu.weight.copy_(torch.tensor([0.25, -0.5, 0.125, 1.75]))
        self.pool, self.q, self.head, self.out = pool, act(), qconv(4, 2, 1), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.q(self.pool(self.prelu(self.mid(self.conv(self.inp(x))))))))


class PReluPermuteDense(nn.Module):
    """MTCNN's tail: PReLU -> permute -> flatten -> (quantized input of) the dense layer -> PReLU -> dense."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv, self.mid, self.prelu = act(), qconv(3, 4), act(), FixedPointPReLU(4)
        self.q, self.fc, self.fq, self.prelu2 = act(), _qlinear(64, 6), act(), FixedPointPReLU(6)
        self.fc2, self.out = _qlinear(6, 3), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.prelu(self.mid(self.conv(self.inp(x)))).permute(0, 3, 2, 1).contiguous()
        return self.out(self.fc2(self.prelu2(self.fq(self.fc(self.q(y.reshape(y.shape[0], -1)))))))


@pytest.mark.slow
@pytest.mark.parametrize(("model", "shape"), [
    (lambda: PReluThenPool(nn.MaxPool2d(3, 2, ceil_mode=True)), (3, 10, 10)),  # overlapping, ceil mode pads the end
    (lambda: PReluThenPool(nn.MaxPool2d(3, 1, padding=1)), (3, 6, 7)),  # padding on every side, stride 1
    (lambda: PReluThenPool(nn.MaxPool2d(2, 2, ceil_mode=True)), (3, 9, 9)),  # a window of one real value
    (PReluPermuteDense, (3, 4, 4)),  # a per-tensor Quant after the flatten (hls4ml's stream linear misread it)
], ids=["3x3s2-ceil", "3x3s1-pad1", "2x2s2-ceil-odd", "permute-flatten-dense"])
def test_prelu_and_windowed_max_pools_map_exactly(tmp_path, model, shape):
    """What MTCNN needs from hls4ml, bit for bit: PReLU with its slopes, max pools hls4ml's stream kernel asserts
    against (edgemtl's windowed kernel), PReLU before a permute and a flatten."""
    module = model()
    path = tmp_path / "m.onnx"
    x, outs = calibrate_and_export(module, path, shape=shape)
    names = output_names(path)
    project = build_hls_project(path, tmp_path / "prj", "t", PART, CLOCK_NS)
    assert any("PRelu" in name for name in project.precision_table)
    result = csim_check(project, x, dict(zip(names, outs)), {names[0]: float(module.out.act_quant.scale())}, "t")
    assert result["exact"] and result["max_abs_diff_lsb"] == 0.0


class Elementwise(nn.Module):
    """conv -> quantizer -> an elementwise function left in float by the QAT graph -> quantizer -> conv head."""

    def __init__(self, function: nn.Module, bits: int = 8) -> None:
        super().__init__()
        self.inp, self.conv, self.mid = act(), qconv(3, 4), act(bit_width=bits)
        self.function, self.q, self.head, self.out = function, act(), qconv(4, 2, 1), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.q(self.function(self.mid(self.conv(self.inp(x)))))))


@pytest.mark.slow
@pytest.mark.parametrize("function", [nn.Sigmoid(), nn.Tanh(), nn.Softplus(), nn.Hardsigmoid(), nn.Hardswish()],
                         ids=lambda f: type(f).__name__)
def test_elementwise_functions_become_exact_tables(tmp_path, function):
    """hls4ml's own sigmoid / tanh / softplus tables were 1-2 LSB off (measured) and it has no HardSwish: between two
    quantizers each becomes edgemtl's table over the input codes, equal to brevitas bit for bit."""
    module = Elementwise(function, bits=4 if isinstance(function, nn.Hardswish) else 8)
    path = tmp_path / "m.onnx"
    x, outs = calibrate_and_export(module, path, scale=3.0)
    names = output_names(path)
    project = build_hls_project(path, tmp_path / "prj", "t", PART, CLOCK_NS)
    assert any(name.endswith("_table") for name in project.precision_table)
    result = csim_check(project, x, dict(zip(names, outs)), {names[0]: float(module.out.act_quant.scale())}, "t")
    assert result["exact"] and result["max_abs_diff_lsb"] == 0.0


def test_a_table_op_left_unquantized_is_refused_with_the_reason():
    """Only between two quantizers can the table be exact; otherwise hls4ml's own table would be off: one line."""
    from onnx import helper

    from edgemtl.backends.hls4ml_ops import _known_failure

    reason = _known_failure(helper.make_node("Sigmoid", ["x"], ["y"]))
    assert "1-2 LSB" in reason and "two power-of-two quantizers" in reason


@pytest.mark.parametrize(("size", "kernel", "stride", "pads", "ceil_mode"), [
    (s, k, st, p, c) for s in (5, 8, 9, 10, 46) for k in (1, 2, 3) for st in (1, 2, 3) for p in (0, 1) for c in (0, 1)
    if p < k and p <= k // 2])
def test_pooled_size_is_torchs(size, kernel, stride, pads, ceil_mode):
    """The windowed kernel's output size: PyTorch's (ceil mode: the last window starts inside the input)."""
    expected = nn.MaxPool2d(kernel, stride, padding=pads, ceil_mode=bool(ceil_mode))(torch.zeros(1, 1, size, size)).shape[-1]
    assert pooled_size(size, kernel, stride, pads, pads, bool(ceil_mode)) == expected


@pytest.mark.parametrize(("model", "shape", "op", "why"), [
    (lambda: AvgPool(3), (3, 9, 9), "AveragePool", "divides by 9"), (SoftmaxHead, (3, 4, 4), "Softmax", "not bit-accurate")])
def test_ops_hls4ml_runs_wrongly_are_refused_before_conversion(tmp_path, model, shape, op, why):
    """Found by running them: a 3x3 mean is no exact fixed-point operation, and hls4ml's table-based Softmax was
    23 LSB off brevitas' at 8 bits. Refused in one line before anything is built."""
    path = tmp_path / "m.onnx"
    calibrate_and_export(model(), path, shape=shape)
    with pytest.raises(EdgemtlError) as err:
        build_hls_project(path, tmp_path / "prj", "t", PART, CLOCK_NS)
    assert f"cannot map ONNX op '{op}'" in str(err.value) and why in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "prj" / "firmware").exists()
