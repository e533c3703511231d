"""IntGraph -> the integer ONNX that Deeploy (deeploy-pulp 0.2.1) takes, with exactly the IntGraph's arithmetic.

Deeploy reads a float ONNX whose values are all integers: Conv / Gemm with integer-valued float32 weights, each
followed by a `RequantShift` node (inputs: accumulator, `mul`, `add`; TENSOR attributes `div` = 2**shift,
`n_levels_out` = 256, `signed`), and a shape on every tensor. Its PULPOpen lowering fuses Conv + RequantShift into
`RequantizedConv` (pulp-nn kernels), Gemm + RequantShift into `RequantizedGemm`, and RequantShift -> Add <-
RequantShift, Add -> RequantShift into `RequantizedAdd`. Deeploy adds the rounding term itself (the fusions add
2**(d-1) to `add`; a lone RequantShift runs its kernel with rounding on), so `add` here is the IntGraph's `add` as
is: out = clip((acc * mul + add + 2**(d-1)) >> d), the same formula as `edgemtl.model.intgraph.requantize`.
Our RequantShift nodes also say `channels_first=1`: Deeploy's PULP deployer defaults to NHWC and moves only Conv /
MaxPool to it (with Transposes around them), so a RequantShift left on its own sees an NCHW tensor and would
otherwise index its per-channel mul / add as NHWC.

How each IntGraph op is written (all tensors NCHW with a batch axis of 1; Deeploy moves to NHWC itself):
- conv            Conv + RequantShift (dense, or depthwise when groups == C_in == K; pads equal on all sides).
- gemm            Gemm(transB=1, alpha = beta = 1.0 written out: Deeploy's Generic parser needs them) +
                  RequantShift. Deeploy's Gemm fusion adds 2**(d-1) even when d == 0 (a half, which int32
                  cannot hold), so shift 0 is written as mul*2, add*2, shift 1: the same integers, since
                  (2v + 1) >> 1 == v.
- add             RequantShift(mul_a, div 1) and RequantShift(mul_b, div 1) on the inputs, Add, RequantShift:
                  fused into one RequantizedAdd (pulp_nn_add), which takes ONE mul / add for the output, so
                  per-channel requantisation after an add is mapped only when mul_a == mul_b == 1 (then the
                  plain Add makes int32 and a per-channel RequantShift follows, exact).
- avgpool_global  a depthwise RequantizedConv whose kernel is the whole H x W of ones (acc = the sum, exactly
                  the IntGraph's), then Flatten: PULPOpen has no global pooling layer; its integer ReduceMean
                  is a mean, not a sum followed by a per-channel requantisation.
- maxpool, concat (axis 1), requant, flatten: MaxPool, Concat, RequantShift, Flatten (Reshape to a multi-dimensional
  sample shape).
- resize_bilinear, resize_nearest, conv_transpose, lut and the token ops (TOKEN_OPS): no such layer in PULPOpen's mapping (deeploy-pulp
  0.2.1): reported as unmapped and written as placeholder nodes in the `edgemtl.unmapped` domain, so the file still has every
  tensor and shape but Deeploy will not be run on it (the flow runs it on the mappable prefix instead,
  `deeploy_split.mappable_prefix`).

Outputs: by default the graph's one output; `export_deeploy_onnx(..., outputs=[...])` writes several (a prefix's,
which Deeploy names output_0, output_1, ...). An output that a later layer also reads leaves through an exact copy
(RequantShift mul 2, add 0, div 2), since Deeploy's layout passes would leave it without a producer otherwise.

Checks (one-line EdgemtlError naming the layer): every integer stored as float32 (weights, mul, add, and add plus
Deeploy's rounding term) stays below 2**24 in magnitude, where float32 is still exact; conv / gemm `add` is a
multiple of `mul` (the folded bias, as Deeploy expects); `check_int32` for the int32 accumulators and products.
The unmapped layers, the input's integer type and the per-layer tensor names go into the model's metadata
(`edgemtl.deeploy`, JSON) for the worker and for reports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import IntGraph, Node, check_int32, worst_case_accumulator

# Deeploy dispatches on the op type alone; a custom domain keeps onnx's checker from looking RequantShift up in
# the standard operator set.
RQS_DOMAIN = "deeploy"
UNMAPPED_DOMAIN = "edgemtl.unmapped"
TOKEN_OPS = ("avgpool", "reduce_mean", "transpose", "slice", "matmul", "add_const", "softmax", "layernorm", "moe")
UNMAPPED_OPS = ("resize_bilinear", "resize_nearest", "conv_transpose", "lut", *TOKEN_OPS)  # never PULPOpen layers
METADATA_KEY = "edgemtl.deeploy"
FLOAT32_EXACT = 2**24
OPSET = 13


@dataclass
class Unmapped:
    layer: str
    op: str
    reason: str


@dataclass
class DeeployOnnx:
    """What `export_deeploy_onnx` wrote: the model, the layers PULPOpen cannot take, and which ONNX tensor holds
    each layer's output (Deeploy renames fused nodes but keeps tensor names)."""

    path: Path
    unmapped: list[Unmapped] = field(default_factory=list)
    layer_outputs: dict[str, str] = field(default_factory=dict)
    input_dtype: str = "int8"

    @property
    def mappable(self) -> bool:
        return not self.unmapped


