"""brevitas QAT of one task path: power-of-two scales everywhere, BatchNorm folded, bit widths as asked."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import tiny_model
from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError
from edgemtl.passes.quantize_brevitas import (PRELU_SLOPE_BITS, QuantConfig, grid_align, layer_bit_widths, output_lsb,
                                              quantize_task, quantizer_scales)

QUICK = dict(qat_steps=3, batch_size=8, calibration_samples=16)


@pytest.fixture(scope="module")
def data():
    return load_data("scenes", "train", n=32), load_data("scenes", "val", n=16)


def _is_power_of_two(value: float) -> bool:
    return value > 0 and float(math.log2(value)).is_integer()


def _on_grid_hooks(qmodel: nn.Module) -> tuple[list, list]:
    """Record every activation quantizer's output value / scale (a live quantizer's values are integers)."""
    seen, handles = [], []

    def hook(module, inputs, output):
        if hasattr(output, "scale") and output.scale is not None:
            seen.append((output.value / output.scale).detach())

    for module in qmodel.modules():
        if hasattr(module, "act_quant"):
            handles.append(module.register_forward_hook(hook))
    return seen, handles


@pytest.mark.parametrize("task", ["depth", "scene"])  # dense head (resize + concat skip) and pooled linear head
def test_task_path_has_power_of_two_scales_and_folded_batchnorm(data, task):
    train, val = data
    model, spec = tiny_model("mtl-cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel, record = quantize_task(model, spec, task, train, val, QuantConfig(**QUICK))

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the float model is untouched
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in qmodel.modules())

    scales = quantizer_scales(qmodel)
    weights = [k for k in scales if k.endswith(".weight")]
    assert len(weights) == len(record.layers) >= 10 and len(scales) > len(weights)
    assert all(_is_power_of_two(s) for s in scales.values()), {k: s for k, s in scales.items() if not _is_power_of_two(s)}
    assert _is_power_of_two(output_lsb(qmodel)) and record.output_lsb == output_lsb(qmodel)

    # w4a4: every compute layer has 4-bit weights; the head's last layer feeds the 8-bit output quantizer
    last = "heads.depth.predict" if task == "depth" else "heads.scene.fc"
    assert record.layers == layer_bit_widths(qmodel)
    assert {v["weight_bits"] for v in record.layers.values()} == {4}
    assert record.layers[last]["act_bits"] == 8
    assert {v["act_bits"] for k, v in record.layers.items() if k != last} == {4}

    out = record.to_dict()
    assert out["precision"] == "w4a4" and out["qat_steps"] == 3 and out["seconds"] > 0
    assert set(out["metric_float"]) == set(out["metric_quant"]) and all(math.isfinite(v) for v in out["metric_quant"].values())

    # after calibration every quantizer actually rounds (values are integer multiples of their scale)
    seen, handles = _on_grid_hooks(qmodel)
    x = torch.from_numpy(val.normalise(val.images[:2]))
    with torch.no_grad():
        y = qmodel(x)
    for handle in handles:
        handle.remove()
    assert seen and all(torch.equal(v, v.round()) for v in seen)
    assert y.shape == (2, *spec.task(task).output_shape)
    assert torch.equal(y / output_lsb(qmodel), (y / output_lsb(qmodel)).round())


def test_grid_align_snaps_inputs_onto_the_input_grid(data):
    train, val = data
    model, spec = tiny_model("mtl-cnn")
    qmodel, _ = quantize_task(model, spec, "scene", train, val, QuantConfig(qat_steps=0, calibration_samples=16))
    x = torch.from_numpy(val.normalise(val.images[:4]))
    aligned = grid_align(qmodel, x)
    scale = float(qmodel.input_quant.act_quant.scale().detach())
    assert _is_power_of_two(scale)
    assert torch.equal(aligned / scale, (aligned / scale).round()) and not torch.equal(aligned, x)
    assert torch.equal(grid_align(qmodel, aligned), aligned)
    with torch.no_grad():
        assert torch.equal(qmodel(aligned), qmodel(x))


def test_overrides_and_w8a8(data):
    train, val = data
    model, spec = tiny_model("mtl-cnn")
    overrides = {"encoder.stem.0": (6, 5), "encoder.stages.1.0.conv2": (3, 3), "heads.segmentation.predict": (8, 8)}
    config = QuantConfig(precision="w8a8", overrides=overrides, input_bits=6, output_bits=10, **QUICK)
    qmodel, record = quantize_task(model, spec, "depth", train, val, config)  # names of other heads are fine
    layers = record.layers
    assert layers["encoder.stem.0"] == {"weight_bits": 6, "act_bits": 5}
    assert layers["encoder.stages.1.0.conv2"] == {"weight_bits": 3, "act_bits": 3}
    # the stem's ReLU and the first block's conv2 meet in a residual add: one scale, so one bit width
    assert layers["encoder.stages.0.0.conv2"]["act_bits"] == 5
    assert layers["encoder.stages.1.0.shortcut.0"]["act_bits"] == 3
    assert layers["encoder.stages.2.0.conv1"] == {"weight_bits": 8, "act_bits": 8}
    assert layers["heads.depth.predict"]["act_bits"] == 10
    assert int(qmodel.input_quant.act_quant.bit_width()) == 6 and int(qmodel.output_quant.act_quant.bit_width()) == 10
    assert all(_is_power_of_two(s) for s in quantizer_scales(qmodel).values())


def test_bad_configs_are_one_line_errors(data):
    with pytest.raises(EdgemtlError, match="unknown precision 'w3a3': valid precisions are w4a4, w8a8"):
        QuantConfig(precision="w3a3")
    with pytest.raises(EdgemtlError, match="override of layer"):
        QuantConfig(overrides={"encoder.stem.0": (1, 4)})
    train, val = data
    model, spec = tiny_model("mtl-cnn")
    with pytest.raises(EdgemtlError, match="unknown layer.*encoder.nope"):
        quantize_task(model, spec, "depth", train, val, QuantConfig(overrides={"encoder.nope": (4, 4)}))
    with pytest.raises(EdgemtlError, match="unknown task 'nope'"):
        quantize_task(model, spec, "nope", train, val, QuantConfig())


def test_first_and_last_name_the_task_paths_edge_layers(data):
    """`first` / `last` stand for the path's first and last compute layers, which differ per task: the usual
    8-bit-edges policy of low-bit networks in one override for every task."""
    train, val = data
    model, spec = tiny_model("mtl-cnn")
    config = QuantConfig(precision="w4a4", overrides={"first": (8, 8), "last": (8, 6)}, **QUICK)
    _, record = quantize_task(model, spec, "depth", train, val, config)
    assert record.layers["encoder.stem.0"] == {"weight_bits": 8, "act_bits": 8}
    assert record.layers["heads.depth.predict"]["weight_bits"] == 8
    assert record.layers["encoder.stages.1.0.conv1"] == {"weight_bits": 4, "act_bits": 4}
    _, record = quantize_task(model, spec, "scene", train, val, config)
    assert record.layers["heads.scene.fc"]["weight_bits"] == 8


def test_a_final_resize_left_to_the_host_is_bilinear_and_outside_the_fabric(data):
    train, val = data
    model, spec = tiny_model("mtl-cnn")
    config = QuantConfig(nearest_upsampling=True, host_resize=True, **QUICK)
    qmodel, record = quantize_task(model, spec, "depth", train, val, config)
    assert record.host_resize == qmodel.host_resize == {"size": spec.task("depth").output_shape[1:], "mode": "bilinear",
                                                         "align_corners": False}
    x = torch.from_numpy(val.normalise(val.images[:2]))
    with torch.no_grad():
        on_fabric, full = qmodel.fabric(x), qmodel(x)
    assert on_fabric.shape[-1] < full.shape[-1] and full.shape == (2, *spec.task("depth").output_shape)
    assert torch.equal(full, torch.nn.functional.interpolate(on_fabric, size=on_fabric.shape[-1] * 2, mode="bilinear",
                                                             align_corners=False))
    assert torch.equal(on_fabric / output_lsb(qmodel), (on_fabric / output_lsb(qmodel)).round())  # ends at the quantizer
    assert "nearest" in qmodel.graph_module.code and "bilinear" not in qmodel.graph_module.code  # inner resizes
    scene, scene_record = quantize_task(model, spec, "scene", train, val, config)  # no final resize: nothing moves
    assert scene.fabric is scene and scene_record.host_resize is None


class CaffeClassifier(nn.Module):
    """MTCNN's layer kinds on the scenes images: conv -> PReLU -> ceil-mode max pool -> dense -> softmax."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv, self.prelu, self.pool = nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.fc, self.softmax = nn.Linear(4, classes), nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scene": self.softmax(self.fc(self.pool(self.prelu(self.conv(x))).mean((2, 3))))}


