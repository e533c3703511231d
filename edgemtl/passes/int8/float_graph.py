"""The float graph `quantize_int8` starts from: the task path as ONNX at batch 1, BatchNorm folded, shapes known.

The float path is exported with the project's ONNX exporter (the one every other flow uses), so the integer
graph starts from exactly the graph the other targets compile; its batch is fixed to 1 so that onnxruntime's basic
graph optimizer constant-folds the shape arithmetic the exporter leaves (Resize sizes computed from Shape).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from torch import nn

from edgemtl.model.onnx_export import export_task
from edgemtl.model.spec import ModelSpec


def fold_batchnorm(model: onnx.ModelProto) -> None:
    """Fold every BatchNormalization that follows a Conv or ConvTranspose (the exporter's eval mode normally did
    it for a Conv already)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        if (conv is None or conv.op_type not in ("Conv", "ConvTranspose") or consumers.get(bn.input[0], 0) != 1
                or bn.input[0] in outputs
                or any(name not in inits for name in [*bn.input[1:5], *conv.input[1:]])):
            continue  # left for the converter, which names it as unsupported
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in bn.input[1:5])
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else 0.0
        factor = gamma / np.sqrt(var + eps)
        w_name, b_name = f"{conv.name}/folded_weight", f"{conv.name}/folded_bias"
        per_output = factor.reshape(1, -1, 1, 1) if conv.op_type == "ConvTranspose" else factor.reshape(-1, 1, 1, 1)
        graph.initializer.extend([
            numpy_helper.from_array((weight * per_output).astype(np.float32), w_name),
            numpy_helper.from_array(((bias - mean) * factor + beta).astype(np.float32), b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)


def float_graph(model: nn.Module, spec: ModelSpec, task: str, folder: Path) -> onnx.ModelProto:
    """The task's float path as ONNX: batch 1, BatchNorm folded, shape arithmetic folded, shapes inferred."""
    exported = onnx.load(export_task(model, spec, task, folder / "float.onnx"))
    fold_batchnorm(exported)
    for value in [*exported.graph.input, *exported.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    del exported.graph.value_info[:]
    onnx.save(exported, folder / "batch1.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folder / "folded.onnx")
    options.intra_op_num_threads = 1
    ort.InferenceSession(str(folder / "batch1.onnx"), options, providers=["CPUExecutionProvider"])
    return onnx.shape_inference.infer_shapes(onnx.load(folder / "folded.onnx"), strict_mode=True)