class _Names:
    """Unique C-identifier names: Deeploy strips every character outside [A-Za-z0-9_] from names, which could
    otherwise make two names one, and keeps tensor names (plus suffixes) in the code it generates."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.of: dict[str, str] = {}

    def new(self, base: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_]", "_", base) or "t"
        name = f"t_{name}" if name[0].isdigit() else name
        candidate, i = name, 2
        while candidate in self.used:
            candidate, i = f"{name}_{i}", i + 1
        self.used.add(candidate)
        return candidate

    def __getitem__(self, intgraph_name: str) -> str:
        if intgraph_name not in self.of:
            self.of[intgraph_name] = self.new(intgraph_name)
        return self.of[intgraph_name]


class _Builder:
    """Collects nodes, initializers and a value_info per tensor while the IntGraph is walked."""

    def __init__(self, graph: IntGraph) -> None:
        self.graph = graph
        self.names = _Names()
        for tensor in graph.tensors:
            _ = self.names[tensor]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.shapes: dict[str, list[int]] = {}
        self.layer = ""                              # the IntGraph layer being written
        self.tensor_layers: dict[str, str] = {}      # ONNX tensor -> the IntGraph layer that produces it
        self.node_layers: dict[str, str] = {}        # ONNX node -> the IntGraph layer it belongs to

    def t(self, intgraph_tensor: str) -> str:
        return self.names[intgraph_tensor]

    def shape(self, tensor: str) -> list[int]:
        return [1, *self.graph.tensors[tensor].shape]

    def const(self, layer: str, base: str, values: np.ndarray) -> str:
        """An integer-valued float32 initializer; fails, naming the layer, where float32 would round it."""
        values = np.asarray(values).astype(np.int64)
        if values.size and int(np.abs(values).max()) >= FLOAT32_EXACT:
            raise EdgemtlError(f"task {self.graph.task!r}, layer {layer!r}: {base.rsplit('_', 1)[-1]} reaches "
                               f"{int(np.abs(values).max()):,}, beyond 2^24 where float32 (Deeploy's ONNX) is no "
                               f"longer exact; requantize with fewer multiplier bits")
        name = self.names.new(base)
        self.initializers.append(numpy_helper.from_array(values.astype(np.float32), name))
        return name

    def shape_const(self, base: str, shape: list[int]) -> str:
        """An int64 initializer holding a Reshape's target shape (batch axis first)."""
        name = self.names.new(base)
        self.initializers.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, shape: list[int], base: str, domain: str = "",
             **attrs: Any) -> str:
        """Append a node writing `output` (an ONNX name) of `shape`."""
        name = self.names.new(base)
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs))
        self.shapes[output] = shape
        self.tensor_layers[output], self.node_layers[name] = self.layer, self.layer
        return output

    def requant_shift(self, layer: str, base: str, x: str, mul: np.ndarray, add: np.ndarray, shift: int,
                      output: str, shape: list[int], dtype: str) -> str:
        if shift:
            if int(np.abs(add.astype(np.int64)).max()) + (1 << (shift - 1)) >= FLOAT32_EXACT:
                raise EdgemtlError(f"task {self.graph.task!r}, layer {layer!r}: add plus Deeploy's rounding term "
                                   f"2^{shift - 1} reaches 2^24, where float32 is no longer exact; requantize with "
                                   f"fewer multiplier bits")
        mul_name, add_name = self.const(layer, f"{base}_mul", mul), self.const(layer, f"{base}_add", add)

        def scalar(key: str, value: int) -> TensorProto:
            return numpy_helper.from_array(np.array(value, dtype=np.int64), f"{base}_{key}")

        return self.node("RequantShift", [x, mul_name, add_name], output, shape, base, domain=RQS_DOMAIN,
                         div=scalar("div", 1 << shift), n_levels_out=scalar("n_levels_out", 256),
                         signed=scalar("signed", int(dtype == "int8")), channels_first=1)

    def temp(self, base: str, shape: list[int]) -> str:
        name = self.names.new(base)
        self.shapes[name] = shape
        return name