def test_prelu_slopes_stay_on_the_fixed_point_grid_and_a_final_softmax_is_left_to_the_host(data):
    """The zcu104 needs exact fixed-point PReLU slopes (hls4ml multiplies in fixed point) and has no exact softmax:
    the slopes are snapped to 2^-8 through QAT (gradients still reach them), the softmax leaves the fabric."""
    train, val = data
    _, spec = tiny_model("mtl-cnn")
    spec = spec.model_copy(update={"tasks": [spec.task("scene")]})
    torch.manual_seed(0)
    model = CaffeClassifier(spec.task("scene").output_shape[0])
    with torch.no_grad():
        model.prelu.weight.copy_(torch.tensor([0.2, -0.3, 0.01, 0.7]))
    qmodel, record = quantize_task(model, spec, "scene", train, val, QuantConfig(host_softmax=True, **QUICK))
    assert record.host_softmax == qmodel.host_softmax == {"dim": 1} and record.fixed_point_prelus == ["prelu"]
    prelu = qmodel.graph_module.get_submodule("model.prelu")
    slopes = prelu.snapped_weight().detach() * 2 ** PRELU_SLOPE_BITS
    assert torch.equal(slopes, slopes.round()) and not torch.equal(prelu.weight.detach(), model.prelu.weight)  # trained
    x = torch.from_numpy(val.normalise(val.images[:4]))
    with torch.no_grad():
        logits, scores = qmodel.fabric(x), qmodel(x)
    assert torch.equal(scores, torch.softmax(logits, dim=1))
    assert torch.equal(logits / output_lsb(qmodel), (logits / output_lsb(qmodel)).round())  # ends at the quantizer
    plain, plain_record = quantize_task(model, spec, "scene", train, val, QuantConfig(**QUICK))  # not asked: kept
    assert plain.fabric is plain and plain_record.host_softmax is None
