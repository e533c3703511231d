"""Passes 2 and 3 of `quantize_int8`: an activation scale per tensor, then the integer nodes with their
requantisation (`mul`, `add`, `shift`) chosen so that the worst-case accumulator stays inside int32."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgemtl.model.intgraph import (INT8_PARAMS, INT32, LAYERNORM_Z_BITS, PER_TENSOR, RANGES, IntGraph, Node,
                                    TensorInfo, softmax_exp_table, worst_case_accumulator)
from edgemtl.passes.int8.calibration import choose_scale
from edgemtl.passes.int8.config import Int8Config
from edgemtl.passes.int8.units import WEIGHTED, Converter, Unit

_MOVES = ("maxpool", "resize_nearest", "flatten", "alias", "transpose", "slice")   # units that keep their input's scale
_CALIBRATED = (*WEIGHTED, "add", "requant", "avgpool_global", "avgpool", "reduce_mean", "matmul", "add_const",
               "layernorm", "softmax", "moe")


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


def as_int32(values: np.ndarray) -> np.ndarray:
    """int32 where the values fit; else kept wide, so that `check_int32` sees (and names) the overflow."""
    return values.astype(np.int32) if values.min() >= INT32[0] and values.max() <= INT32[1] else values.astype(np.int64)


def int8_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights with one scale per output (the first axis), and those scales."""
    flat = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1).astype(np.float64)
    fallback = flat.max() / 127 if flat.max() > 0 else 1.0
    s_w = np.where(flat > 0, flat / 127, fallback)
    return np.clip(np.rint(weight / s_w.reshape(-1, *[1] * (weight.ndim - 1))), -127, 127).astype(np.int8), s_w


def mul_bits(mul: np.ndarray) -> int:
    return int(np.abs(mul).max()).bit_length() if mul.size else 0