def unmapped_reason(node: Node, graph: IntGraph) -> str | None:
    """Why Deeploy's PULPOpen platform (deeploy-pulp 0.2.1) cannot take this layer, or None when it can."""
    if node.op in ("resize_bilinear", "resize_nearest"):
        return "PULPOpen has no Resize layer"
    if node.op == "conv_transpose":
        return "PULPOpen has no ConvTranspose layer"
    if node.op == "lut":
        return f"PULPOpen has no integer {node.attrs.get('function', 'table')} layer"
    if node.op in TOKEN_OPS:
        return (f"edgemtl's exporter maps no PULPOpen layer to its integer {node.op} (deeploy-pulp 0.2.1's iSoftmax / "
                "iLayerNorm / MatMul templates compute other integers); the generated C runs it")
    if node.op == "conv":
        pads, groups = node.attrs["pads"], int(node.attrs.get("groups", 1))
        if len(set(int(p) for p in pads)) != 1:
            return f"pads {pads} are not equal on all sides (PULP conv kernels take one padding)"
        k, c = node.params["weight"].shape[0], graph.tensors[node.inputs[0]].shape[0]
        if groups != 1 and not groups == c == k:
            return f"grouped conv (groups={groups}, {c} -> {k} channels): PULPOpen has dense and depthwise only"
    if node.op == "add" and not _uniform(node) and (int(node.attrs["mul_a"]) != 1 or int(node.attrs["mul_b"]) != 1):
        return ("per-channel requantisation after an add whose inputs are scaled (mul_a, mul_b != 1): "
                "RequantizedAdd takes one mul / add")
    if node.op == "maxpool" and len(set(int(p) for p in node.attrs["pads"])) > 1:
        return f"pads {node.attrs['pads']} are not equal on all sides"
    return None


def _uniform(node: Node) -> bool:
    mul, add = node.params["mul"], node.params["add"]
    return bool(np.all(mul == mul.flat[0]) and np.all(add == add.flat[0]))


