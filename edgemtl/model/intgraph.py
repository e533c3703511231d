"""An integer-only graph of one task path, and its bit-exact numpy reference executor.

This is what the MCU target's backends consume (the integer ONNX for Deeploy, our portable C) and the
ground truth every one of them is checked against: the C code must give EXACTLY `run_reference`'s output.

Numbers: every activation tensor is int8 or uint8 with a symmetric real scale
(`real = scale * q`, zero point 0). Every compute node accumulates in int32 and ends in a fused
requantisation, Deeploy's `RequantShift`:

    out = clip((acc * mul[c] + add[c] + 2**(shift - 1)) >> shift, lo, hi)      (>> = arithmetic, floor)

with `mul`, `add` per output channel (int32), one `shift` per node (0 <= shift <= 31; no rounding term
when shift == 0), and [lo, hi] = [-128, 127] for int8 or [0, 255] for uint8 (a ReLU is an uint8 output).
A conv / gemm bias is folded into `add` (add = bias * mul, so `add` stays a multiple of `mul`, as Deeploy
wants). The product `acc * mul + add` is evaluated exactly here (int64); the quantizer chooses `mul` so
that it fits in int32 for the worst-case accumulator (`check_int32`), so int32 kernels (Deeploy's) agree.

Ops (attributes in `Node.attrs`, integer arrays in `Node.params`; shapes are per sample, CHW):
- conv     x (C,H,W) -> (K,H',W'). attrs: stride [sh,sw], pads [top,left,bottom,right], groups.
           params: weight int8 (K, C/groups, kh, kw), mul, add (K,), shift in attrs. Zero padding.
- gemm     x (C,) -> (K,). params: weight int8 (K, C), mul, add (K,).
- add      a, b (same shape) -> out: acc = a * mul_a + b * mul_b (scalars in attrs), then requant with
           mul = 1 (params: mul, add of shape (C,)), shift in attrs. Lets the two inputs differ in scale.
- concat   inputs (C_i,H,W) -> (sum C_i,H,W) along channels; every input must already share the output's
           scale and dtype (the quantizer inserts `requant` nodes where they do not).
- requant  x -> requant(x) per channel: params mul, add (C,); the elementwise form of the above.
- avgpool_global  x (C,H,W) -> (C,): acc = sum over H*W, then requant (the 1/(H*W) lives in mul/shift).
- maxpool  x -> max over windows; attrs: kernel [kh,kw], stride, pads (padding never wins). Same scale.
- resize_bilinear  x (C,H,W) -> (C, H*f, W*f), integer factor f, PyTorch's align_corners=False rule
           (source coordinate (d + 0.5) / f - 0.5, clamped at 0 and to the last row/column). Each weight
           is an exact multiple of 1 / (2f) per axis, so acc = sum of wy * wx * x over the four neighbours,
           with wy, wx integers in units of 1 / (2f), is exact; then requant (the 1 / (4 f^2) in mul/shift).
- resize_nearest   x -> (C, H*f, W*f), integer factor f: a copy, same scale.
- flatten  (C,1,1) -> (C,), or to attrs["shape"]: a relabelling, same scale.
- lut      an elementwise function as a table over every input value: params table (n,) or (C, n).
- reduce_mean  x viewed as attrs["view"] = (outer, n, inner), summed over n, then per-tensor requant.
- avgpool  x (C,H,W) -> window sums (zeros padded, the divisor always kh * kw) then requant; attrs as maxpool.

Token tensors (transformers): a tensor is any per-sample shape; `gemm` also takes rows (..., C) -> (..., K),
and `gemm` and `layernorm` index mul / add by the LAST axis (the feature), every other op by the first.
- transpose  x viewed as attrs["view"] (same elements), axes permuted by attrs["perm"]: a copy, same scale.
- slice      x[start:stop] along attrs["axis"], then relabelled to the output's shape: a copy, same scale.
- matmul     a (..., M, K) @ b (..., K, N), both activations, int32 accumulator; per-tensor requant (mul (1,)).
- add_const  acc = x * mul_a + params["constant"] (int32, one per element), then requant with mul = 1.
- softmax    along attrs["axis"] (I-BERT's idea, exact in integers): d = max - x (0..255), e = exp_table[d]
             (int32, exp_table[0] = 2**16), m = floor((p << 16) / sum e), y = clip((e * m + 2**31) >> 32, 0, 255),
             p = round(2**16 / output scale): uint8 probabilities at a calibrated scale.
- layernorm  over the last axis (D), in int64 and exact: c = D * x - sum x, S = sum c^2 + eps (eps = D^3 *
             epsilon / s_in^2, >= 1), m = (62 - bit_length(S)) // 2, r = isqrt(S << 2m), inv = 2**62 // r,
             z = (c * inv + 2**(45 - m)) >> (46 - m)   (= 2**16 * c / sqrt(S), |z| <= 2**16),
             then requant of z with per-feature mul / add (gamma * sqrt(D), beta folded in).
- moe        a task-conditioned top-k mixture of expert MLPs on tokens x (T, D), run expert by expert (M3ViT's
             expert-major order: each expert's weights are read once, only for the tokens routed to it):
             logits = requant(x @ router^T) int8 (T, E) (the task's embedding folded into the router's add);
             each token takes its top_k logits (ties: the lower expert index first) and gates
             g = softmax of those k logits (the softmax above: exp table, p, uint8);
             expert e: h = requant_e(x @ fc1[e]^T) int8, a = gelu[h] (a table by h + 128), y = requant_e(a @ fc2[e]^T)
             int8 (mul / add per feature, one shift per expert); acc = sum over a token's k experts of g * y (int32),
             then requant with one mul / add. params: router (E, D), router_mul / router_add (E,), exp (256,),
             fc1 (E, H, D), fc1_mul / fc1_add (E, H), fc1_shift (E,), gelu (256,), fc2 (E, D, H), fc2_mul / fc2_add
             (E, D), fc2_shift (E,), mul / add (1,); attrs: router_shift, top_k, p, shift.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgemtl.errors import EdgemtlError

DType = Literal["int8", "uint8"]
RANGES: dict[str, tuple[int, int]] = {"int8": (-128, 127), "uint8": (0, 255)}
OPS = ("conv", "conv_transpose", "gemm", "add", "concat", "requant", "avgpool_global", "maxpool", "resize_bilinear",
       "resize_nearest", "flatten", "lut", "avgpool", "transpose", "slice", "matmul", "add_const", "softmax",
       "layernorm", "reduce_mean", "moe")
FEATURE_LAST = ("gemm", "layernorm")        # mul / add index the last axis
PER_TENSOR = ("matmul", "add_const", "reduce_mean", "moe")        # mul / add have one entry
MOE_PARAMS = ("router", "router_mul", "router_add", "fc1", "fc1_mul", "fc1_add", "fc1_shift", "gelu", "fc2", "fc2_mul",
              "fc2_add", "fc2_shift")         # a moe node's arrays besides exp, mul, add
INT8_PARAMS = ("weight", "router", "fc1", "fc2", "gelu")   # arrays held as int8 (weights, tables); the rest int32
LAYERNORM_Z_BITS = 16                       # layernorm's normalised value z is 2**16 * c / sqrt(S)
INT32 = (-(2**31), 2**31 - 1)


@dataclass
class TensorInfo:
    name: str
    shape: list[int]          # per sample, no batch axis: [C, H, W], [C], or tokens [T, D] ...
    dtype: DType
    scale: float              # real value = scale * q

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Node:
    name: str                 # the float layer it came from (error messages, per-layer reports)
    op: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class IntGraph:
    """One task path, topologically ordered, one input and one output tensor."""

    task: str
    input: str
    output: str
    tensors: dict[str, TensorInfo]
    nodes: list[Node]

    def validate(self) -> None:
        """Names resolve, ops are known, parameters have integer dtypes and int8 weights stay in range."""
        known = {self.input}
        for node in self.nodes:
            if node.op not in OPS:
                raise EdgemtlError(f"task {self.task!r}: layer {node.name!r} has op {node.op!r}, which the integer graph lacks")
            missing = [i for i in node.inputs if i not in known]
            if missing:
                raise EdgemtlError(f"task {self.task!r}: layer {node.name!r} reads {missing} before they are computed")
            for key, value in node.params.items():
                if not np.issubdtype(value.dtype, np.integer):
                    raise EdgemtlError(f"task {self.task!r}: layer {node.name!r} parameter {key!r} is not integer")
            if "weight" in node.params and (node.params["weight"].min() < -128 or node.params["weight"].max() > 127):
                raise EdgemtlError(f"task {self.task!r}: layer {node.name!r} weights leave int8")
            known.add(node.output)
        if self.output not in known:
            raise EdgemtlError(f"task {self.task!r}: the output {self.output!r} is never computed")

    def weight_bytes(self) -> int:
        return int(sum(v.nbytes for n in self.nodes for v in n.params.values()))

    # -- persistence: graph.json (structure, scales) + params.npz (integer arrays) ------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        structure = {"task": self.task, "input": self.input, "output": self.output,
                     "tensors": {k: asdict(v) for k, v in self.tensors.items()},
                     "nodes": [{"name": n.name, "op": n.op, "inputs": n.inputs, "output": n.output, "attrs": n.attrs,
                                "params": sorted(n.params)} for n in self.nodes]}
        (folder / "graph.json").write_text(json.dumps(structure, indent=1))
        np.savez(folder / "params.npz", **{f"{i}/{k}": v for i, n in enumerate(self.nodes) for k, v in n.params.items()})

    @classmethod
    def load(cls, folder: Path) -> "IntGraph":
        structure = json.loads((folder / "graph.json").read_text())
        arrays = np.load(folder / "params.npz")
        nodes = [Node(n["name"], n["op"], n["inputs"], n["output"], n["attrs"], {k: arrays[f"{i}/{k}"] for k in n["params"]})
                 for i, n in enumerate(structure["nodes"])]
        tensors = {k: TensorInfo(**v) for k, v in structure["tensors"].items()}
        return cls(structure["task"], structure["input"], structure["output"], tensors, nodes)


def requantize(acc: np.ndarray, mul: np.ndarray, add: np.ndarray, shift: int, dtype: DType, channel_axis: int = 1) -> np.ndarray:
    """clip((acc * mul + add + 2**(shift-1)) >> shift): exact in int64, per-channel mul/add on `channel_axis`
    (one value each: the whole tensor)."""
    shape = [1] * acc.ndim
    if mul.size > 1:
        shape[channel_axis] = -1
    value = acc.astype(np.int64) * mul.astype(np.int64).reshape(shape) + add.astype(np.int64).reshape(shape)
    if shift > 0:
        value = (value + (1 << (shift - 1))) >> shift
    lo, hi = RANGES[dtype]
    return np.clip(value, lo, hi)


def quantize_input(graph: IntGraph, images: np.ndarray) -> np.ndarray:
    """Normalised float images (N,C,H,W) -> the integer input tensor (round half to even, saturate)."""
    info = graph.tensors[graph.input]
    lo, hi = RANGES[info.dtype]
    return np.clip(np.rint(images / info.scale), lo, hi).astype(np.int64)


def bilinear_taps(size: int, factor: int) -> list[tuple[int, int, int, int]]:
    """Per output index along one axis: (i0, i1, w0, w1) with integer weights summing to 2 * factor."""
    taps = []
    for d in range(size * factor):
        numerator = 2 * d + 1 - factor            # source coordinate * 2f = (2d + 1) - f
        if numerator < 0:
            numerator = 0                          # PyTorch clamps negative source coordinates to 0
        i0, frac = divmod(numerator, 2 * factor)
        i1 = min(i0 + 1, size - 1)
        taps.append((i0, i1, 2 * factor - frac, frac))
    return taps


def _pad(x: np.ndarray, pads: list[int], value: int = 0) -> np.ndarray:
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _conv_acc(x: np.ndarray, weight: np.ndarray, stride: list[int], pads: list[int], groups: int) -> np.ndarray:
    x = _pad(x, pads)
    n, c, h, w = x.shape
    k, cg, kh, kw = weight.shape
    oh, ow = (h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1
    out = np.zeros((n, k, oh, ow), dtype=np.int64)
    per_group = k // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        ws = weight[g * per_group:(g + 1) * per_group].astype(np.int64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + stride[0] * oh:stride[0], j:j + stride[1] * ow:stride[1]]
                out[:, g * per_group:(g + 1) * per_group] += np.einsum("nchw,kc->nkhw", patch, ws[:, :, i, j])
    return out


def _conv_transpose_acc(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Kernel == stride, no padding (a learnt upsampling): input pixel (i, j) alone makes output block
    (i*kh .. i*kh+kh-1, j*kw ..), out[k, i*kh + a, j*kw + b] = sum_c x[c, i, j] * w[k, c, a, b]."""
    n, _, h, w = x.shape
    k, _, kh, kw = weight.shape
    blocks = np.einsum("ncij,kcab->nkiajb", x.astype(np.int64), weight.astype(np.int64))
    return blocks.reshape(n, k, h * kh, w * kw)


