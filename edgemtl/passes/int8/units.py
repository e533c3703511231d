"""Pass 1 of `quantize_int8`: group the float graph's ONNX nodes into units, each of which becomes one integer node.

Every check of what the int8 MCU backends can take lives here, so `check_int8_ops` answers in seconds, before any
calibration: an op or a form they lack raises one line naming the task, the layer and the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgemtl.errors import EdgemtlError
from edgemtl.passes.int8.elementwise import OPS as ELEMENTWISE_OPS
from edgemtl.passes.int8.elementwise import Elementwise, region

SUPPORTED_OPS = ("Conv", "ConvTranspose", "Relu", "Add", "Concat", "Resize", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "ReduceMean", "Gemm", "MatMul", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
                 "Identity", "Dropout", "Transpose", "Split", "Slice", "Gather", "Softmax", "LayerNormalization",
                 "TopK", *(op for op in ELEMENTWISE_OPS if op != "Add"))
WEIGHTED = ("conv", "conv_transpose", "gemm")   # units with int8 weights
_DYNAMIC_DISPATCH = ("TopK", "NonZero", "ScatterElements", "ScatterND")   # a routed MoE layer's ops


@dataclass
class Unit:
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


class Converter:
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
    def units(self) -> list[Unit]:
        units: list[Unit] = []
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
            if unit.kind in (*WEIGHTED, "add"):
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

    def unit(self, node: onnx.NodeProto) -> Unit:
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
            return Unit("conv", node.name, ins, out, onnx=[node])
        if op == "ConvTranspose":
            return self.conv_transpose_unit(node, ins)
        if op in ELEMENTWISE_OPS and (op != "Add" or len(ins) == 1):
            return self.lut_unit(node, ins)
        if op == "MatMul" and len(ins) == 2:
            return self.matmul_unit(node, ins)
        if op in ("Gemm", "MatMul"):
            if len(ins) != 1 or node.input[1] not in self.inits or (op == "Gemm" and self.attr(node, "transA", 0)):
                raise self.unsupported(node, "weights computed at run time")
            unit = Unit("gemm", node.name, ins, out, onnx=[node])
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
            return Unit("add", node.name, ins, out, onnx=[node])
        if op == "Relu":
            return Unit("requant", node.name, ins, out, relu=True, onnx=[node])
        if op == "Concat":
            axis = self.attr(node, "axis")
            if len(ins) != len(node.input):
                raise self.unsupported(node, "it concatenates a constant")
            if len(self.shapes[out]) != 4 or axis not in (1, -3):
                raise self.unsupported(node, "not along channels")
            return Unit("concat", node.name, ins, out, onnx=[node])
        if op == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                raise self.unsupported(node, "it also returns indices")
            if (self.attr(node, "auto_pad", "NOTSET") != "NOTSET"
                    or any(d != 1 for d in self.attr(node, "dilations", [1, 1]))):
                raise self.unsupported(node, "auto_pad / dilation")
            return Unit("maxpool", node.name, ins, out, onnx=[node], attrs=self.pool_attrs(node))
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
            return Unit("avgpool_global", node.name, ins[:1], out, onnx=[node])
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            # row-major bytes are the same in any shape, so a reshape is a relabelling, unless it folds the batch
            before, after = self.sample_shape(ins[0]), self.sample_shape(out)
            if int(np.prod(before)) != int(np.prod(after)):
                raise self.unsupported(node, f"to shape {after}: it moves data across samples of the batch")
            return Unit("flatten", node.name, ins[:1], out, onnx=[node])
        if op in ("Identity", "Dropout"):
            return Unit("alias", node.name, ins[:1], out, onnx=[node])
        if op == "Transpose":
            return self.transpose_unit(node, ins)
        if op in ("Gather", "Slice"):
            return self.slice_unit(node, ins)
        if op == "Softmax":
            rank = len(self.shapes[ins[0]])
            if self.opset < 13 and int(self.attr(node, "axis", 1)) % rank != rank - 1:
                raise self.unsupported(node, "opset < 13 softmax over a flattened block of axes")
            axis = self.sample_axis(node, ins[0], int(self.attr(node, "axis", -1)))
            return Unit("softmax", node.name, ins, out, onnx=[node], attrs={"axis": axis})
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

    def moe_unit(self, topk: onnx.NodeProto) -> Unit:
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
        return Unit("moe", topk.name, [x], output, onnx=layer, table=table,
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

    def lut_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
        """Elementwise nodes of one activation (and constants) as one table (`edgemtl.passes.int8.elementwise`); an
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
        return Unit("lut", node.name, ins[:1], chain[-1].output[0], onnx=chain, table=form)

    def add_const_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
        """x + c for a constant c of the sample's shape (a position embedding)."""
        shape = self.sample_shape(ins[0])
        constant = self.inits[node.input[1]].astype(np.float64) * (-1.0 if node.op_type == "Sub" else 1.0)
        try:
            full = np.broadcast_to(constant, (1, *shape)).reshape(shape)
        except ValueError:
            raise self.unsupported(node, f"a constant of shape {list(constant.shape)} against {shape}") from None
        if self.sample_shape(node.output[0]) != shape:
            raise self.unsupported(node, "the constant broadcasts the activation to a larger shape")
        return Unit("add_const", node.name, ins, node.output[0], onnx=[node], attrs={"constant": full})

    def matmul_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
        """A product of two activations (attention's scores and context): (..., M, K) @ (..., K, N)."""
        a, b = (self.sample_shape(name) for name in node.input)
        if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise self.unsupported(node, f"shapes {a} @ {b}: only equal leading axes, no broadcasting")
        return Unit("matmul", node.name, list(node.input), node.output[0], onnx=[node])

    def transpose_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
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
            return Unit("flatten", node.name, ins, node.output[0], onnx=[node])
        return Unit(kind, node.name, ins, node.output[0], onnx=[node], attrs={"view": view, "perm": moved})

    def constant_ints(self, node: onnx.NodeProto, index: int, attr: str) -> list[int] | None:
        if len(node.input) > index and node.input[index]:
            if node.input[index] not in self.inits:
                raise self.unsupported(node, "positions computed at run time")
            return [int(v) for v in np.asarray(self.inits[node.input[index]]).reshape(-1)]
        value = self.attr(node, attr)
        return None if value is None else [int(v) for v in np.atleast_1d(value)]

    def slice_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
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
        return Unit("slice", node.name, ins[:1], node.output[0], onnx=[node],
                     attrs={"axis": self.sample_axis(node, x, axis), "start": start, "stop": stop})

    def split_units(self, node: onnx.NodeProto) -> list[Unit]:
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
                units.append(Unit("slice", f"{node.name}/{k}", [x], out, onnx=[node],
                                   attrs={"axis": self.sample_axis(node, x, axis), "start": start, "stop": start + size}))
            start += size
        return units

    def reduce_mean_unit(self, node: onnx.NodeProto, ins: list[str], axes: list[int]) -> Unit:
        """A mean over consecutive axes of a sample (the tokens of a ViT, whatever layout): the sample viewed as
        (outer, n, inner), summed over n."""
        shape = self.sample_shape(ins[0])
        sample_axes = sorted(self.sample_axis(node, ins[0], a) for a in axes)
        if sample_axes != list(range(sample_axes[0], sample_axes[-1] + 1)):
            raise self.unsupported(node, "a mean over axes that are not consecutive")
        first, last = sample_axes[0], sample_axes[-1] + 1
        view = [int(np.prod(shape[:first])), int(np.prod(shape[first:last])), int(np.prod(shape[last:]))]
        return Unit("reduce_mean", node.name, ins[:1], node.output[0], onnx=[node], attrs={"view": view})

    def layernorm_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
        shape = self.sample_shape(ins[0])
        if self.sample_axis(node, ins[0], int(self.attr(node, "axis", -1))) != len(shape) - 1:
            raise self.unsupported(node, "normalised over more than the last axis")
        if len(ins) != 1 or any(len(node.output) > k and node.output[k] for k in (1, 2)):
            raise self.unsupported(node, "scale / bias computed at run time, or mean / deviation outputs read")
        if shape[-1] > 4096:
            raise self.unsupported(node, f"{shape[-1]} features: the integer kernel takes at most 4096")
        return Unit("layernorm", node.name, ins, node.output[0], onnx=[node])

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

    def avgpool_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
        pads = list(self.attr(node, "pads", [0, 0, 0, 0]))
        if (self.attr(node, "auto_pad", "NOTSET") != "NOTSET" or self.attr(node, "ceil_mode", 0)
                or any(d != 1 for d in self.attr(node, "dilations", [1, 1])) or len(self.shapes[ins[0]]) != 4):
            raise self.unsupported(node, "ceil_mode / auto_pad / dilation, or not 2-D")
        if any(pads) and not self.attr(node, "count_include_pad", 0):
            raise self.unsupported(node, "padding not counted in the mean (count_include_pad=0): the divisor would "
                                         "vary at the border; pad explicitly or use count_include_pad=True")
        return Unit("avgpool", node.name, ins, node.output[0], onnx=[node])

    def conv_transpose_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
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
        return Unit("conv_transpose", node.name, ins, node.output[0], onnx=[node])

    def resize_unit(self, node: onnx.NodeProto, ins: list[str]) -> Unit:
        (_, c, h, w), (_, c2, h2, w2) = self.shapes[ins[0]], self.shapes[node.output[0]]
        factor = h2 // h if h else 0
        if c != c2 or factor < 1 or h2 != h * factor or w2 != w * factor:
            raise self.unsupported(node, f"not an integer upsampling ({h}x{w} -> {h2}x{w2})")
        mode, coords = self.attr(node, "mode", "nearest"), self.attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode == "linear" and (coords == "half_pixel" or (coords == "pytorch_half_pixel" and h2 > 1 and w2 > 1)):
            return Unit("resize_bilinear", node.name, ins, node.output[0], onnx=[node])
        if mode == "nearest" and coords == "asymmetric" and self.attr(node, "nearest_mode", "round_prefer_floor") == "floor":
            return Unit("resize_nearest", node.name, ins, node.output[0], onnx=[node])
        if mode == "nearest" and factor == 1:
            return Unit("alias", node.name, ins, node.output[0], onnx=[node])
        raise self.unsupported(node, f"mode {mode!r} with {coords!r} coordinates")