class Builder:
    def __init__(self, conv: Converter, units: list[Unit]) -> None:
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

    def source(self, unit: Unit, index: int = 0) -> str:
        tensor = unit.inputs[index]
        if tensor in self.pooled and unit.kind not in ("flatten", "alias", "gemm"):
            raise self.c.unsupported(unit.onnx[0], "it reads a globally pooled tensor as a feature map")
        return self.names[tensor]

    def output(self, graph: IntGraph, unit: Unit, shape: list[int] | None = None) -> str:
        dtype, scale = self.q[unit.output]
        self.names[unit.output] = unit.output
        return self.new_tensor(graph, unit.output, shape or self.c.sample_shape(unit.output), dtype, scale)

    def requant_node(self, graph: IntGraph, unit: Unit, op: str, inputs: list[str], out: str,
                     multiplier: np.ndarray, extra_attrs: dict[str, Any] | None = None) -> None:
        node = Node(unit.name, op, inputs, out, dict(extra_attrs or {}))
        channels = 1 if op in PER_TENSOR else graph.tensors[out].shape[0]
        node.params = {"mul": np.ones(channels, np.int32), "add": np.zeros(channels, np.int32)}
        acc_max = worst_case_accumulator(node, graph.tensors)
        mul, add, shift = choose_requant(np.broadcast_to(multiplier, (channels,)), acc_max)
        node.params = {"mul": as_int32(mul), "add": as_int32(add)}
        node.attrs["shift"] = shift
        graph.nodes.append(node)

    def weighted(self, graph: IntGraph, unit: Unit, op: str, weight: np.ndarray, bias: np.ndarray,
                 attrs: dict[str, Any], shape: list[int] | None = None) -> None:
        x = self.source(unit)
        s_in = graph.tensors[x].scale
        out = self.output(graph, unit, shape)
        s_out = graph.tensors[out].scale
        w_q, s_w = int8_weights(weight)
        bias_q = np.rint(bias.astype(np.float64) / (s_in * s_w)).astype(np.int64)
        node = Node(unit.name, op, [x], out, dict(attrs), {"weight": w_q})
        acc_max = worst_case_accumulator(node, graph.tensors)
        mul, add, shift = choose_requant(s_in * s_w / s_out, acc_max, bias_q)
        node.params.update(mul=as_int32(mul), add=as_int32(add))
        node.attrs["shift"] = shift
        graph.nodes.append(node)

    def emit_conv(self, graph: IntGraph, unit: Unit) -> None:
        node = unit.onnx[0]
        weight = self.c.inits[node.input[1]].astype(np.float64)
        bias = self.c.inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(len(weight))
        attrs = {"stride": list(self.c.attr(node, "strides", [1, 1])), "pads": list(self.c.attr(node, "pads", [0, 0, 0, 0])),
                 "groups": int(self.c.attr(node, "group", 1))}
        self.weighted(graph, unit, "conv", weight, bias, attrs)

    def emit_conv_transpose(self, graph: IntGraph, unit: Unit) -> None:
        node = unit.onnx[0]
        weight = self.c.inits[node.input[1]].astype(np.float64).transpose(1, 0, 2, 3)  # (k, c, kh, kw): per output
        bias = self.c.inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(len(weight))
        self.weighted(graph, unit, "conv_transpose", weight, bias, {"stride": list(weight.shape[2:])})

    def emit_lut(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        source, info = graph.tensors[x], graph.tensors[out]
        table = unit.table.table(source.dtype, source.scale, info.dtype, info.scale)
        graph.nodes.append(Node(unit.name, "lut", [x], out, {"function": unit.table.op}, {"table": table}))

    def emit_gemm(self, graph: IntGraph, unit: Unit) -> None:
        node = unit.onnx[0]
        fused_add = unit.onnx[1] if len(unit.onnx) > 1 and unit.onnx[1].op_type == "Add" else None
        weight, bias = self.c.linear(node, fused_add)
        x = self.names[unit.inputs[0]]
        rows = graph.tensors[x].shape
        if rows[-1] != weight.shape[1] or len(rows) > 1 and unit.inputs[0] in self.pooled:
            raise self.c.unsupported(node, f"it reads a {rows} tensor with {weight.shape[1]} weights per output")
        self.weighted(graph, unit, "gemm", weight, bias, {}, shape=[*rows[:-1], len(weight)])

    def emit_matmul(self, graph: IntGraph, unit: Unit) -> None:
        a, b = self.source(unit, 0), self.source(unit, 1)
        out = self.output(graph, unit)
        scales = graph.tensors[a].scale * graph.tensors[b].scale / graph.tensors[out].scale
        self.requant_node(graph, unit, "matmul", [a, b], out, np.asarray([scales]))

    def emit_add_const(self, graph: IntGraph, unit: Unit) -> None:
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
        node.params["constant"] = as_int32(node.params["constant"])
        graph.nodes.append(node)

    def emit_layernorm(self, graph: IntGraph, unit: Unit) -> None:
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
        node_q.params = {"mul": as_int32(mul), "add": as_int32(add)}
        node_q.attrs["shift"] = shift
        graph.nodes.append(node_q)

    def shared_scale(self, tensors: list[str]) -> float:
        """One int8 scale for several tensors (every expert's copy of one stage: one table serves them all)."""
        values = np.concatenate([self.stats[t][0] for t in tensors])
        return choose_scale(values, max(self.stats[t][1] for t in tensors), "int8", self.config)

    def quantized_linear(self, weight: np.ndarray, bias: np.ndarray, s_in: float, s_out: float,
                         in_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """int8 weights per output row, and mul / add / shift taking their int32 sums to s_out."""
        w_q, s_w = int8_weights(weight)
        bias_q = np.rint(bias / (s_in * s_w)).astype(np.int64)
        acc_max = np.abs(w_q.astype(np.int64)).sum(axis=1) * in_max
        mul, add, shift = choose_requant(s_in * s_w / s_out, acc_max, bias_q)
        return w_q, as_int32(mul), as_int32(add), shift

    def emit_moe(self, graph: IntGraph, unit: Unit) -> None:
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
                  "mul": as_int32(mul), "add": as_int32(add)}
        attrs = {"top_k": top_k, "router_shift": router_shift, "p": 255 << 16, "shift": shift}
        graph.nodes.append(Node(unit.name, "moe", [x], out, attrs, params))

    def emit_softmax(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        s_in, s_out = graph.tensors[x].scale, graph.tensors[out].scale
        attrs = {"axis": unit.attrs["axis"], "p": int(round(2.0**16 / s_out))}
        graph.nodes.append(Node(unit.name, "softmax", [x], out, attrs, {"exp": softmax_exp_table(s_in)}))

    def emit_avgpool(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        attrs = self.c.pool_attrs(unit.onnx[0])
        kh, kw = attrs["kernel"]
        multiplier = graph.tensors[x].scale / (kh * kw * graph.tensors[out].scale)
        self.requant_node(graph, unit, "avgpool", [x], out, np.asarray(multiplier), attrs)

    def emit_reduce_mean(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        _, n, _ = unit.attrs["view"]
        multiplier = graph.tensors[x].scale / (n * graph.tensors[out].scale)
        self.requant_node(graph, unit, "reduce_mean", [x], out, np.asarray([multiplier]), dict(unit.attrs))

    def emit_transpose(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "transpose", [x], out, dict(unit.attrs)))

    def emit_slice(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "slice", [x], out, dict(unit.attrs)))

    def emit_add(self, graph: IntGraph, unit: Unit) -> None:
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

    def emit_requant(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        self.requant_node(graph, unit, "requant", [x], out, np.asarray(graph.tensors[x].scale / graph.tensors[out].scale))

    def emit_avgpool_global(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        channels, h, w = graph.tensors[x].shape
        out = self.output(graph, unit, shape=[channels])
        keepdims = self.c.attr(unit.onnx[0], "keepdims", 1) if unit.onnx[0].op_type == "ReduceMean" else 1
        if keepdims:
            self.pooled.add(unit.output)
        multiplier = graph.tensors[x].scale / (h * w * graph.tensors[out].scale)
        self.requant_node(graph, unit, "avgpool_global", [x], out, np.asarray(multiplier))

    def emit_resize_bilinear(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        factor = graph.tensors[out].shape[1] // graph.tensors[x].shape[1]
        multiplier = graph.tensors[x].scale / (4 * factor * factor * graph.tensors[out].scale)
        self.requant_node(graph, unit, "resize_bilinear", [x], out, np.asarray(multiplier), {"factor": factor})

    def emit_resize_nearest(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        factor = graph.tensors[out].shape[1] // graph.tensors[x].shape[1]
        graph.nodes.append(Node(unit.name, "resize_nearest", [x], out, {"factor": factor}))

    def emit_maxpool(self, graph: IntGraph, unit: Unit) -> None:
        x = self.source(unit)
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "maxpool", [x], out, unit.attrs))

    def emit_concat(self, graph: IntGraph, unit: Unit) -> None:
        dtype, scale = self.q[unit.output]
        inputs = []
        for k, tensor in enumerate(unit.inputs):
            name = self.source(unit, k)
            info = graph.tensors[name]
            if (info.dtype, info.scale) != (dtype, scale):
                aligned = self.new_tensor(graph, f"{unit.output}/input{k}", info.shape, dtype, scale)
                self.requant_node(graph, Unit("requant", f"{unit.name}/requant{k}", [], aligned), "requant",
                                  [name], aligned, np.asarray(info.scale / scale))
                name = aligned
            inputs.append(name)
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "concat", inputs, out))

    def emit_flatten(self, graph: IntGraph, unit: Unit) -> None:
        x, shape = self.names[unit.inputs[0]], self.c.sample_shape(unit.output)
        if graph.tensors[x].shape == shape:
            self.names[unit.output] = x       # already that shape here (a pooled tensor is a vector)
            return
        out = self.output(graph, unit)
        graph.nodes.append(Node(unit.name, "flatten", [x], out, {"shape": shape} if len(shape) > 1 else {}))

    def emit_alias(self, graph: IntGraph, unit: Unit) -> None:
        self.names[unit.output] = self.names[unit.inputs[0]]
        if unit.inputs[0] in self.pooled:
            self.pooled.add(unit.output)

