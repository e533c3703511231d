"""QONNX / QCDQ export of quantized task paths: qonnx's executor and ONNX Runtime match brevitas to 1 LSB."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import tiny_model
from edgemtl.backends.qonnx_export import check_exports, export_qcdq, export_qonnx, inference_cost
from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError
from edgemtl.passes.quantize_brevitas import QuantConfig, quantize_task

TASKS = ["depth", "scene"]  # a dense head (bilinear resize + concatenated skip) and the pooled linear head


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qonnx")
    model, spec = tiny_model("mtl-cnn")
    train, val = load_data("scenes", "train", n=32), load_data("scenes", "val", n=8)
    out = {}
    for task in TASKS:
        qmodel, _ = quantize_task(model, spec, task, train, val,
                                  QuantConfig(qat_steps=3, batch_size=8, calibration_samples=16))
        out[task] = (qmodel, export_qonnx(qmodel, spec, folder / f"{task}.qonnx.onnx"),
                     export_qcdq(qmodel, spec, folder / f"{task}.qcdq.onnx"))
    images = torch.from_numpy(val.normalise(val.images[:2]))
    return out, images


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


@pytest.mark.parametrize("task", TASKS)
def test_qonnx_and_qcdq_match_brevitas_within_one_lsb(exported, task):
    paths, images = exported
    qmodel, qonnx_path, qcdq_path = paths[task]
    result = check_exports(qmodel, qonnx_path, qcdq_path, images)
    assert result["task"] == task and result["samples"] == 2
    assert result["qonnx_max_diff_lsb"] <= 1 and result["onnxruntime_max_diff_lsb"] <= 1
    assert math.log2(result["output_lsb"]).is_integer()


@pytest.mark.parametrize("task", TASKS)
def test_every_quant_node_has_a_power_of_two_scale(exported, task):
    paths, _ = exported
    model = onnx.load(str(paths[task][1]))
    constants = _constants(model)
    quants = [n for n in model.graph.node if n.op_type == "Quant"]
    ops = Counter(n.op_type for n in model.graph.node)
    assert len(quants) > 20
    bit_widths = set()
    for node in quants:  # weights, biases (input scale x weight scale) and activations alike
        scale, zero_point, bits = (constants[name] for name in node.input[1:4])
        assert np.all(scale > 0) and np.all(np.log2(scale) == np.round(np.log2(scale))), node.output[0]
        assert np.all(zero_point == 0)
        bit_widths.add(int(bits))
    assert {4, 8, 32} <= bit_widths  # w4a4 inside, 8-bit input and output, 32-bit biases
    assert "BatchNormalization" not in ops and ops["Conv"] >= 9 and ops["Add"] == 3
    if task == "depth":
        assert ops["Resize"] == 2 and ops["Concat"] >= 1
    else:
        assert ops["GlobalAveragePool"] == 1 and ops["Gemm"] == 1


def test_inference_cost_counts_macs_by_bit_width(exported):
    paths, _ = exported
    cost = inference_cost(paths["depth"][1])
    json.dumps(cost)
    assert cost["total_macs"] > 0 and cost["total_mem_w_bits"] > 0
    macs = {k: v for k, v in cost.items() if k.startswith("op_mac_")}
    assert "op_mac_SCALEDINT<4>_SCALEDINT<4>" in macs  # 4-bit activations x 4-bit weights
    assert "op_mac_SCALEDINT<8>_SCALEDINT<4>" in macs  # the stem: 8-bit input x 4-bit weights
    assert sum(macs.values()) == cost["total_macs"]
    assert set(k for k in cost if k.startswith("mem_w_")) == {"mem_w_SCALEDINT<4>"}


def test_a_graph_off_by_more_than_one_lsb_is_refused(exported, tmp_path):
    paths, images = exported
    qmodel, qonnx_path, qcdq_path = paths["depth"]
    model = onnx.load(str(qonnx_path))
    output = model.graph.output[0].name
    last = next(n for n in model.graph.node if output in n.output)
    last.output[list(last.output).index(output)] = "unscaled"
    model.graph.initializer.append(numpy_helper.from_array(np.array(1.25, dtype=np.float32), "gain"))
    model.graph.node.append(onnx.helper.make_node("Mul", ["unscaled", "gain"], [output]))  # 25% off
    broken = tmp_path / "broken.qonnx.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(EdgemtlError, match=r"task 'depth': qonnx differs from the brevitas model by .* output LSBs"):
        check_exports(qmodel, broken, qcdq_path, images)