def check_deeploy_ranges(graph: IntGraph) -> None:
    """The checks that make the export exact: int32 range, conv / gemm add a multiple of mul."""
    check_int32(graph)
    for node in graph.nodes:
        if node.op not in ("conv", "gemm"):
            continue
        mul, add = node.params["mul"].astype(np.int64), node.params["add"].astype(np.int64)
        bad = np.where(mul == 0, add != 0, add % np.where(mul == 0, 1, mul) != 0)
        if bad.any():
            ch = int(np.flatnonzero(bad)[0])
            raise EdgemtlError(f"task {graph.task!r}, layer {node.name!r}: add ({int(add[ch])}) is not a multiple of "
                               f"mul ({int(mul[ch])}) in channel {ch}; Deeploy expects the bias folded as "
                               f"add = bias * mul")
        if int(node.attrs["shift"]) == 0 and node.op == "gemm":
            doubled = worst_case_accumulator(node, graph.tensors) * 2 * np.abs(mul) + 2 * np.abs(add) + 1
            if doubled.max() > 2**31 - 1:
                raise EdgemtlError(f"task {graph.task!r}, layer {node.name!r}: shift 0 is written as shift 1 with mul "
                                   f"and add doubled, which leaves int32; requantize with a shift of at least 1")


def _conv(b: _Builder, node: Node, weight: np.ndarray, groups: int, stride: list[int], pads: list[int],
          out: str, out_shape: list[int]) -> None:
    layer, base = node.name, b.names.new(node.name)
    w = b.const(layer, f"{base}_weight", weight)
    acc = b.node("Conv", [b.t(node.inputs[0]), w], b.temp(f"{base}_acc", [1, *out_shape[1:]]), out_shape,
                 f"{base}_conv", dilations=[1, 1], group=groups, kernel_shape=list(weight.shape[2:]),
                 pads=[int(p) for p in pads], strides=[int(s) for s in stride])
    b.requant_shift(layer, f"{base}_rqs", acc, node.params["mul"], node.params["add"], int(node.attrs["shift"]), out,
                    out_shape, b.graph.tensors[node.output].dtype)


def _emit(b: _Builder, node: Node) -> None:
    g, layer, out = b.graph, node.name, b.t(node.output)
    dtype, shape = g.tensors[node.output].dtype, b.shape(node.output)
    if node.op == "conv":
        _conv(b, node, node.params["weight"], int(node.attrs.get("groups", 1)), node.attrs["stride"],
              node.attrs["pads"], out, shape)
    elif node.op == "avgpool_global":
        c, h, w = g.tensors[node.inputs[0]].shape
        pooled = b.temp(f"{out}_pooled", [1, c, 1, 1])
        _conv(b, node, np.ones((c, 1, h, w), dtype=np.int8), c, [1, 1], [0, 0, 0, 0], pooled, [1, c, 1, 1])
        b.node("Flatten", [pooled], out, shape, f"{layer}_flatten", axis=1)
    elif node.op == "gemm":
        mul, add, shift = node.params["mul"], node.params["add"], int(node.attrs["shift"])
        if shift == 0:
            mul, add, shift = mul.astype(np.int64) * 2, add.astype(np.int64) * 2, 1
        w = b.const(layer, f"{layer}_weight", node.params["weight"])
        # alpha / beta written out: Deeploy's Generic GEMM parser calls .is_integer() on them (fails on absent ones)
        acc = b.node("Gemm", [b.t(node.inputs[0]), w], b.temp(f"{layer}_acc", shape), shape, f"{layer}_gemm", transB=1,
                     alpha=1.0, beta=1.0)
        b.requant_shift(layer, f"{layer}_rqs", acc, mul, add, shift, out, shape, dtype)
    elif node.op == "add":
        a, c = b.t(node.inputs[0]), b.t(node.inputs[1])
        if _uniform(node):  # RequantShift -> Add <- RequantShift, Add -> RequantShift: fused into RequantizedAdd
            scaled = []
            for key, x, m in (("a", node.inputs[0], node.attrs["mul_a"]), ("b", node.inputs[1], node.attrs["mul_b"])):
                scaled.append(b.requant_shift(layer, f"{layer}_rqs_{key}", b.t(x), np.array([int(m)]), np.zeros(1),
                                              0, b.temp(f"{layer}_{key}", shape), shape, g.tensors[x].dtype))
            a, c = scaled
            mul, add = node.params["mul"].reshape(-1)[:1], node.params["add"].reshape(-1)[:1]
        else:  # mul_a == mul_b == 1 (else unmapped): int32 Add, then per-channel RequantShift
            mul, add = node.params["mul"], node.params["add"]
        acc = b.node("Add", [a, c], b.temp(f"{layer}_acc", shape), shape, f"{layer}_add")
        b.requant_shift(layer, f"{layer}_rqs", acc, mul, add, int(node.attrs["shift"]), out, shape, dtype)
    elif node.op == "requant":
        b.requant_shift(layer, f"{layer}_rqs", b.t(node.inputs[0]), node.params["mul"], node.params["add"],
                        int(node.attrs["shift"]), out, shape, dtype)
    elif node.op == "maxpool":
        b.node("MaxPool", [b.t(node.inputs[0])], out, shape, f"{layer}_maxpool",
               kernel_shape=list(node.attrs["kernel"]), strides=list(node.attrs["stride"]),
               pads=[int(p) for p in node.attrs["pads"]], ceil_mode=0)
    elif node.op == "concat":
        b.node("Concat", [b.t(i) for i in node.inputs], out, shape, f"{layer}_concat", axis=1)
    elif node.op == "flatten" and "shape" in node.attrs:  # to a multi-dimensional sample shape
        target = b.shape_const(f"{layer}_shape", [-1, *node.attrs["shape"]])
        b.node("Reshape", [b.t(node.inputs[0]), target], out, shape, f"{layer}_reshape")
    elif node.op == "flatten":
        b.node("Flatten", [b.t(node.inputs[0])], out, shape, f"{layer}_flatten", axis=1)
    else:  # resize_*, conv_transpose, lut: no PULPOpen layer; a placeholder keeps the tensor and its shape
        b.node(node.op, [b.t(i) for i in node.inputs], out, shape, layer, domain=UNMAPPED_DOMAIN,
               **{k: v for k, v in node.attrs.items() if isinstance(v, (int, float, str, list))})


