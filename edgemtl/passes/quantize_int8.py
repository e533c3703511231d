"""Post-training int8 quantization of one task path into the integer graph the MCU backends consume.

The float path is exported with the project's ONNX exporter (BatchNorm folded into the convolutions),
its batch fixed to 1 so that onnxruntime's basic graph optimizer constant-folds the shape arithmetic the
exporter leaves (Resize sizes computed from Shape), and then converted node by node into an
`edgemtl.model.intgraph.IntGraph`:

- weights: per-output-channel symmetric int8 (scale = max|w_c| / 127); biases int32 at s_in * s_w[c],
  folded into the requantisation as `add = bias_q * mul`;
- activations: symmetric, int8 where the float tensor can be negative, uint8 where it cannot (after a
  ReLU, and through max pools / resizes / pools / concatenations of such tensors). Each scale comes from
  calibration on real images: by default the clipping range that minimises the quantization MSE of the
  tensor's calibration values (percentile and max are the alternatives);
- requantisation: the real multiplier of every channel as mul_c / 2**shift, one shift per node, the
  largest shift for which the worst-case accumulator times mul plus add still fits in int32.

Concatenations need every input at the output's scale and dtype; an input whose producer requantizes
anyway (a conv, a bilinear resize ...) and feeds only the concatenation is produced at that scale
directly, any other gets a `requant` node.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

# The float path comes from the project's own exporter (the one every other flow uses), so the integer graph
# starts from exactly the graph the other targets compile; the pass lowers nothing itself.
from edgemtl.model.onnx_export import export_task
from edgemtl.data import TaskData
from edgemtl.errors import EdgemtlError
from edgemtl.evaluate import Predictor, evaluate
from edgemtl.model.contract import run_task
from edgemtl.model.intgraph import (INT8_PARAMS, INT32, LAYERNORM_Z_BITS, PER_TENSOR, RANGES, IntGraph, Node, TensorInfo,
                                    check_int32, dequantize, quantize_input, run_reference, softmax_exp_table,
                                    worst_case_accumulator)
from edgemtl.model.spec import ModelSpec
from edgemtl.passes.elementwise import OPS as ELEMENTWISE_OPS
from edgemtl.passes.elementwise import Elementwise, region

ScaleMethod = Literal["mse", "percentile", "max"]
SQNR_SAMPLES = 16   # held-out images each layer's error against float is measured on
SCALE_METHODS = ("mse", "percentile", "max")
SUPPORTED_OPS = ("Conv", "ConvTranspose", "Relu", "Add", "Concat", "Resize", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "ReduceMean", "Gemm", "MatMul", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
                 "Identity", "Dropout", "Transpose", "Split", "Slice", "Gather", "Softmax", "LayerNormalization",
                 "TopK", *(op for op in ELEMENTWISE_OPS if op != "Add"))
_MOVES = ("maxpool", "resize_nearest", "flatten", "alias", "transpose", "slice")   # units that keep their input's scale
_WEIGHTED = ("conv", "conv_transpose", "gemm")
_DYNAMIC_DISPATCH = ("TopK", "NonZero", "ScatterElements", "ScatterND")   # a routed MoE layer's ops
_CALIBRATED = (*_WEIGHTED, "add", "requant", "avgpool_global", "avgpool", "reduce_mean", "matmul", "add_const",
               "layernorm", "softmax", "moe")


@dataclass(frozen=True)
class Int8Config:
    """How activation scales are calibrated.

    `scale_method`: "mse" picks, per tensor, the clipping range (among fractions of the max and high
    percentiles) with the smallest quantization MSE on the calibration values: rare outliers then do not
    coarsen the step of everything else, yet large values are not clipped when they matter. "percentile"
    clips at `percentile` of |x|, "max" never clips. At most `values_per_tensor` values per tensor are
    kept for this (a seeded random subset; the exact max is always kept).
    """

    calibration_samples: int = 64
    scale_method: ScaleMethod = "mse"
    percentile: float = 99.99
    values_per_tensor: int = 1 << 18
    seed: int = 0
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.scale_method not in SCALE_METHODS:
            raise EdgemtlError(f"unknown scale method {self.scale_method!r}: valid methods are {', '.join(SCALE_METHODS)}")
        if not 50.0 <= self.percentile <= 100.0:
            raise EdgemtlError(f"the calibration percentile must lie in 50..100, got {self.percentile}")
        if self.calibration_samples < 1 or self.values_per_tensor < 1000 or self.eval_batch_size < 1:
            raise EdgemtlError("calibration_samples and eval_batch_size must be >= 1, values_per_tensor >= 1000")


@dataclass
class Int8Record:
    """What quantizing one task path did and what it cost in the task's metric (on `val`)."""

    task: str
    metric: str                                   # the task's primary metric
    higher_is_better: bool
    calibration_samples: int
    scale_method: str
    metric_float: dict[str, float]
    metric_int8: dict[str, float]
    input_scale: float
    output_scale: float
    layers: dict[str, dict[str, Any]]             # node name -> op, output dtype / scale, shift, mul bits, sqnr_db
    weight_bytes: int                             # every integer parameter (weights, mul, add)
    seconds: float
    relative_change: float = field(init=False)    # (int8 - float) / |float| of the primary metric

    def __post_init__(self) -> None:
        before, after = self.metric_float[self.metric], self.metric_int8[self.metric]
        self.relative_change = (after - before) / abs(before) if before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the float graph ----------------------------------------------------------------------------------------
def _fold_batchnorm(model: onnx.ModelProto) -> None:
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
    _fold_batchnorm(exported)
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


# -- units: the ONNX nodes that become one integer node --------------------------------------------------------
@dataclass
class _Unit:
    kind: str                   # conv, conv_transpose, gemm, add, requant, concat, maxpool, resize_bilinear,
                                # resize_nearest, avgpool_global, avgpool, flatten, lut, alias, transpose, slice,
                                # matmul, add_const, softmax, layernorm
    name: str                   # the (first) ONNX node's name
    inputs: list[str]           # ONNX activation tensors read
    output: str                 # ONNX tensor produced (after a fused Relu)
    relu: bool = False
    onnx: list[onnx.NodeProto] = field(default_factory=list)
    table: Elementwise | None = None   # lut units: the nodes' function
    attrs: dict[str, Any] = field(default_factory=dict)   # transpose, slice: how the data moves