def lut_index(x: np.ndarray, dtype: str) -> np.ndarray:
    """Where an input value sits in a `lut` node's table: the table lists outputs for inputs lo .. hi."""
    return x - RANGES[dtype][0]


def _resize_bilinear_acc(x: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = bilinear_taps(x.shape[2], factor), bilinear_taps(x.shape[3], factor)
    r0, r1, wr0, wr1 = (np.array(v) for v in zip(*rows))
    c0, c1, wc0, wc1 = (np.array(v) for v in zip(*cols))
    top = x[:, :, r0] * wr0[None, None, :, None] + x[:, :, r1] * wr1[None, None, :, None]
    return top[:, :, :, c0] * wc0 + top[:, :, :, c1] * wc1


def _maxpool(x: np.ndarray, kernel: list[int], stride: list[int], pads: list[int]) -> np.ndarray:
    x = _pad(x, pads, value=-(2**31))
    n, c, h, w = x.shape
    oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
    out = np.full((n, c, oh, ow), -(2**31), dtype=np.int64)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            out = np.maximum(out, x[:, :, i:i + stride[0] * oh:stride[0], j:j + stride[1] * ow:stride[1]])
    return out


def _avgpool_acc(x: np.ndarray, kernel: list[int], stride: list[int], pads: list[int]) -> np.ndarray:
    x = _pad(x, pads)
    n, c, h, w = x.shape
    oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
    out = np.zeros((n, c, oh, ow), dtype=np.int64)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            out += x[:, :, i:i + stride[0] * oh:stride[0], j:j + stride[1] * ow:stride[1]]
    return out


def bit_length(values: np.ndarray) -> np.ndarray:
    """Per element of a non-negative int64 array: the number of bits of its value (0 for 0)."""
    values = values.astype(np.int64)
    return sum(((values >> k) > 0).astype(np.int64) for k in range(63))


def isqrt(values: np.ndarray) -> np.ndarray:
    """Per element of a non-negative int64 array below 2**62: floor(sqrt(v)), exactly."""
    values = values.astype(np.int64)
    root = np.floor(np.sqrt(values.astype(np.float64))).astype(np.int64)
    for _ in range(4):  # float64's root is off by at most a few units: correct it in integers
        root = np.where(root * root > values, root - 1, root)
        root = np.where((root + 1) * (root + 1) <= values, root + 1, root)
    return root


def layernorm_z(x: np.ndarray, eps: int) -> np.ndarray:
    """The layernorm's normalised value over the last axis, z = 2**16 * c / sqrt(S) in integers (see above)."""
    x = x.astype(np.int64)
    d = x.shape[-1]
    c = d * x - x.sum(axis=-1, keepdims=True)
    total = (c * c).sum(axis=-1, keepdims=True) + int(eps)
    m = (62 - bit_length(total)) // 2
    inv = (np.int64(1) << 62) // isqrt(total << (2 * m))
    shift = 62 - LAYERNORM_Z_BITS - m
    return (c * inv + (np.int64(1) << (shift - 1))) >> shift


def softmax_exp_table(in_scale: float) -> np.ndarray:
    """exp(-d * in_scale) * 2**16 for d = 0 .. 255 (the softmax's numerators), int32."""
    return np.rint(np.exp(-np.arange(256, dtype=np.float64) * in_scale) * 2.0**16).astype(np.int32)


def softmax(x: np.ndarray, axis: int, exp_table: np.ndarray, p: int) -> np.ndarray:
    """The integer softmax along `axis` (of the batched array), uint8 values."""
    e = exp_table.astype(np.int64)[x.max(axis=axis, keepdims=True) - x]
    m = (np.int64(p) << 16) // e.sum(axis=axis, keepdims=True)
    return np.clip((e * m + (np.int64(1) << 31)) >> 32, 0, 255)


def moe_route(x: np.ndarray, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """A token batch (N, T, D) -> each token's chosen experts (N, T, k) and their uint8 gates (N, T, k)."""
    p = node.params
    logits = requantize(x @ p["router"].astype(np.int64).T, p["router_mul"], p["router_add"],
                        int(node.attrs["router_shift"]), "int8", channel_axis=-1)
    chosen = np.argsort(-logits, axis=-1, kind="stable")[..., :int(node.attrs["top_k"])]
    gates = softmax(np.take_along_axis(logits, chosen, axis=-1), -1, p["exp"], int(node.attrs["p"]))
    return chosen, gates


def moe_expert(x: np.ndarray, node: Node, e: int) -> np.ndarray:
    """Expert e's int8 output for every token of x (..., D) (the C computes it for its routed tokens only)."""
    p = node.params
    h = requantize(x @ p["fc1"][e].astype(np.int64).T, p["fc1_mul"][e], p["fc1_add"][e], int(p["fc1_shift"][e]),
                   "int8", channel_axis=-1)
    a = p["gelu"].astype(np.int64)[lut_index(h, "int8")]
    return requantize(a @ p["fc2"][e].astype(np.int64).T, p["fc2_mul"][e], p["fc2_add"][e], int(p["fc2_shift"][e]),
                      "int8", channel_axis=-1)


def _moe_acc(x: np.ndarray, node: Node) -> np.ndarray:
    chosen, gates = moe_route(x, node)
    acc = np.zeros(x.shape, dtype=np.int64)
    for e in range(len(node.params["fc1"])):
        gate = (gates * (chosen == e)).sum(axis=-1, keepdims=True)   # 0 for the tokens e does not take
        acc += gate * moe_expert(x, node, e)
    return acc


def accumulator(node: Node, values: dict[str, np.ndarray]) -> np.ndarray | None:
    """The int32 accumulator a compute node requantizes (None for data-movement ops)."""
    x = values[node.inputs[0]]
    if node.op == "conv":
        return _conv_acc(x, node.params["weight"], node.attrs["stride"], node.attrs["pads"], node.attrs.get("groups", 1))
    if node.op == "conv_transpose":
        return _conv_transpose_acc(x, node.params["weight"])
    if node.op == "gemm":
        return x @ node.params["weight"].astype(np.int64).T
    if node.op == "matmul":
        return np.matmul(x, values[node.inputs[1]])
    if node.op == "moe":
        return _moe_acc(x, node)
    if node.op == "add_const":
        return x * int(node.attrs["mul_a"]) + node.params["constant"].astype(np.int64)[None]
    if node.op == "layernorm":
        return layernorm_z(x, int(node.attrs["eps"]))
    if node.op == "reduce_mean":
        outer, n, inner = node.attrs["view"]
        return x.reshape(x.shape[0], outer, n, inner).sum(axis=2)
    if node.op == "avgpool":
        return _avgpool_acc(x, node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"])
    if node.op == "add":
        return x * int(node.attrs["mul_a"]) + values[node.inputs[1]] * int(node.attrs["mul_b"])
    if node.op == "requant":
        return x
    if node.op == "avgpool_global":
        return x.sum(axis=(2, 3))
    if node.op == "resize_bilinear":
        return _resize_bilinear_acc(x, int(node.attrs["factor"]))
    return None


def run_node(node: Node, values: dict[str, np.ndarray], tensors: dict[str, TensorInfo]) -> np.ndarray:
    """One node on a batch. The result takes the output tensor's declared shape (an output declared as [] keeps
    the op's own, for graph builders)."""
    result = _natural(node, values, tensors)
    shape = tensors[node.output].shape
    return result.reshape(len(result), *shape) if shape else result


def _natural(node: Node, values: dict[str, np.ndarray], tensors: dict[str, TensorInfo]) -> np.ndarray:
    acc = accumulator(node, values)
    if acc is not None:
        return requantize(acc, node.params["mul"], node.params["add"], int(node.attrs["shift"]), tensors[node.output].dtype,
                          channel_axis=-1 if node.op in FEATURE_LAST else 1)
    x = values[node.inputs[0]]
    if node.op == "transpose":
        perm = [0, *(int(p) + 1 for p in node.attrs["perm"])]
        return x.reshape(x.shape[0], *node.attrs["view"]).transpose(perm)
    if node.op == "slice":
        return np.take(x, np.arange(int(node.attrs["start"]), int(node.attrs["stop"])), axis=int(node.attrs["axis"]) + 1)
    if node.op == "softmax":
        return softmax(x, int(node.attrs["axis"]) + 1, node.params["exp"], int(node.attrs["p"]))
    if node.op == "concat":
        return np.concatenate([values[i] for i in node.inputs], axis=1)
    if node.op == "maxpool":
        return _maxpool(x, node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"])
    if node.op == "resize_nearest":
        factor = int(node.attrs["factor"])
        return x.repeat(factor, axis=2).repeat(factor, axis=3)
    if node.op == "lut":  # an elementwise function as a table over every input value, (n,) or one per channel
        table, index = node.params["table"].astype(np.int64), lut_index(x, tensors[node.inputs[0]].dtype)
        if table.ndim == 1:
            return table[index]
        return table[np.arange(len(table)).reshape(1, -1, *[1] * (x.ndim - 2)), index]
    if node.op == "flatten":  # to a vector, or to attrs["shape"]: the same row-major bytes
        return x.reshape(x.shape[0], *node.attrs.get("shape", [-1]))
    raise EdgemtlError(f"layer {node.name!r}: the reference executor has no op {node.op!r}")


def run_reference(graph: IntGraph, q_input: np.ndarray, keep_all: bool = False) -> dict[str, np.ndarray]:
    """Execute the graph on integer inputs (N, ...) -> {output: ints}; every tensor with keep_all."""
    values = {graph.input: q_input.astype(np.int64)}
    for node in graph.nodes:
        values[node.output] = run_node(node, values, graph.tensors)
    return values if keep_all else {graph.output: values[graph.output]}


def dequantize(graph: IntGraph, q_output: np.ndarray) -> np.ndarray:
    return q_output.astype(np.float64) * graph.tensors[graph.output].scale


def worst_case_accumulator(node: Node, tensors: dict[str, TensorInfo]) -> np.ndarray:
    """Per output channel, the largest |acc| any input in the input dtypes' ranges can produce."""
    def magnitude(name: str) -> int:
        lo, hi = RANGES[tensors[name].dtype]
        return max(abs(lo), abs(hi))
    x_max = magnitude(node.inputs[0])
    if node.op == "matmul":
        k = tensors[node.inputs[0]].shape[-1]
        return np.array([k * x_max * magnitude(node.inputs[1])], dtype=np.int64)
    if node.op == "add_const":
        return np.array([x_max * abs(int(node.attrs["mul_a"])) + int(np.abs(node.params["constant"]).max())], dtype=np.int64)
    if node.op == "reduce_mean":
        return np.array([x_max * int(node.attrs["view"][1])], dtype=np.int64)
    if node.op == "moe":  # k gates of at most 255 times int8 expert outputs
        return np.array([int(node.attrs["top_k"]) * 255 * 128], dtype=np.int64)
    if node.op == "layernorm":
        return np.full(tensors[node.output].shape[-1], 1 << LAYERNORM_Z_BITS, dtype=np.int64)
    if node.op in ("conv", "gemm"):
        weight = np.abs(node.params["weight"].astype(np.int64))
        return weight.reshape(weight.shape[0], -1).sum(axis=1) * x_max
    if node.op == "conv_transpose":  # each output sums over the input channels at one kernel position
        weight = np.abs(node.params["weight"].astype(np.int64))
        return weight.sum(axis=1).reshape(weight.shape[0], -1).max(axis=1) * x_max
    channels = tensors[node.output].shape[0]
    if node.op == "add":
        total = x_max * abs(int(node.attrs["mul_a"])) + magnitude(node.inputs[1]) * abs(int(node.attrs["mul_b"]))
        return np.full(channels, total, dtype=np.int64)
    if node.op == "requant":
        return np.full(channels, x_max, dtype=np.int64)
    if node.op == "avgpool_global":
        _, h, w = tensors[node.inputs[0]].shape
        return np.full(channels, x_max * h * w, dtype=np.int64)
    if node.op == "avgpool":
        kh, kw = node.attrs["kernel"]
        return np.full(channels, x_max * int(kh) * int(kw), dtype=np.int64)
    if node.op == "resize_bilinear":
        factor = int(node.attrs["factor"])
        return np.full(channels, x_max * 4 * factor * factor, dtype=np.int64)
    return np.zeros(channels, dtype=np.int64)


def check_int32(graph: IntGraph) -> None:
    """Fail, naming the layer, where acc or acc * mul + add could leave int32 for some input."""
    for node in graph.nodes:
        if "mul" not in node.params:
            continue
        acc = worst_case_accumulator(node, graph.tensors)
        product = acc * np.abs(node.params["mul"].astype(np.int64)) + np.abs(node.params["add"].astype(np.int64))
        if acc.max() > INT32[1] or product.max() + (1 << max(int(node.attrs["shift"]) - 1, 0)) > INT32[1]:
            raise EdgemtlError(
                f"task {graph.task!r}, layer {node.name!r}: the requantisation acc * mul + add can reach "
                f"{int(product.max()):,}, beyond int32; requantize with a smaller multiplier (fewer mul bits)")