def _output_copy(b: _Builder, tensor: str) -> str:
    """A model output that later layers also read, written through a copy: Deeploy's PULPOpen layout passes
    (deeploy-pulp 0.2.1) reroute the consumers of such a tensor and leave the output itself without a producer
    (the tiler then fails with KeyError 'output_0'). The copy is a RequantShift with mul 2, add 0, div 2, exactly the
    identity ((2v + 1) >> 1 == v, inside the output type): div 1 would make Deeploy's kernels add 1 << -1."""
    producer = next(n for n in b.graph.nodes if n.output == tensor)
    b.layer = producer.name
    channels = b.graph.tensors[tensor].shape[0]
    return b.requant_shift(producer.name, b.names.new(f"{b.t(tensor)}_copy"), b.t(tensor),
                           np.full(channels, 2), np.zeros(channels), 1, b.names.new(f"{b.t(tensor)}_out"),
                           b.shape(tensor), b.graph.tensors[tensor].dtype)


def export_deeploy_onnx(graph: IntGraph, path: Path, outputs: list[str] | None = None) -> DeeployOnnx:
    """Write `graph` as Deeploy's integer ONNX at `path`.

    `outputs`: the IntGraph tensors that become the model's outputs, in order (Deeploy names them output_0,
    output_1, ...); default [graph.output]. Several are used for a mappable prefix (`deeploy_split`), whose later
    layers may read an output too. Raises EdgemtlError (one line, naming the layer) where the export could not be
    exact; layers PULPOpen cannot map are returned in `unmapped` (and recorded in the file's metadata), not raised.
    """
    graph.validate()
    check_deeploy_ranges(graph)
    outputs = list(outputs) if outputs else [graph.output]
    computed = {n.output for n in graph.nodes}
    bad = [o for o in outputs if o not in computed]
    if bad or len(set(outputs)) != len(outputs):
        raise EdgemtlError(f"task {graph.task!r}: the outputs {outputs} must be distinct tensors the graph computes"
                           f"{f' ({bad} are not)' if bad else ''}")
    b = _Builder(graph)
    x = b.t(graph.input)
    unmapped = []
    for node in graph.nodes:
        reason = unmapped_reason(node, graph)
        if reason:
            unmapped.append(Unmapped(node.name, node.op, reason))
        b.layer = node.name
        _emit(b, node)
    ys = [_output_copy(b, o) if any(o in n.inputs for n in graph.nodes) else b.t(o) for o in outputs]

    value_info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in b.shapes.items()
                  if name != x and name not in ys]
    onnx_graph = helper.make_graph(
        b.nodes, b.names.new(f"{graph.task}_int"),
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, b.shape(graph.input))],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, b.shape(o)) for y, o in zip(ys, outputs)],
        initializer=b.initializers, value_info=value_info)
    model = helper.make_model(onnx_graph, producer_name="edgemtl",
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(RQS_DOMAIN, 1),
                                             helper.make_opsetid(UNMAPPED_DOMAIN, 1)])
    result = DeeployOnnx(Path(path), unmapped, {n.name: b.t(n.output) for n in graph.nodes},
                         graph.tensors[graph.input].dtype)
    meta = {"task": graph.task, "input": x, "output": ys[0], "outputs": ys, "input_dtype": result.input_dtype,
            "output_dtype": graph.tensors[outputs[0]].dtype, "output_dtypes": [graph.tensors[o].dtype for o in outputs],
            "unmapped": [vars(u) for u in unmapped], "layer_outputs": result.layer_outputs,
            "tensor_layers": b.tensor_layers, "node_layers": b.node_layers}
    helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return result