class _Converter:
    def __init__(self, model: onnx.ModelProto, task: str) -> None:
        self.task = task
        graph = model.graph
        self.graph = graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.shapes: dict[str, list[int]] = {}
        for value in [*graph.input, *graph.value_info, *graph.output]:
            dims = value.type.tensor_type.shape.dim
            self.shapes[value.name] = [d.dim_value for d in dims]
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.input = graph.input[0].name
        self.output = graph.output[0].name
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)

    # errors ------------------------------------------------------------------------------------------------
    def unsupported(self, node: onnx.NodeProto, why: str = "") -> EdgemtlError:
        detail = f" ({why})" if why else ""
        return EdgemtlError(
            f"task {self.task!r}: layer {node.name!r} is an ONNX {node.op_type!r}{detail}, which the int8 MCU backends "
            f"do not support (they take {', '.join(SUPPORTED_OPS)}); change that layer or compile this task "
            f"for another target")

    def attr(self, node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                value = onnx.helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def sample_shape(self, name: str) -> list[int]:
        """A tensor's shape per sample. The batch is 1 here, and a tensor whose first axis is not 1 has the batch
        folded into its rows (the exporter's Reshape before a Gemm on tokens): row-wise ops see the same values
        either way, so that shape is the sample's."""
        shape = self.shapes[name]
        return shape[1:] if shape and shape[0] == 1 else list(shape)

    def sample_axis(self, node: onnx.NodeProto, name: str, axis: int) -> int:
        shape = self.shapes[name]
        axis %= len(shape)
        if shape and shape[0] == 1:
            if axis == 0:
                raise self.unsupported(node, "it works along the batch axis")
            return axis - 1
        return axis

    def single_relu(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == "Relu" and tensor != self.output:
            return users[0]
        return None

    # pass 1: group ONNX nodes into units -------------------------------------------------------------------
    def units(self) -> list[_Unit]:
        units: list[_Unit] = []
        fused: set[str] = set()   # by first output: node names may be empty
        moe = {unit.onnx[0].output[0]: unit for unit in map(self.moe_unit, (n for n in self.graph.node
                                                                           if n.op_type == "TopK"))}
        for node in self.graph.node:
            if node.output[0] in moe:   # an MoE layer stands where its first node stood
                unit = moe[node.output[0]]
                fused.update(n.output[0] for n in unit.onnx)
                units.append(unit)
                continue
            if node.output[0] in fused:
                continue
            if node.op_type in _DYNAMIC_DISPATCH:
                raise self.unsupported(node, "a data-dependent dispatch outside an MoE layer edgemtl recognises")
            if node.op_type == "Split":
                units += self.split_units(node)
                continue
            unit = self.unit(node)
            if unit.kind in (*_WEIGHTED, "add"):
                relu = self.single_relu(unit.output)
                if relu is not None:
                    fused.add(relu.output[0])
                    unit.relu, unit.output = True, relu.output[0]
                    unit.onnx.append(relu)
            if unit.kind in ("gemm", "lut"):  # MatMul + Add; a chain of elementwise nodes of one value
                fused.update(n.output[0] for n in unit.onnx[1:])
            units.append(unit)
        return units

    def activation_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.inits]

    def unit(self, node: onnx.NodeProto) -> _Unit:
        if not node.name:
            node.name = f"{node.op_type}:{node.output[0]}"
        op, ins = node.op_type, self.activation_inputs(node)
        out = node.output[0]
        if op == "Conv":
            if len(ins) != 1 or node.input[1] not in self.inits:
                raise self.unsupported(node, "weights computed at run time")
            if self.attr(node, "auto_pad", "NOTSET") != "NOTSET" or any(d != 1 for d in self.attr(node, "dilations", [1, 1])):
                raise self.unsupported(node, "auto_pad / dilation")
            if len(self.inits[node.input[1]].shape) != 4:
                raise self.unsupported(node, "not a 2-D convolution")
            return _Unit("conv", node.name, ins, out, onnx=[node])
        if op == "ConvTranspose":
            return self.conv_transpose_unit(node, ins)
        if op in ELEMENTWISE_OPS and (op != "Add" or len(ins) == 1):
            return self.lut_unit(node, ins)
        if op == "MatMul" and len(ins) == 2:
            return self.matmul_unit(node, ins)
        if op in ("Gemm", "MatMul"):
            if len(ins) != 1 or node.input[1] not in self.inits or (op == "Gemm" and self.attr(node, "transA", 0)):
                raise self.unsupported(node, "weights computed at run time")
            unit = _Unit("gemm", node.name, ins, out, onnx=[node])
            users = self.consumers.get(out, [])
            if (op == "MatMul" and len(users) == 1 and users[0].op_type == "Add" and out != self.output
                    and len(self.activation_inputs(users[0])) == 1):
                unit.onnx.append(users[0])
                unit.output = users[0].output[0]
            return unit
        if op == "Add":
            if len(ins) != 2:
                raise self.unsupported(node, "an addition with a constant")
            if self.sample_shape(ins[0]) != self.sample_shape(ins[1]):
                raise self.unsupported(node, "a broadcasting addition")
            return _Unit("add", node.name, ins, out, onnx=[node])
        if op == "Relu":
            return _Unit("requant", node.name, ins, out, relu=True, onnx=[node])
        if op == "Concat":
            axis = self.attr(node, "axis")
            if len(ins) != len(node.input):
                raise self.unsupported(node, "it concatenates a constant")
            if len(self.shapes[out]) != 4 or axis not in (1, -3):
                raise self.unsupported(node, "not along channels")
            return _Unit("concat", node.name, ins, out, onnx=[node])
        if op == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                raise self.unsupported(node, "it also returns indices")
            if (self.attr(node, "auto_pad", "NOTSET") != "NOTSET"
                    or any(d != 1 for d in self.attr(node, "dilations", [1, 1]))):
                raise self.unsupported(node, "auto_pad / dilation")
            return _Unit("maxpool", node.name, ins, out, onnx=[node], attrs=self.pool_attrs(node))
        if op == "Resize":
            if len(ins) != 1:
                raise self.unsupported(node, "sizes computed at run time")
            return self.resize_unit(node, ins)
        if op in ("GlobalAveragePool", "ReduceMean"):
            if op == "ReduceMean":
                axes = self.attr(node, "axes")
                if axes is None and len(node.input) > 1 and node.input[1] in self.inits:
                    axes = self.inits[node.input[1]].tolist()
                if axes is None:
                    raise self.unsupported(node, "axes computed at run time")
                full = self.shapes[node.input[0]]
                if sorted(a % len(full) for a in axes) != [2, 3] or len(full) != 4:
                    return self.reduce_mean_unit(node, ins, [a % len(full) for a in axes])
            return _Unit("avgpool_global", node.name, ins[:1], out, onnx=[node])
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            # row-major bytes are the same in any shape, so a reshape is a relabelling, unless it folds the batch
            before, after = self.sample_shape(ins[0]), self.sample_shape(out)
            if int(np.prod(before)) != int(np.prod(after)):
                raise self.unsupported(node, f"to shape {after}: it moves data across samples of the batch")
            return _Unit("flatten", node.name, ins[:1], out, onnx=[node])
        if op in ("Identity", "Dropout"):
            return _Unit("alias", node.name, ins[:1], out, onnx=[node])
        if op == "Transpose":
            return self.transpose_unit(node, ins)
        if op in ("Gather", "Slice"):
            return self.slice_unit(node, ins)
        if op == "Softmax":
            rank = len(self.shapes[ins[0]])
            if self.opset < 13 and int(self.attr(node, "axis", 1)) % rank != rank - 1:
                raise self.unsupported(node, "opset < 13 softmax over a flattened block of axes")
            axis = self.sample_axis(node, ins[0], int(self.attr(node, "axis", -1)))
            return _Unit("softmax", node.name, ins, out, onnx=[node], attrs={"axis": axis})
        if op == "LayerNormalization":
            return self.layernorm_unit(node, ins)
        if op == "AveragePool":
            return self.avgpool_unit(node, ins)
        raise self.unsupported(node)

    # a mixture-of-experts layer (the exported MoELayer of edgemtl.model.zoo.m3vit) as one `moe` unit -----------
    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.graph.node if name in n.output), None)

    def through_reshapes(self, name: str) -> onnx.NodeProto | None:
        node = self.producer(name)
        while node is not None and node.op_type in ("Reshape", "Identity", "Squeeze", "Unsqueeze"):
            node = self.producer(node.input[0])
        return node

    def linear(self, node: onnx.NodeProto, add: onnx.NodeProto | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(weight (out, in), bias (out,)) of a Gemm, or of a MatMul by a constant (its bias the constant of the
        Add that follows it, if given)."""
        weight = self.inits[node.input[1]].astype(np.float64)
        if node.op_type == "MatMul":
            bias = np.zeros(weight.shape[1])
            if add is not None:
                constant = next(i for i in add.input if i in self.inits)
                bias = np.broadcast_to(self.inits[constant].astype(np.float64).reshape(-1), bias.shape)
            return weight.T, bias
        if not self.attr(node, "transB", 0):
            weight = weight.T
        bias = np.zeros(len(weight))
        if len(node.input) > 2 and node.input[2]:
            bias = np.broadcast_to(self.inits[node.input[2]].astype(np.float64).reshape(-1), (len(weight),)) * self.attr(
                node, "beta", 1.0)
        return weight * self.attr(node, "alpha", 1.0), bias

    def moe_unit(self, topk: onnx.NodeProto) -> _Unit:
        """The router (its task embedding folded into the bias), top-k, gates, and each expert's fc1 -> GELU -> fc2,
        from the ONNX nodes the exporter writes for one MoE layer: every node computed from the layer's input alone."""
        router = self.through_reshapes(topk.input[0])
        if router is None or router.op_type not in ("Gemm", "MatMul") or router.input[1] not in self.inits:
            raise self.unsupported(topk, "top-k over something other than a router's constant-weight logits")
        weight, bias = self.linear(router)
        source = self.through_reshapes(router.input[0])
        x = router.input[0] if source is None else source.output[0]
        if source is not None and source.op_type == "Concat":  # the token and the task embedding (a constant)
            ins = self.activation_inputs(source)
            embedding = [self.inits[i] for i in source.input if i in self.inits]
            if len(ins) != 1 or len(embedding) != 1 or source.input[0] != ins[0]:
                raise self.unsupported(source, "a router input other than [token, task embedding]")
            x, task = ins[0], embedding[0].reshape(-1, embedding[0].shape[-1])
            if not np.allclose(task, task[:1]):
                raise self.unsupported(source, "a task embedding that differs between tokens")
            d = self.shapes[x][-1]
            weight, bias = weight[:, :d], bias + weight[:, d:] @ task[0].astype(np.float64)
        layer, inside, constant = [], {x}, set(self.inits)
        for node in self.graph.node:   # every node computed from x alone (constants aside) is the layer
            reads = [i for i in node.input if i and i not in constant]
            if not reads:
                constant.update(node.output)
            elif all(i in inside for i in reads):
                layer.append(node)
                inside.update(node.output)
        leaving = {o for n in layer for o in n.output
                   if o == self.output or any(u not in layer for u in self.consumers.get(o, []))}
        if len(leaving) != 1:
            raise self.unsupported(topk, f"an MoE layer with {len(leaving)} outputs")
        output = leaving.pop()
        linears = [n for n in layer if n.op_type in ("Gemm", "MatMul") and n is not router
                   and n.input[1] in self.inits]
        if len(linears) % 2 or not linears:
            raise self.unsupported(topk, "experts that are not two linear layers each")
        experts: dict[int, dict[str, Any]] = {}
        for fc1, fc2 in zip(linears[::2], linears[1::2]):
            index = self.expert_index(fc1, layer)
            chain = self.region_nodes(self.consumers[fc1.output[0]][0], fc1.output[0])
            if chain[-1].output[0] != fc2.input[0]:
                raise self.unsupported(fc1, "an expert whose activation is not one elementwise function")
            experts[index] = {"fc1": self.linear(fc1), "fc2": self.linear(fc2), "chain": chain,
                              "tensors": [fc1.output[0], fc2.input[0], fc2.output[0]]}
        if sorted(experts) != list(range(len(weight))):
            raise self.unsupported(topk, f"experts {sorted(experts)} for a router of {len(weight)} outputs")
        table = region(experts[0]["chain"], experts[0]["tensors"][0], self.inits, [1])
        if isinstance(table, str):
            raise self.unsupported(experts[0]["chain"][0], table)
        k = self.inits.get(topk.input[1])
        if k is None:
            raise self.unsupported(topk, "k computed at run time")
        return _Unit("moe", topk.name, [x], output, onnx=layer, table=table,
                     attrs={"router": (weight, bias), "logits": topk.input[0], "top_k": int(k.reshape(-1)[0]),
                            "experts": [experts[e] for e in sorted(experts)]})

    def expert_index(self, fc1: onnx.NodeProto, layer: list[onnx.NodeProto]) -> int:
        """Which router output an expert serves: the constant column its token selection reads."""
        seen, todo = set(), [fc1.input[0]]
        members = {o for n in layer for o in n.output}
        while todo:
            name = todo.pop()
            node = self.producer(name) if name in members else None
            if node is None or name in seen:
                continue
            seen.add(name)
            if node.op_type == "Gather" and node.input[1] in self.inits and self.inits[node.input[1]].size == 1:
                return int(self.inits[node.input[1]].reshape(-1)[0])
            todo += [i for i in node.input if i]
        raise self.unsupported(fc1, "an expert whose router column edgemtl cannot find")

    def region_nodes(self, first: onnx.NodeProto, x: str) -> list[onnx.NodeProto]:
        """`first` and the elementwise nodes after it that compute from `x` alone, as long as only the last one's
        output is read outside them (the chain GELU, SiLU, HardSwish ... export as)."""
        chain, known = [first], {x, first.output[0]}
        order = list(self.graph.node)
        for node in order[order.index(first) + 1:]:
            reads = self.activation_inputs(node)
            if (node.op_type in ELEMENTWISE_OPS and reads and set(reads) <= known and set(reads) - {x}
                    and all(i in self.inits or i in known for i in node.input if i)):
                chain.append(node)
                known.add(node.output[0])
        # keep the longest prefix whose intermediate values all stay inside it
        for end in range(len(chain), 0, -1):
            inside = {n.output[0] for n in chain[:end]}
            last = chain[end - 1].output[0]
            if all(t == last or (t != self.output and all(u.output[0] in inside for u in self.consumers.get(t, [])))
                   for t in inside):
                return chain[:end]
        return [first]

    def lut_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        """Elementwise nodes of one activation (and constants) as one table (`edgemtl.passes.elementwise`); an
        addition of a constant that varies along more than the channels is an `add_const`."""
        if len(set(ins)) != 1:
            raise self.unsupported(node, "more than one input computed at run time")
        chain = self.region_nodes(node, ins[0])
        form = region(chain, ins[0], self.inits, self.sample_shape(ins[0]))
        if isinstance(form, str) and len(chain) > 1:
            chain = [node]
            form = region(chain, ins[0], self.inits, self.sample_shape(ins[0]))
        if isinstance(form, str):
            if node.op_type in ("Add", "Sub") and node.input[0] == ins[0] and node.input[1] in self.inits:
                return self.add_const_unit(node, ins)
            raise self.unsupported(node, form)
        return _Unit("lut", node.name, ins[:1], chain[-1].output[0], onnx=chain, table=form)

    def add_const_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        """x + c for a constant c of the sample's shape (a position embedding)."""
        shape = self.sample_shape(ins[0])
        constant = self.inits[node.input[1]].astype(np.float64) * (-1.0 if node.op_type == "Sub" else 1.0)
        try:
            full = np.broadcast_to(constant, (1, *shape)).reshape(shape)
        except ValueError:
            raise self.unsupported(node, f"a constant of shape {list(constant.shape)} against {shape}") from None
        if self.sample_shape(node.output[0]) != shape:
            raise self.unsupported(node, "the constant broadcasts the activation to a larger shape")
        return _Unit("add_const", node.name, ins, node.output[0], onnx=[node], attrs={"constant": full})

    def matmul_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        """A product of two activations (attention's scores and context): (..., M, K) @ (..., K, N)."""
        a, b = (self.sample_shape(name) for name in node.input)
        if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise self.unsupported(node, f"shapes {a} @ {b}: only equal leading axes, no broadcasting")
        return _Unit("matmul", node.name, list(node.input), node.output[0], onnx=[node])

    def transpose_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        """A permutation of axes. Axes of size 1 (the batch among them) carry no data: the permutation of the others
        on the input viewed without them is the copy to make."""
        full = self.shapes[ins[0]]
        perm = list(self.attr(node, "perm", list(range(len(full)))[::-1]))
        kept = [a for a in range(len(full)) if full[a] != 1]
        moved = [kept.index(a) for a in perm if full[a] != 1]
        view = [full[a] for a in kept] or [1]
        if not moved:
            moved = [0]
        kind = "alias" if moved == sorted(moved) else "transpose"
        if kind == "alias":
            return _Unit("flatten", node.name, ins, node.output[0], onnx=[node])
        return _Unit(kind, node.name, ins, node.output[0], onnx=[node], attrs={"view": view, "perm": moved})

    def constant_ints(self, node: onnx.NodeProto, index: int, attr: str) -> list[int] | None:
        if len(node.input) > index and node.input[index]:
            if node.input[index] not in self.inits:
                raise self.unsupported(node, "positions computed at run time")
            return [int(v) for v in np.asarray(self.inits[node.input[index]]).reshape(-1)]
        value = self.attr(node, attr)
        return None if value is None else [int(v) for v in np.atleast_1d(value)]

    def slice_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        """Gather of constant, consecutive indices or a Slice with step 1 along one axis: a copy of a range."""
        x = ins[0]
        size = lambda axis: self.shapes[x][axis % len(self.shapes[x])]  # noqa: E731
        if node.op_type == "Gather":
            if node.input[1] not in self.inits:
                raise self.unsupported(node, "indices computed at run time")
            axis = int(self.attr(node, "axis", 0))
            index = np.asarray(self.inits[node.input[1]]).reshape(-1) % size(axis)
            if len(index) == 0 or np.any(np.diff(index) != 1):
                raise self.unsupported(node, "indices that are not one consecutive range")
            start, stop = int(index[0]), int(index[-1]) + 1
        else:
            starts, ends = self.constant_ints(node, 1, "starts"), self.constant_ints(node, 2, "ends")
            axes = self.constant_ints(node, 3, "axes") or list(range(len(starts or [])))
            steps = self.constant_ints(node, 4, "steps") or [1] * len(axes)
            sliced = [(a, s, e) for a, s, e, st in zip(axes, starts or [], ends or [], steps)
                      if not (st == 1 and min(max(s if s >= 0 else s + size(a), 0), size(a)) == 0 and e >= size(a))]
            if len(sliced) != 1 or any(st != 1 for st in steps):
                raise self.unsupported(node, "not a step-1 slice along one axis")
            axis, start, stop = sliced[0]
            n = size(axis)
            start, stop = (min(max(v if v >= 0 else v + n, 0), n) for v in (start, stop))
        return _Unit("slice", node.name, ins[:1], node.output[0], onnx=[node],
                     attrs={"axis": self.sample_axis(node, x, axis), "start": start, "stop": stop})

    def split_units(self, node: onnx.NodeProto) -> list[_Unit]:
        if not node.name:
            node.name = f"Split:{node.output[0]}"
        ins = self.activation_inputs(node)
        x = node.input[0]
        if ins != [x]:
            raise self.unsupported(node, "sizes computed at run time")
        axis = int(self.attr(node, "axis", 0))
        total = self.shapes[x][axis % len(self.shapes[x])]
        sizes = self.constant_ints(node, 1, "split") or [total // len(node.output)] * len(node.output)
        units, start = [], 0
        for k, (out, size) in enumerate(zip(node.output, sizes)):
            if out:
                units.append(_Unit("slice", f"{node.name}/{k}", [x], out, onnx=[node],
                                   attrs={"axis": self.sample_axis(node, x, axis), "start": start, "stop": start + size}))
            start += size
        return units

    def reduce_mean_unit(self, node: onnx.NodeProto, ins: list[str], axes: list[int]) -> _Unit:
        """A mean over consecutive axes of a sample (the tokens of a ViT, whatever layout): the sample viewed as
        (outer, n, inner), summed over n."""
        shape = self.sample_shape(ins[0])
        sample_axes = sorted(self.sample_axis(node, ins[0], a) for a in axes)
        if sample_axes != list(range(sample_axes[0], sample_axes[-1] + 1)):
            raise self.unsupported(node, "a mean over axes that are not consecutive")
        first, last = sample_axes[0], sample_axes[-1] + 1
        view = [int(np.prod(shape[:first])), int(np.prod(shape[first:last])), int(np.prod(shape[last:]))]
        return _Unit("reduce_mean", node.name, ins[:1], node.output[0], onnx=[node], attrs={"view": view})

    def layernorm_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        shape = self.sample_shape(ins[0])
        if self.sample_axis(node, ins[0], int(self.attr(node, "axis", -1))) != len(shape) - 1:
            raise self.unsupported(node, "normalised over more than the last axis")
        if len(ins) != 1 or any(len(node.output) > k and node.output[k] for k in (1, 2)):
            raise self.unsupported(node, "scale / bias computed at run time, or mean / deviation outputs read")
        if shape[-1] > 4096:
            raise self.unsupported(node, f"{shape[-1]} features: the integer kernel takes at most 4096")
        return _Unit("layernorm", node.name, ins, node.output[0], onnx=[node])

    def pool_attrs(self, node: onnx.NodeProto) -> dict[str, list[int]]:
        """Kernel, stride and explicit [top, left, bottom, right] pads. A max pool in ceil mode (Caffe's pools, as in
        MTCNN) gets the rows and columns its last window reaches past the input as end padding: padding never wins
        a max, and ONNX drops a last window that would start in the padding, so floor mode over the padded input is
        ceil mode (checked against the graph's own output shape)."""
        kernel, stride = list(self.attr(node, "kernel_shape")), list(self.attr(node, "strides", [1, 1]))
        pads = list(self.attr(node, "pads", [0, 0, 0, 0]))
        if self.attr(node, "ceil_mode", 0):
            size, out = self.shapes[node.input[0]][2:], self.shapes[node.output[0]][2:]
            for axis in (0, 1):
                reach = (out[axis] - 1) * stride[axis] + kernel[axis]
                pads[axis + 2] += max(0, reach - (size[axis] + pads[axis] + pads[axis + 2]))
                if (size[axis] + pads[axis] + pads[axis + 2] - kernel[axis]) // stride[axis] + 1 != out[axis]:
                    raise self.unsupported(node, f"ceil_mode with output {out} from {size}")
        return {"kernel": kernel, "stride": stride, "pads": pads}

    def avgpool_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        pads = list(self.attr(node, "pads", [0, 0, 0, 0]))
        if (self.attr(node, "auto_pad", "NOTSET") != "NOTSET" or self.attr(node, "ceil_mode", 0)
                or any(d != 1 for d in self.attr(node, "dilations", [1, 1])) or len(self.shapes[ins[0]]) != 4):
            raise self.unsupported(node, "ceil_mode / auto_pad / dilation, or not 2-D")
        if any(pads) and not self.attr(node, "count_include_pad", 0):
            raise self.unsupported(node, "padding not counted in the mean (count_include_pad=0): the divisor would "
                                         "vary at the border; pad explicitly or use count_include_pad=True")
        return _Unit("avgpool", node.name, ins, node.output[0], onnx=[node])

    def conv_transpose_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        """A learnt upsampling (kernel == stride, no padding, one group): each input pixel makes its own block."""
        if len(ins) != 1 or node.input[1] not in self.inits or len(self.inits[node.input[1]].shape) != 4:
            raise self.unsupported(node, "weights computed at run time")
        kernel = list(self.inits[node.input[1]].shape[2:])
        strides, pads = list(self.attr(node, "strides", [1, 1])), list(self.attr(node, "pads", [0, 0, 0, 0]))
        if (strides != kernel or any(pads) or any(self.attr(node, "output_padding", [0, 0]))
                or self.attr(node, "group", 1) != 1 or any(d != 1 for d in self.attr(node, "dilations", [1, 1]))
                or self.attr(node, "auto_pad", "NOTSET") != "NOTSET" or self.attr(node, "output_shape") is not None):
            raise self.unsupported(node, f"kernel {kernel} with strides {strides}, pads {pads}: only kernel == stride, "
                                         "no padding, one group")
        return _Unit("conv_transpose", node.name, ins, node.output[0], onnx=[node])

    def resize_unit(self, node: onnx.NodeProto, ins: list[str]) -> _Unit:
        (_, c, h, w), (_, c2, h2, w2) = self.shapes[ins[0]], self.shapes[node.output[0]]
        factor = h2 // h if h else 0
        if c != c2 or factor < 1 or h2 != h * factor or w2 != w * factor:
            raise self.unsupported(node, f"not an integer upsampling ({h}x{w} -> {h2}x{w2})")
        mode, coords = self.attr(node, "mode", "nearest"), self.attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode == "linear" and (coords == "half_pixel" or (coords == "pytorch_half_pixel" and h2 > 1 and w2 > 1)):
            return _Unit("resize_bilinear", node.name, ins, node.output[0], onnx=[node])
        if mode == "nearest" and coords == "asymmetric" and self.attr(node, "nearest_mode", "round_prefer_floor") == "floor":
            return _Unit("resize_nearest", node.name, ins, node.output[0], onnx=[node])
        if mode == "nearest" and factor == 1:
            return _Unit("alias", node.name, ins, node.output[0], onnx=[node])
        raise self.unsupported(node, f"mode {mode!r} with {coords!r} coordinates")


# -- calibration -------------------------------------------------------------------------------------------
def _probe(model: onnx.ModelProto, tensors: list[str]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """One image (C, H, W) -> the float values of `tensors` (and the input) in ONNX Runtime, unoptimised."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in present and t != probe.graph.input[0].name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]

    def run(image: np.ndarray) -> dict[str, np.ndarray]:
        return {input_name: image[None], **dict(zip(names, session.run(names, {input_name: image[None]})))}

    return run


def _calibration_values(model: onnx.ModelProto, images: np.ndarray, tensors: list[str], config: Int8Config
                        ) -> dict[str, tuple[np.ndarray, float]]:
    """Per tensor: a seeded subset of its float values over the images, and the exact max |x|."""
    run = _probe(model, tensors)
    rng = np.random.default_rng(config.seed)
    per_image = max(1, config.values_per_tensor // len(images))
    kept: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    peak = dict.fromkeys(tensors, 0.0)
    for image in images:
        results = run(image)
        for t in tensors:
            flat = results[t].reshape(-1)
            if not flat.size:   # an expert no token of this image was routed to
                continue
            peak[t] = max(peak[t], float(np.abs(flat).max()))
            kept[t].append(flat if flat.size <= per_image else rng.choice(flat, per_image, replace=False))
    return {t: (np.concatenate([np.zeros(0), *kept[t]]).astype(np.float32), peak[t]) for t in tensors}


def layer_sqnr(model: onnx.ModelProto, graph: IntGraph, images: np.ndarray) -> dict[str, float]:
    """Per integer node whose output is a tensor of the float graph: the SQNR (dB) of its dequantized output against
    that float tensor on real images, the error every layer up to it has added (where a path loses accuracy)."""
    known = {t.name for t in [*model.graph.value_info, *model.graph.output]}
    nodes = [n for n in graph.nodes if n.output in known]
    run = _probe(model, [n.output for n in nodes])
    q = quantize_input(graph, images.astype(np.float64))
    ints = run_reference(graph, q, keep_all=True)
    floats = [run(image) for image in images]
    sqnr = {}
    for node in nodes:
        want = np.stack([f[node.output].reshape(-1) for f in floats]).astype(np.float64)
        got = ints[node.output].reshape(len(images), -1) * graph.tensors[node.output].scale
        noise = float(((want - got) ** 2).mean())
        sqnr[node.name] = round(10 * np.log10(float((want**2).mean()) / noise), 2) if noise > 0 else float("inf")
    return sqnr


def choose_scale(values: np.ndarray, peak: float, dtype: str, config: Int8Config) -> float:
    """The activation scale of one tensor from its calibration values (see `Int8Config.scale_method`)."""
    lo, hi = RANGES[dtype]
    if peak <= 0.0:
        return 1.0 / hi
    if config.scale_method == "max":
        return peak / hi
    magnitude = np.abs(values)
    if config.scale_method == "percentile":
        return max(float(np.percentile(magnitude, config.percentile)), peak * 1e-3) / hi
    candidates = {peak * f for f in np.linspace(0.25, 1.0, 31)}
    candidates |= {float(np.percentile(magnitude, p)) for p in (99.0, 99.9, 99.99, 99.999)}
    best, best_error = peak, np.inf
    for clip in sorted(c for c in candidates if c > 0):
        scale = clip / hi
        error = float(np.mean((np.clip(np.rint(values / scale), lo, hi) * scale - values) ** 2))
        if error < best_error:
            best, best_error = clip, error
    return best / hi


# -- requantisation parameters --------------------------------------------------------------------------------
FLOAT32_EXACT = 2**24  # integers above this are not all representable in float32 (Deeploy's constant storage)


def choose_requant(multiplier: np.ndarray, acc_max: np.ndarray, bias_q: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """mul, add (= bias_q * mul) and the one shift with mul / 2**shift ~ multiplier per channel.

    The largest shift (most precise mul) for which acc_max * |mul| + |add| + 2**(shift-1) stays within
    int32 for every channel, and mul, add + 2**(shift-1) stay below 2**24: Deeploy's integer ONNX stores
    them as float32, exact only up to there. If not even shift 0 fits, the shift-0 values come back and
    `check_int32` (or the Deeploy export) names the layer.
    """
    multiplier = np.asarray(multiplier, dtype=np.float64)
    bias = np.zeros(multiplier.shape, dtype=np.int64) if bias_q is None else bias_q.astype(np.int64)
    for shift in range(31, -1, -1):
        mul = np.rint(multiplier * 2.0**shift).astype(np.int64)
        add = bias * mul
        rounding = 1 << max(shift - 1, 0)
        exact_in_float32 = np.abs(mul).max() < FLOAT32_EXACT and np.abs(add).max() + rounding < FLOAT32_EXACT
        if exact_in_float32 and (acc_max * np.abs(mul) + np.abs(add)).max() + rounding <= INT32[1]:
            return mul, add, shift
    return mul, add, 0


def _int32(values: np.ndarray) -> np.ndarray:
    """int32 where the values fit; else kept wide, so that `check_int32` sees (and names) the overflow."""
    return values.astype(np.int32) if values.min() >= INT32[0] and values.max() <= INT32[1] else values.astype(np.int64)


def _int8_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights with one scale per output (the first axis), and those scales."""
    flat = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1).astype(np.float64)
    fallback = flat.max() / 127 if flat.max() > 0 else 1.0
    s_w = np.where(flat > 0, flat / 127, fallback)
    return np.clip(np.rint(weight / s_w.reshape(-1, *[1] * (weight.ndim - 1))), -127, 127).astype(np.int8), s_w


def _mul_bits(mul: np.ndarray) -> int:
    return int(np.abs(mul).max()).bit_length() if mul.size else 0


# -- pass 2 + 3: scales, then integer nodes ------------------------------------------------------------------
class _Builder:
    def __init__(self, conv: _Converter, units: list[_Unit]) -> None:
        self.c = conv
        self.units = units
        self.producer = {u.output: u for u in units}
        self.q: dict[str, tuple[str, float]] = {}        # ONNX tensor -> (dtype, scale)
        self.retarget: dict[str, tuple[str, float]] = {}  # unit output -> (dtype, scale) a concat wants
        self.pooled: set[str] = set()                     # ONNX (C,1,1) tensors that are (C,) here

    def nonneg(self, tensor: str) -> bool:
        unit = self.producer.get(tensor)
        if unit is None:
            return False
        if unit.relu or unit.kind in ("lut", "softmax") and self.q.get(unit.output, ("",))[0] == "uint8":
            return True
        if unit.kind in (*_MOVES, "resize_bilinear", "avgpool_global", "avgpool", "reduce_mean", "concat"):
            return all(self.nonneg(i) for i in unit.inputs)
        return False

    def needs_calibration(self) -> list[str]:
        inside = [t for u in self.units if u.kind == "moe"
                  for t in [u.attrs["logits"], *(name for e in u.attrs["experts"] for name in e["tensors"])]]
        return [self.c.input] + [u.output for u in self.units
                                 if u.kind in _CALIBRATED or u.kind == "lut" and u.table.fixed is None] + inside

    def decide_scales(self, stats: dict[str, tuple[np.ndarray, float]], config: Int8Config) -> None:
        self.stats, self.config = stats, config   # an MoE layer's inner scales are chosen as it is emitted
        self.q[self.c.input] = ("int8", choose_scale(*stats[self.c.input], "int8", config))
        users: dict[str, int] = {}
        for unit in self.units:
            for i in unit.inputs:
                users[i] = users.get(i, 0) + 1
        for unit in self.units:
            source = self.q[unit.inputs[0]]
            if unit.kind in _MOVES or unit.kind == "resize_bilinear":
                self.q[unit.output] = source
            elif unit.kind == "lut":  # a bounded function's range fixes the output scale; others are calibrated
                if unit.table.fixed is not None:
                    self.q[unit.output] = unit.table.fixed
                else:
                    dtype = "uint8" if unit.table.nonnegative(*source) else "int8"
                    self.q[unit.output] = (dtype, choose_scale(*stats[unit.output], dtype, config))
            elif unit.kind == "concat":
                dtype = "uint8" if all(self.nonneg(i) for i in unit.inputs) else "int8"
                top = RANGES[dtype][1]
                self.q[unit.output] = (dtype, max(RANGES[self.q[i][0]][1] * self.q[i][1] for i in unit.inputs) / top)
                for i in unit.inputs:
                    producer = self.producer.get(i)
                    if (producer is not None and producer.kind not in (*_MOVES, "concat") and users[i] == 1
                            and i != self.c.output):
                        self.retarget[i] = self.q[unit.output]
            else:
                pooled_nonneg = unit.kind in ("avgpool_global", "avgpool", "reduce_mean") and self.nonneg(unit.inputs[0])
                dtype = "uint8" if unit.relu or pooled_nonneg or unit.kind == "softmax" else "int8"
                self.q[unit.output] = (dtype, choose_scale(*stats[unit.output], dtype, config))
        # a retargeted output changes no other tensor's scale: it has a single consumer, the concatenation
        self.q.update(self.retarget)

    # emission --------------------------------------------------------------------------------------------------
    def build(self) -> IntGraph:
        c = self.c
        tensors = {c.input: TensorInfo(c.input, c.sample_shape(c.input), *self.q[c.input])}
        graph = IntGraph(c.task, c.input, "", tensors, [])
        self.names: dict[str, str] = {c.input: c.input}   # ONNX tensor -> IntGraph tensor
        for unit in self.units:
            getattr(self, f"emit_{unit.kind}")(graph, unit)
        graph.output = self.names[c.output]
        return graph

    def new_tensor(self, graph: IntGraph, name: str, shape: list[int], dtype: str, scale: float) -> str:
        graph.tensors[name] = TensorInfo(name, list(shape), dtype, float(scale))  # type: ignore[arg-type]
        return name

    def source(self, unit: _Unit, index: int = 0) -> str:
        tensor = unit.inputs[index]
        if tensor in self.pooled and unit.kind not in ("flatten", "alias", "gemm"):
            raise self.c.unsupported(unit.onnx[0], "it reads a globally pooled tensor as a feature map")
        return self.names[tensor]

    def output(self, graph: IntGraph, unit: _Unit, shape: list[int] | None = None) -> str:
        dtype, scale = self.q[unit.output]
        self.names[unit.output] = unit.output
        return self.new_tensor(graph, unit.output, shape or self.c.sample_shape(unit.output), dtype, scale)

    def requant_node(self, graph: IntGraph, unit: _Unit, op: str, inputs: list[str], out: str,
                     multiplier: np.ndarray, extra_attrs: dict[str, Any] | None = None) -> None:
        node = Node(unit.name, op, inputs, out, dict(extra_attrs or {}))
        channels = 1 if op in PER_TENSOR else graph.tensors[out].shape[0]
        node.params = {"mul": np.ones(channels, np.int32), "add": np.zeros(channels, np.int32)}
        acc_max = worst_case_accumulator(node, graph.tensors)
        mul, add, shift = choose_requant(np.broadcast_to(multiplier, (channels,)), acc_max)
        node.params = {"mul": _int32(mul), "add": _int32(add)}
        node.attrs["shift"] = shift
        graph.nodes.append(node)

    def weighted(self, graph: IntGraph, unit: _Unit, op: str, weight: np.ndarray, bias: np.ndarray,
                 attrs: dict[str, Any], shape: list[int] | None = None) -> None:
        x = self.source(unit)
        s_in = graph.tensors[x].scale
        out = self.output(graph, unit, shape)
        s_out = graph.tensors[out].scale
        w_q, s_w = _int8_weights(weight)
        bias_q = np.rint(bias.astype(np.float64) / (s_in * s_w)).astype(np.int64)
        node = Node(unit.name, op, [x], out, dict(attrs), {"weight": w_q})
        acc_max = worst_case_accumulator(node, graph.tensors)
        mul, add, shift = choose_requant(s_in * s_w / s_out, acc_max, bias_q)
        node.params.update(mul=_int32(mul), add=_int32(add))
        node.attrs["shift"] = shift
        graph.nodes.append(node)

    def emit_conv(self, graph: IntGraph, unit: _Unit) -> None:
        node = unit.onnx[0]
        weight = self.c.inits[node.input[1]].astype(np.float64)
        bias = self.c.inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(len(weight))
        attrs = {"stride": list(self.c.attr(node, "strides", [1, 1])), "pads": list(self.c.attr(node, "pads", [0, 0, 0, 0])),
                 "groups": int(self.c.attr(node, "group", 1))}
        self.weighted(graph, unit, "conv", weight, bias, attrs)

    def emit_conv_transpose(self, graph: IntGraph, unit: _Unit) -> None:
        node = unit.onnx[0]
        weight = self.c.inits[node.input[1]].astype(np.float64).transpose(1, 0, 2, 3)  # (k, c, kh, kw): per output
        bias = self.c.inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(len(weight))
        self.weighted(graph, unit, "conv_transpose", weight, bias, {"stride": list(weight.shape[2:])})

    def emit_lut(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        source, info = graph.tensors[x], graph.tensors[out]
        table = unit.table.table(source.dtype, source.scale, info.dtype, info.scale)
        graph.nodes.append(Node(unit.name, "lut", [x], out, {"function": unit.table.op}, {"table": table}))

    def emit_gemm(self, graph: IntGraph, unit: _Unit) -> None:
        node = unit.onnx[0]
        fused_add = unit.onnx[1] if len(unit.onnx) > 1 and unit.onnx[1].op_type == "Add" else None
        weight, bias = self.c.linear(node, fused_add)
        x = self.names[unit.inputs[0]]
        rows = graph.tensors[x].shape
        if rows[-1] != weight.shape[1] or len(rows) > 1 and unit.inputs[0] in self.pooled:
            raise self.c.unsupported(node, f"it reads a {rows} tensor with {weight.shape[1]} weights per output")
        self.weighted(graph, unit, "gemm", weight, bias, {}, shape=[*rows[:-1], len(weight)])

    def emit_matmul(self, graph: IntGraph, unit: _Unit) -> None:
        a, b = self.source(unit, 0), self.source(unit, 1)
        out = self.output(graph, unit)
        scales = graph.tensors[a].scale * graph.tensors[b].scale / graph.tensors[out].scale
        self.requant_node(graph, unit, "matmul", [a, b], out, np.asarray([scales]))

    def emit_add_const(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        s_in, s_out = graph.tensors[x].scale, graph.tensors[out].scale
        constant = unit.attrs["constant"]
        node = Node(unit.name, "add_const", [x], out, {}, {"mul": np.ones(1, np.int32), "add": np.zeros(1, np.int32)})
        for shift in range(31, -1, -1):
            node.attrs = {"mul_a": int(round(s_in / s_out * 2**shift)), "shift": shift}
            node.params["constant"] = np.rint(constant / s_out * 2**shift).astype(np.int64)
            acc_max = worst_case_accumulator(node, graph.tensors)
            if acc_max.max() + (1 << max(shift - 1, 0)) <= INT32[1]:
                break
        node.params["constant"] = _int32(node.params["constant"])
        graph.nodes.append(node)

    def emit_layernorm(self, graph: IntGraph, unit: _Unit) -> None:
        node = unit.onnx[0]
        x = self.source(unit)
        out = self.output(graph, unit)
        s_in, s_out = graph.tensors[x].scale, graph.tensors[out].scale
        d = graph.tensors[x].shape[-1]
        gamma = self.c.inits[node.input[1]].astype(np.float64).reshape(-1)
        beta = (self.c.inits[node.input[2]].astype(np.float64).reshape(-1) if len(node.input) > 2 and node.input[2]
                else np.zeros(d))
        gamma, beta = np.broadcast_to(gamma, (d,)), np.broadcast_to(beta, (d,))
        epsilon = float(self.c.attr(node, "epsilon", 1e-5))
        eps = max(1, int(round(d**3 * epsilon / s_in**2)))
        # y / s_out = z * gamma * sqrt(D) / (2**16 * s_out) + beta / s_out; beta rides in add as bias * mul
        multiplier = gamma * np.sqrt(d) / (2.0**LAYERNORM_Z_BITS * s_out)
        node_q = Node(unit.name, "layernorm", [x], out, {"eps": eps})
        node_q.params = {"mul": np.ones(d, np.int32), "add": np.zeros(d, np.int32)}
        acc_max = worst_case_accumulator(node_q, graph.tensors)
        shift = 31
        while shift > 0:   # the most precise shift at which z * mul + add stays in int32 (beta is not a bias * mul)
            mul, add = np.rint(multiplier * 2.0**shift), np.rint(beta / s_out * 2.0**shift)
            if (acc_max * np.abs(mul) + np.abs(add)).max() + (1 << (shift - 1)) <= INT32[1]:
                break
            shift -= 1
        mul, add = np.rint(multiplier * 2.0**shift).astype(np.int64), np.rint(beta / s_out * 2.0**shift).astype(np.int64)
        node_q.params = {"mul": _int32(mul), "add": _int32(add)}
        node_q.attrs["shift"] = shift
        graph.nodes.append(node_q)

    def shared_scale(self, tensors: list[str]) -> float:
        """One int8 scale for several tensors (every expert's copy of one stage: one table serves them all)."""
        values = np.concatenate([self.stats[t][0] for t in tensors])
        return choose_scale(values, max(self.stats[t][1] for t in tensors), "int8", self.config)

    def quantized_linear(self, weight: np.ndarray, bias: np.ndarray, s_in: float, s_out: float,
                         in_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """int8 weights per output row, and mul / add / shift taking their int32 sums to s_out."""
        w_q, s_w = _int8_weights(weight)
        bias_q = np.rint(bias / (s_in * s_w)).astype(np.int64)
        acc_max = np.abs(w_q.astype(np.int64)).sum(axis=1) * in_max
        mul, add, shift = choose_requant(s_in * s_w / s_out, acc_max, bias_q)
        return w_q, _int32(mul), _int32(add), shift

    def emit_moe(self, graph: IntGraph, unit: _Unit) -> None:
        """The router, the gates and every expert at int8 (module docstring of intgraph: `moe`)."""
        x = self.source(unit)
        if graph.tensors[x].dtype != "int8":
            raise self.c.unsupported(unit.onnx[0], "an MoE layer whose input is unsigned")
        out = self.output(graph, unit)
        s_x, s_out, experts = graph.tensors[x].scale, graph.tensors[out].scale, unit.attrs["experts"]
        s_logits = self.shared_scale([unit.attrs["logits"]])
        s_h, s_a, s_y = (self.shared_scale([e["tensors"][i] for e in experts]) for i in range(3))
        router, router_mul, router_add, router_shift = self.quantized_linear(*unit.attrs["router"], s_x, s_logits, 128)
        stages: dict[str, list[np.ndarray]] = {key: [] for key in
                                               ("fc1", "fc1_mul", "fc1_add", "fc1_shift", "fc2", "fc2_mul", "fc2_add",
                                                "fc2_shift")}
        for expert in experts:
            for stage, s_in, s_stage in (("fc1", s_x, s_h), ("fc2", s_a, s_y)):
                w, mul, add, shift = self.quantized_linear(*expert[stage], s_in, s_stage, 128)
                for key, value in ((stage, w), (f"{stage}_mul", mul), (f"{stage}_add", add),
                                   (f"{stage}_shift", np.int32(shift))):
                    stages[key].append(value)
        top_k = unit.attrs["top_k"]
        mul, add, shift = choose_requant(np.array([s_y / (255 * s_out)]), np.array([top_k * 255 * 128]))
        params = {"router": router, "router_mul": router_mul, "router_add": router_add,
                  "exp": softmax_exp_table(s_logits), "gelu": unit.table.table("int8", s_h, "int8", s_a),
                  **{key: np.stack(values).astype(np.int8 if key in INT8_PARAMS else np.int32)
                     for key, values in stages.items()},
                  "mul": _int32(mul), "add": _int32(add)}
        attrs = {"top_k": top_k, "router_shift": router_shift, "p": 255 << 16, "shift": shift}
        graph.nodes.append(Node(unit.name, "moe", [x], out, attrs, params))

    def emit_softmax(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        s_in, s_out = graph.tensors[x].scale, graph.tensors[out].scale
        attrs = {"axis": unit.attrs["axis"], "p": int(round(2.0**16 / s_out))}
        graph.nodes.append(Node(unit.name, "softmax", [x], out, attrs, {"exp": softmax_exp_table(s_in)}))

    def emit_avgpool(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        attrs = self.c.pool_attrs(unit.onnx[0])
        kh, kw = attrs["kernel"]
        multiplier = graph.tensors[x].scale / (kh * kw * graph.tensors[out].scale)
        self.requant_node(graph, unit, "avgpool", [x], out, np.asarray(multiplier), attrs)

    def emit_reduce_mean(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        _, n, _ = unit.attrs["view"]
        multiplier = graph.tensors[x].scale / (n * graph.tensors[out].scale)
        self.requant_node(graph, unit, "reduce_mean", [x], out, np.asarray([multiplier]), dict(unit.attrs))

    def emit_transpose(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "transpose", [x], out, dict(unit.attrs)))

    def emit_slice(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "slice", [x], out, dict(unit.attrs)))

    def emit_add(self, graph: IntGraph, unit: _Unit) -> None:
        a, b = self.source(unit, 0), self.source(unit, 1)
        out = self.output(graph, unit)
        sa, sb, so = graph.tensors[a].scale, graph.tensors[b].scale, graph.tensors[out].scale
        node = Node(unit.name, "add", [a, b], out, {})
        channels = graph.tensors[out].shape[0]
        for shift in range(31, -1, -1):
            node.attrs = {"mul_a": int(round(sa / so * 2**shift)), "mul_b": int(round(sb / so * 2**shift)), "shift": shift}
            acc_max = worst_case_accumulator(node, graph.tensors)
            if acc_max.max() + (1 << max(shift - 1, 0)) <= INT32[1]:
                break
        node.params = {"mul": np.ones(channels, np.int32), "add": np.zeros(channels, np.int32)}
        graph.nodes.append(node)

    def emit_requant(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        self.requant_node(graph, unit, "requant", [x], out, np.asarray(graph.tensors[x].scale / graph.tensors[out].scale))

    def emit_avgpool_global(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        channels, h, w = graph.tensors[x].shape
        out = self.output(graph, unit, shape=[channels])
        keepdims = self.c.attr(unit.onnx[0], "keepdims", 1) if unit.onnx[0].op_type == "ReduceMean" else 1
        if keepdims:
            self.pooled.add(unit.output)
        multiplier = graph.tensors[x].scale / (h * w * graph.tensors[out].scale)
        self.requant_node(graph, unit, "avgpool_global", [x], out, np.asarray(multiplier))

    def emit_resize_bilinear(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        factor = graph.tensors[out].shape[1] // graph.tensors[x].shape[1]
        multiplier = graph.tensors[x].scale / (4 * factor * factor * graph.tensors[out].scale)
        self.requant_node(graph, unit, "resize_bilinear", [x], out, np.asarray(multiplier), {"factor": factor})

    def emit_resize_nearest(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        factor = graph.tensors[out].shape[1] // graph.tensors[x].shape[1]
        graph.nodes.append(Node(unit.name, "resize_nearest", [x], out, {"factor": factor}))

    def emit_maxpool(self, graph: IntGraph, unit: _Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "maxpool", [x], out, unit.attrs))

    def emit_concat(self, graph: IntGraph, unit: _Unit) -> None:
        dtype, scale = self.q[unit.output]
        inputs = []
        for k, tensor in enumerate(unit.inputs):
            name = self.source(unit, k)
            info = graph.tensors[name]
            if (info.dtype, info.scale) != (dtype, scale):
                aligned = self.new_tensor(graph, f"{unit.output}/input{k}", info.shape, dtype, scale)
                self.requant_node(graph, _Unit("requant", f"{unit.name}/requant{k}", [], aligned), "requant",
                                  [name], aligned, np.asarray(info.scale / scale))
                name = aligned
            inputs.append(name)
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "concat", inputs, out))

    def emit_flatten(self, graph: IntGraph, unit: _Unit) -> None:
        x, shape = self.names[unit.inputs[0]], self.c.sample_shape(unit.output)
        if graph.tensors[x].shape == shape:
            self.names[unit.output] = x       # already that shape here (a pooled tensor is a vector)
            return
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "flatten", [x], out, {"shape": shape} if len(shape) > 1 else {}))

    def emit_alias(self, graph: IntGraph, unit: _Unit) -> None:
        self.names[unit.output] = self.names[unit.inputs[0]]
        if unit.inputs[0] in self.pooled:
            self.pooled.add(unit.output)


# -- the pass ------------------------------------------------------------------------------------------------
def int8_predictor(graph: IntGraph) -> Predictor:
    """Normalised images -> the integer graph's dequantized output, as `evaluate` wants it."""

    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        q = quantize_input(graph, images.numpy().astype(np.float64))
        out = run_reference(graph, q)[graph.output]
        return {graph.task: torch.from_numpy(dequantize(graph, out).astype(np.float32))}

    return predict


def check_int8_ops(graph: onnx.ModelProto, task: str) -> None:
    """Raise, naming op, node and task, where the task's float graph has a layer the int8 path cannot take: the
    same checks as `build_int_graph`'s first pass, without calibrating anything (an early answer)."""
    _Converter(graph, task).units()


def build_int_graph(model: nn.Module, spec: ModelSpec, task: str, calibration: TaskData,
                    config: Int8Config = Int8Config()) -> IntGraph:
    """The task path as a validated, int32-safe integer graph (no evaluation)."""
    return _build(model, spec, task, calibration, config)[0]


def _build(model: nn.Module, spec: ModelSpec, task: str, calibration: TaskData, config: Int8Config
           ) -> tuple[IntGraph, onnx.ModelProto]:
    spec.task(task)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="edgemtl-int8-") as folder:
        onnx_model = float_graph(model, spec, task, Path(folder))
    converter = _Converter(onnx_model, task)
    units = converter.units()
    builder = _Builder(converter, units)
    images = calibration.normalise(calibration.images[:config.calibration_samples])
    stats = _calibration_values(onnx_model, images, builder.needs_calibration(), config)
    builder.decide_scales(stats, config)
    graph = builder.build()
    graph.validate()
    check_int32(graph)
    expected = spec.task(task).output_shape
    if graph.tensors[graph.output].shape != list(expected):
        raise EdgemtlError(f"task {task!r}: the integer graph outputs {graph.tensors[graph.output].shape}, "
                           f"the spec says {expected}")
    return graph, onnx_model


def quantize_int8(model: nn.Module, spec: ModelSpec, task: str, calibration: TaskData, val: TaskData,
                  config: Int8Config = Int8Config()) -> tuple[IntGraph, Int8Record]:
    """Quantize one task path to an integer graph; score float and int8 on `val` with the task's metrics."""
    start = time.perf_counter()
    task_spec = spec.task(task)
    graph, onnx_model = _build(model, spec, task, calibration, config)
    sqnr = layer_sqnr(onnx_model, graph, val.normalise(val.images[:SQNR_SAMPLES]))

    def float_predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {task: run_task(model, images, task)}

    metric_float = evaluate(float_predict, [task_spec], val, config.eval_batch_size)[task]
    metric_int8 = evaluate(int8_predictor(graph), [task_spec], val, config.eval_batch_size)[task]
    layers = {}
    for node in graph.nodes:
        info = graph.tensors[node.output]
        entry: dict[str, Any] = {"op": node.op, "dtype": info.dtype, "scale": info.scale}
        if "mul" in node.params:
            entry.update(shift=int(node.attrs["shift"]), mul_bits=_mul_bits(node.params["mul"]))
        if node.op == "add":
            entry["mul_bits"] = max(abs(node.attrs["mul_a"]), abs(node.attrs["mul_b"])).bit_length()
        if node.name in sqnr:
            entry["sqnr_db"] = sqnr[node.name]
        layers[node.name] = entry
    record = Int8Record(
        task=task, metric=task_spec.metric, higher_is_better=bool(task_spec.higher_is_better),
        calibration_samples=min(config.calibration_samples, len(calibration)), scale_method=config.scale_method,
        metric_float=metric_float, metric_int8=metric_int8, input_scale=graph.tensors[graph.input].scale,
        output_scale=graph.tensors[graph.output].scale, layers=layers, weight_bytes=graph.weight_bytes(),
        seconds=time.perf_counter() - start)
    return graph, record
