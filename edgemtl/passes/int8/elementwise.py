"""Elementwise ONNX nodes as integer tables: what the int8 path computes for activations and constant arithmetic.

An int8 / uint8 input takes only 256 values, so any function of one value (per channel, at most) is exactly a
table of 256 outputs: the reference executor and the C look the result up, bit-exact by construction, and the only
error is the table's rounding to the output scale (half a step). This covers Sigmoid, HardSigmoid, Tanh,
LeakyRelu, PRelu (a slope per channel: a table per channel), HardSwish, Elu, Clip (ReLU6), Gelu, Erf, Exp, Neg, Abs,
Softplus, Sqrt, Reciprocal, Pow by a constant and Mul / Add / Sub / Div by a constant (a scalar, or one per channel).

A chain of such nodes that reads one activation, however it branches and joins (GELU as exported,
x * 0.5 * (1 + erf(x / sqrt 2)); SiLU x * sigmoid(x); HardSwish as x * hardsigmoid(x)), is still a function of
that one value: `region` composes it into one table, so it costs one lookup and rounds once. A lone function
with a bounded range fixes its output scale (sigmoid: uint8, 1/255); the others are calibrated like any activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import math

import numpy as np
import onnx

from edgemtl.model.intgraph import RANGES

ARITHMETIC = ("Mul", "Add", "Sub", "Div")
UNARY = {"Erf": np.vectorize(math.erf, otypes=[np.float64]), "Exp": np.exp, "Neg": np.negative, "Abs": np.abs,
         "Softplus": lambda v: np.logaddexp(0.0, v), "Sqrt": np.sqrt, "Reciprocal": lambda v: 1.0 / v}
OPS = ("Sigmoid", "HardSigmoid", "Tanh", "LeakyRelu", "PRelu", "HardSwish", "Elu", "Clip", "Gelu", "Pow", *UNARY,
       *ARITHMETIC)


@dataclass
class Elementwise:
    """One elementwise node: `function` maps float values (channels, n) to float outputs of the same shape
    (channels = 1 when the node treats every channel alike); `fixed` is the output (dtype, scale) its range
    fixes, None when the output is calibrated."""

    op: str
    function: Callable[[np.ndarray], np.ndarray]
    channels: int
    fixed: tuple[str, float] | None = None

    def outputs(self, in_dtype: str, in_scale: float) -> np.ndarray:
        """The float function at every input value lo .. hi, (channels, n)."""
        lo, hi = RANGES[in_dtype]
        values = np.broadcast_to(np.arange(lo, hi + 1, dtype=np.float64) * in_scale, (self.channels, hi - lo + 1))
        with np.errstate(divide="ignore", invalid="ignore"):  # c / 0: +-inf, saturated by the table; 0 / 0: 0
            return np.nan_to_num(self.function(values), nan=0.0, posinf=np.inf, neginf=-np.inf)

    def table(self, in_dtype: str, in_scale: float, out_dtype: str, out_scale: float) -> np.ndarray:
        """Outputs (int32) for every input value lo .. hi: shape (n,) or (channels, n)."""
        out_lo, out_hi = RANGES[out_dtype]
        table = np.clip(np.rint(self.outputs(in_dtype, in_scale) / out_scale), out_lo, out_hi).astype(np.int32)
        return table[0] if self.channels == 1 else table

    def nonnegative(self, in_dtype: str, in_scale: float) -> bool:
        return bool(self.outputs(in_dtype, in_scale).min() >= 0)


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(onnx.helper.get_attribute_value(a))
    return default


def _attr_text(node: onnx.NodeProto, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else str(value)
    return default


def _per_channel(constant: np.ndarray, sample_shape: list[int]) -> np.ndarray | None:
    """A constant as (channels, 1): one value, or one value per channel of a sample (ONNX broadcasting against
    (1, *sample_shape)); None when it varies along another axis."""
    constant = np.asarray(constant, dtype=np.float64)
    if constant.size == 1:
        return constant.reshape(1, 1)
    try:
        full = np.broadcast_to(constant, (1, *sample_shape)).reshape(sample_shape[0], -1)
    except ValueError:
        return None
    return full[:, :1] if np.all(full == full[:, :1]) else None


def elementwise(node: onnx.NodeProto, activation: str, constants: dict[str, np.ndarray],
                sample_shape: list[int]) -> Elementwise | str:
    """The table form of `node` (reading `activation`, its one non-constant input), or why it has none."""
    op = node.op_type
    if op == "Sigmoid":
        return Elementwise(op, lambda v: 1.0 / (1.0 + np.exp(-v)), 1, ("uint8", 1.0 / 255))
    if op == "HardSigmoid":
        alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
        return Elementwise(op, lambda v: np.clip(alpha * v + beta, 0.0, 1.0), 1, ("uint8", 1.0 / 255))
    if op == "Tanh":
        return Elementwise(op, np.tanh, 1, ("int8", 1.0 / 127))
    if op == "LeakyRelu":
        alpha = _attr(node, "alpha", 0.01)
        return Elementwise(op, lambda v: np.where(v >= 0, v, alpha * v), 1)
    if op == "HardSwish":
        return Elementwise(op, lambda v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0), 1)
    if op == "Elu":
        alpha = _attr(node, "alpha", 1.0)
        return Elementwise(op, lambda v: np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0.0))), 1)
    if op in UNARY:
        return Elementwise(op, UNARY[op], 1)
    if op == "Gelu":
        if _attr_text(node, "approximate", "none") == "tanh":
            return Elementwise(op, lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))), 1)
        return Elementwise(op, lambda v: 0.5 * v * (1 + UNARY["Erf"](v / math.sqrt(2))), 1)
    if op == "Pow":
        if node.input[0] != activation or node.input[1] not in constants or np.asarray(constants[node.input[1]]).size != 1:
            return "an exponent computed at run time"
        exponent = float(np.asarray(constants[node.input[1]]).reshape(-1)[0])
        return Elementwise(op, lambda v: np.power(v, exponent), 1)
    if op == "Clip":
        names = list(node.input[1:])
        if any(name and name not in constants for name in names):
            return "bounds computed at run time"
        low = float(constants[names[0]]) if names and names[0] else _attr(node, "min", -np.inf)
        high = float(constants[names[1]]) if len(names) > 1 and names[1] else _attr(node, "max", np.inf)
        return Elementwise(op, lambda v: np.clip(v, low, high), 1)
    if op == "PRelu":
        slope = _per_channel(constants[node.input[1]], sample_shape) if node.input[1] in constants else None
        if slope is None:
            return "a slope that is neither one value nor one per channel"
        return Elementwise(op, lambda v: np.where(v >= 0, v, slope * v), len(slope))
    if op in ARITHMETIC:
        other = [name for name in node.input if name != activation]
        constant = _per_channel(constants[other[0]], sample_shape) if len(other) == 1 and other[0] in constants else None
        if constant is None:
            return "a constant that is neither one value nor one per channel"
        first = node.input[0] == activation
        functions = {"Mul": lambda v: v * constant, "Add": lambda v: v + constant,
                     "Sub": (lambda v: v - constant) if first else (lambda v: constant - v),
                     "Div": (lambda v: v / constant) if first else (lambda v: constant / v)}
        return Elementwise(op, functions[op], len(constant))
    return f"no table form for {op}"


BINARY = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}
# what the usual chains are called (the name goes into the manifest's per-layer record)
KNOWN_CHAINS = {"HardSigmoid+Mul": "HardSwish", "Sigmoid+Mul": "SiLU", "Div+Erf+Add+Mul": "Gelu",
                "Mul+Erf+Add": "Gelu", "Mul+Pow+Add+Tanh": "Gelu (tanh)", "Softplus+Tanh+Mul": "Mish"}


def region(nodes: list[onnx.NodeProto], activation: str, constants: dict[str, np.ndarray],
           sample_shape: list[int]) -> Elementwise | str:
    """Nodes (in graph order) that together compute one value from `activation` alone, as one table: each reads
    `activation`, the output of an earlier node of the list, or constants; the last node's output is the result."""
    steps: list[tuple[onnx.NodeProto, Callable[[dict[str, np.ndarray]], np.ndarray]]] = []
    known = {activation}
    channels = 1
    for node in nodes:
        reads = [name for name in node.input if name in known]
        if len(reads) == 2 and node.op_type in BINARY and len(node.input) == 2:
            a, b = node.input
            steps.append((node, lambda values, f=BINARY[node.op_type], a=a, b=b: f(values[a], values[b])))
        elif len(set(reads)) == 1:
            form = elementwise(node, reads[0], constants, sample_shape)
            if isinstance(form, str):
                return f"{node.op_type}: {form}"
            channels = max(channels, form.channels)
            steps.append((node, lambda values, f=form.function, a=reads[0]: f(values[a])))
        else:
            return f"{node.op_type} reads more than the one activation"
        known.add(node.output[0])
    out = nodes[-1].output[0]

    def function(v: np.ndarray) -> np.ndarray:
        values = {activation: v}
        for node, step in steps:
            values[node.output[0]] = step(values)
        return np.broadcast_to(values[out], v.shape)

    if len(nodes) == 1:
        single = elementwise(nodes[0], activation, constants, sample_shape)
        if isinstance(single, Elementwise):
            return single
    names = "+".join(dict.fromkeys(n.op_type for n in nodes))
    return Elementwise(KNOWN_CHAINS.get(names, names), function, channels)