def read_deeploy_metadata(path: Path) -> dict[str, Any]:
    """The `edgemtl.deeploy` metadata of an exported model ({} for a model edgemtl did not write)."""
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return {}


# -- the same integer graph in standard ONNX, for evaluators that are not edgemtl's ------------------------------
STANDARD_OPSET, STANDARD_IR = 13, 8
SEMANTICS = ("pulpopen", "generic")


def standard_onnx(model: onnx.ModelProto | Path, semantics: str = "pulpopen") -> onnx.ModelProto:
    """This integer ONNX with standard ops only, so onnxruntime or onnx.reference (not edgemtl's executor) can
    evaluate it with the arithmetic Deeploy's kernels apply.

    Why a rewrite: `RequantShift` is Deeploy's own op and its Conv / Gemm carry integers as float32, so no
    standard evaluator runs the file as it is. Conv -> ConvInteger and Gemm -> MatMulInteger on int8 / uint8
    casts of their input (int8 weights; int32 accumulators); RequantShift -> Floor((x * mul + add + div / 2) /
    div) (no rounding term for div 1) then Clip to its output type, in float64, which is exact (every value is an
    integer below 2^31 here); MaxPool, Concat, Flatten, Reshape, Add as they are, on float64 integers. `semantics`:
    "pulpopen" leaves out the Clip of the per-tensor RequantShifts that Deeploy's PULPOpen fuses with an Add into
    RequantizedAdd (PULPAddRequantMergePass: RequantShift -> Add <- RequantShift, Add -> per-tensor RequantShift),
    "generic" clips every RequantShift (deeploy-pulp 0.2.1's GenericOptimizer has no such fusion). The batch
    axis is free; input and outputs are float64 holding integers. One-line EdgemtlError for a node with no
    standard form (edgemtl's Resize placeholders) or an integer that does not fit its cast.
    """
    if semantics not in SEMANTICS:
        raise EdgemtlError(f"unknown semantics {semantics!r}: one of {', '.join(SEMANTICS)}")
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    graph = model.graph
    meta = next((json.loads(p.value) for p in model.metadata_props if p.key == METADATA_KEY), {})
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input, *graph.output]}
    fused = _fused_requant_outputs(graph, init) if semantics == "pulpopen" else set()
    dtypes: dict[str, str | None] = {graph.input[0].name: meta.get("input_dtype", "int8")}
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []

    def const(name: str, values: np.ndarray, dtype: Any) -> str:
        values = np.asarray(values)
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(dtype)
            outside = values.size and (values.min() < info.min or values.max() > info.max)
            if outside or np.any(values != np.round(values)):
                raise EdgemtlError(f"constant {name!r} does not fit {np.dtype(dtype).name}: no exact standard form")
        inits.append(numpy_helper.from_array(values.astype(dtype), name))
        return name

    def cast_in(node: onnx.NodeProto) -> str:
        source = node.input[0]
        kind = dtypes.get(source)
        if kind not in RANGES_8:
            raise EdgemtlError(f"node {node.name!r} ({node.op_type}) reads {source!r}, which is not an int8 / uint8 "
                               "tensor: no ConvInteger / MatMulInteger form")
        out = f"{node.name}__q"
        nodes.append(helper.make_node("Cast", [source], [out], to=_ONNX_INT[kind]))
        return out

    for node in graph.node:
        out, attrs = node.output[0], {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            w = const(f"{node.name}__w", init[node.input[1]], np.int8)
            acc = f"{node.name}__acc"
            keep = {k: v for k, v in attrs.items() if k in ("dilations", "group", "kernel_shape", "pads", "strides")}
            nodes += [helper.make_node("ConvInteger", [cast_in(node), w], [acc], **keep),
                      helper.make_node("Cast", [acc], [out], to=TensorProto.DOUBLE)]
            dtypes[out] = None
        elif node.op_type == "Gemm":
            extra = {k: v for k, v in attrs.items() if k not in ("transB", "alpha", "beta")}
            if (len(node.input) > 2 or attrs.get("transA", 0) or extra
                    or float(attrs.get("alpha", 1.0)) != 1.0 or float(attrs.get("beta", 1.0)) != 1.0):
                raise EdgemtlError(f"node {node.name!r}: only Gemm(x, W) with transB and alpha = beta = 1 has a "
                                   "MatMulInteger form")
            weight = init[node.input[1]]
            w = const(f"{node.name}__w", weight.T if attrs.get("transB", 0) else weight, np.int8)
            acc = f"{node.name}__acc"
            nodes += [helper.make_node("MatMulInteger", [cast_in(node), w], [acc]),
                      helper.make_node("Cast", [acc], [out], to=TensorProto.DOUBLE)]
            dtypes[out] = None
        elif node.op_type == "RequantShift":
            div = int(numpy_helper.to_array(attrs["div"]))
            signed = bool(int(numpy_helper.to_array(attrs["signed"])))
            shape = [1, -1] + [1] * (rank.get(node.input[0], 4) - 2)
            mul, add = (init[name].astype(np.float64).reshape(-1) for name in node.input[1:3])
            mul = mul if mul.size == 1 else mul.reshape(shape)
            add = add + (div // 2 if div > 1 else 0)
            add = add if add.size == 1 else add.reshape(shape)
            base = node.name
            scaled, shifted = f"{base}__mul", f"{base}__add"
            nodes += [helper.make_node("Mul", [node.input[0], const(f"{base}__m", mul, np.float64)], [scaled]),
                      helper.make_node("Add", [scaled, const(f"{base}__a", add, np.float64)], [shifted])]
            last = shifted
            if div > 1:
                nodes += [helper.make_node("Div", [shifted, const(f"{base}__d", np.array(float(div)), np.float64)],
                                           [f"{base}__div"]),
                          helper.make_node("Floor", [f"{base}__div"], [f"{base}__floor"])]
                last = f"{base}__floor"
            if out in fused:
                nodes.append(helper.make_node("Identity", [last], [out]))
                dtypes[out] = None
            else:
                kind = "int8" if signed else "uint8"
                lo, hi = RANGES_8[kind]
                nodes.append(helper.make_node("Clip", [last, const(f"{base}__lo", np.array(float(lo)), np.float64),
                                                       const(f"{base}__hi", np.array(float(hi)), np.float64)], [out]))
                dtypes[out] = kind
        elif node.op_type in ("MaxPool", "Flatten"):
            nodes.append(helper.make_node(node.op_type, list(node.input), [out], **attrs))
            dtypes[out] = dtypes.get(node.input[0])
        elif node.op_type == "Reshape":
            target = const(f"{node.name}__shape", init[node.input[1]], np.int64)
            nodes.append(helper.make_node("Reshape", [node.input[0], target], [out]))
            dtypes[out] = dtypes.get(node.input[0])
        elif node.op_type == "Concat":
            nodes.append(helper.make_node("Concat", list(node.input), [out], **attrs))
            kinds = {dtypes.get(i) for i in node.input}
            dtypes[out] = kinds.pop() if len(kinds) == 1 else None
        elif node.op_type == "Add":
            nodes.append(helper.make_node("Add", list(node.input), [out]))
            dtypes[out] = None
        else:
            raise EdgemtlError(f"node {node.name!r}: op {node.op_type!r} ({node.domain or 'ai.onnx'}) has no standard "
                               "ONNX form here (edgemtl's placeholder for a layer Deeploy cannot map?)")

    def free_batch(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        return helper.make_tensor_value_info(value.name, TensorProto.DOUBLE, ["N", *dims[1:]])

    standard = helper.make_graph(nodes, f"{graph.name}_standard", [free_batch(graph.input[0])],
                                 [free_batch(o) for o in graph.output], initializer=inits)
    result = helper.make_model(standard, producer_name="edgemtl", ir_version=STANDARD_IR,
                               opset_imports=[helper.make_opsetid("", STANDARD_OPSET)])
    onnx.checker.check_model(result)
    return result


RANGES_8 = {"int8": (-128, 127), "uint8": (0, 255)}
_ONNX_INT = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


def _fused_requant_outputs(graph: onnx.GraphProto, init: dict[str, np.ndarray]) -> set[str]:
    """Outputs of the RequantShifts that PULPOpen's PULPAddRequantMergePass folds into a RequantizedAdd without a
    clip: per-tensor RequantShifts feeding an Add whose output goes into a per-tensor RequantShift."""
    producer = {n.output[0]: n for n in graph.node}
    per_tensor = {n.output[0] for n in graph.node
                  if n.op_type == "RequantShift" and init[n.input[1]].size == 1 and init[n.input[2]].size == 1}
    fused: set[str] = set()
    for add in (n for n in graph.node if n.op_type == "Add"):
        after = [n for n in graph.node if n.op_type == "RequantShift" and n.input[0] == add.output[0]]
        if after and after[0].output[0] in per_tensor and all(i in per_tensor for i in add.input):
            fused |= {i for i in add.input if producer[i].op_type == "RequantShift"}
    return fused


EVALUATORS = ("onnxruntime", "onnx.reference")


def evaluate_standard(model: onnx.ModelProto, q_inputs: np.ndarray, evaluator: str = "onnxruntime") -> list[np.ndarray]:
    """Run a `standard_onnx` model on a batch of integer inputs (N, C, H, W) with onnxruntime or onnx.reference;
    every output as int64 (N, ...)."""
    x = np.asarray(q_inputs).astype(np.float64)
    if evaluator == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {model.graph.input[0].name: x})
    elif evaluator == "onnx.reference":
        from onnx.reference import ReferenceEvaluator

        outputs = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})
    else:
        raise EdgemtlError(f"unknown evaluator {evaluator!r}: one of {', '.join(EVALUATORS)}")
    converted = []
    for value in outputs:
        value = np.asarray(value)
        if not np.all(value == np.round(value)):
            raise EdgemtlError(f"{evaluator} gave a non-integer output: the standard form is broken")
        converted.append(value.astype(np.int64))
    return converted
