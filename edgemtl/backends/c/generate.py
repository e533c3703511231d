"""IntGraph -> portable C99 sources: one kernel call per node over a static, liveness-planned arena.

Why our own C: the GAP9 flow needs code that runs anywhere a C99 compiler does (host, qemu rv32, the
board) and that is checked bit for bit against `intgraph.run_reference` before it ever reaches hardware.

Files written into one folder (symbols carry `prefix`, so several tasks link into one firmware, but
each folder ships its own copy of the kernels: link one of them):
- `<prefix>.h` / `<prefix>.c`: `int <prefix>_run(const <prefix>_input_t *in, <prefix>_output_t *out)`,
  the static arena, per-layer retired-instruction counters and layer names;
- `<prefix>_weights.h` / `<prefix>_weights.c`: `const` int8 weights and int32 mul / add per node;
- `kernels.h`, `kernels.c`, `kernels_typed.inc`: the kernel library (package data, copied verbatim).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgemtl.analysis.arena_plan import ArenaPlan, plan_arena
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import (FEATURE_LAST, INT8_PARAMS, INT32, MOE_PARAMS, PER_TENSOR, IntGraph, Node,
                                    worst_case_accumulator)

KERNEL_FILES = ("kernels.h", "kernels.c", "kernels_typed.inc")
SUPPORTED_OPS = ("conv", "conv_transpose", "gemm", "add", "concat", "requant", "avgpool_global", "maxpool",
                 "resize_bilinear", "resize_nearest", "flatten", "lut", "avgpool", "reduce_mean", "transpose", "slice",
                 "matmul", "add_const", "softmax", "layernorm", "moe")
_MOVES = ("concat", "maxpool", "resize_nearest", "flatten", "transpose", "slice")
SUFFIX = {"int8": "s8", "uint8": "u8"}
CTYPE = {"int8": "int8_t", "uint8": "uint8_t"}
LIMITS = {"int8": (-128, 127), "uint8": (0, 255)}
_ARRAY_NAMES = {"weight": "w", "constant": "const"}   # C names of a node's integer arrays (mul, add, exp as is)


@dataclass
class CSources:
    """What `generate_c` wrote and the facts a harness needs."""

    folder: Path
    prefix: str
    files: list[Path]
    plan: ArenaPlan
    layer_names: list[str]
    input_elements: int
    output_elements: int


def check_supported(graph: IntGraph, backend: str = "C backend") -> None:
    """Raise, naming op, layer and task, for the first node the backend (the C or the HLS C++ one: the same ops) has no
    kernel for."""
    for node in graph.nodes:
        if node.op not in SUPPORTED_OPS:
            raise EdgemtlError(f"task {graph.task!r}: layer {node.name!r} has op {node.op!r}, which the {backend} lacks"
                               f" (it has: {', '.join(SUPPORTED_OPS)})")


def check_graph(graph: IntGraph, backend: str = "C backend") -> None:
    """Everything a code generator relies on, before it writes a file: known ops, a valid graph, re-derived shapes
    (a wrong shape would be a silent buffer overrun in the generated code)."""
    check_supported(graph, backend)
    graph.validate()
    if not graph.nodes:
        raise EdgemtlError(f"task {graph.task!r}: the integer graph has no nodes, nothing to generate")
    for node in graph.nodes:
        _check_node(graph, node)


# -- shape checks: a wrong shape would be a silent buffer overrun in C, so every node is re-derived --------
def _relabelled(graph: IntGraph, node: Node, elements: int) -> list[int]:
    """The output's own shape if it holds `elements` values (ops whose output may take any shape of that size)."""
    out = graph.tensors[node.output].shape
    return list(out) if int(np.prod(out)) == elements else [elements]


def _expected_shape(graph: IntGraph, node: Node) -> list[int]:
    shapes = [graph.tensors[name].shape for name in node.inputs]
    x = shapes[0]
    if node.op == "conv":
        weight = node.params["weight"]
        groups = int(node.attrs.get("groups", 1))
        (sh, sw), (top, left, bottom, right) = node.attrs["stride"], node.attrs["pads"]
        if len(x) != 3 or weight.ndim != 4 or x[0] % groups or weight.shape[0] % groups or weight.shape[1] * groups != x[0]:
            raise ValueError(f"input {x} does not match weights {list(weight.shape)} with groups={groups}")
        return [weight.shape[0], (x[1] + top + bottom - weight.shape[2]) // sh + 1,
                (x[2] + left + right - weight.shape[3]) // sw + 1]
    if node.op == "conv_transpose":
        weight = node.params["weight"]
        if len(x) != 3 or weight.ndim != 4 or weight.shape[1] != x[0] or list(node.attrs["stride"]) != list(weight.shape[2:]):
            raise ValueError(f"input {x} does not match weights {list(weight.shape)} (kernel == stride, no padding)")
        return [weight.shape[0], x[1] * weight.shape[2], x[2] * weight.shape[3]]
    if node.op == "lut":
        lo, hi = LIMITS[graph.tensors[node.inputs[0]].dtype]
        if node.params["table"].shape not in ((hi - lo + 1,), (x[0], hi - lo + 1)):
            raise ValueError(f"has a table of {node.params['table'].shape}, expected one entry per input value "
                             f"(and channel)")
        return list(x)
    if node.op == "gemm":
        weight = node.params["weight"]
        if weight.ndim != 2 or weight.shape[1] != x[-1]:
            raise ValueError(f"input {x} does not match weights {list(weight.shape)} (gemm reads the last axis)")
        return [*x[:-1], weight.shape[0]]
    if node.op == "matmul":
        b = shapes[1]
        if len(x) < 2 or len(b) != len(x) or b[:-2] != x[:-2] or b[-2] != x[-1]:
            raise ValueError(f"multiplies {x} @ {b}")
        return [*x[:-1], b[-1]]
    if node.op == "add_const":
        if node.params["constant"].size != int(np.prod(x)):
            raise ValueError(f"adds {node.params['constant'].size} constants to a {x} tensor")
        return list(x)
    if node.op == "softmax":
        if not 0 <= int(node.attrs["axis"]) < len(x) or node.params["exp"].shape != (256,):
            raise ValueError(f"takes axis {node.attrs['axis']} of a {x} tensor with a {node.params['exp'].shape} table")
        if graph.tensors[node.output].dtype != "uint8" or not 0 < int(node.attrs["p"]) < 2**40:
            raise ValueError("must write uint8 probabilities with 0 < p < 2**40")
        return list(x)
    if node.op == "moe":
        experts, hidden, d = node.params["fc1"].shape
        top_k = int(node.attrs["top_k"])
        if (len(x) != 2 or d != x[1] or node.params["router"].shape != (experts, d) or experts > 256
                or node.params["fc2"].shape != (experts, d, hidden) or not 1 <= top_k <= experts
                or graph.tensors[node.inputs[0]].dtype != "int8" or not 0 < int(node.attrs["p"]) < 2**40):
            raise ValueError(f"routes a {x} int8 token tensor to {experts} experts ({hidden} hidden, top {top_k}; "
                             "at most 256 experts, p < 2**40)")
        return list(x)
    if node.op == "layernorm":
        if not 1 <= int(node.attrs["eps"]) < 2**40 or x[-1] > 4096:
            raise ValueError(f"has eps {node.attrs['eps']} over {x[-1]} features (1 <= eps < 2**40, <= 4096 features)")
        return list(x)
    if node.op == "reduce_mean":
        view = [int(v) for v in node.attrs["view"]]
        if int(np.prod(view)) != int(np.prod(x)):
            raise ValueError(f"views a {x} tensor as {view}")
        return _relabelled(graph, node, view[0] * view[2])
    if node.op == "transpose":
        view, perm = [int(v) for v in node.attrs["view"]], [int(v) for v in node.attrs["perm"]]
        if int(np.prod(view)) != int(np.prod(x)) or sorted(perm) != list(range(len(view))) or len(view) > 8:
            raise ValueError(f"permutes a {x} tensor viewed as {view} by {perm} (at most 8 axes)")
        return _relabelled(graph, node, int(np.prod(x)))
    if node.op == "slice":
        axis, start, stop = (int(node.attrs[k]) for k in ("axis", "start", "stop"))
        if not 0 <= axis < len(x) or not 0 <= start < stop <= x[axis]:
            raise ValueError(f"slices {start}:{stop} of axis {axis} of a {x} tensor")
        return _relabelled(graph, node, int(np.prod(x)) // x[axis] * (stop - start))
    if node.op == "add":
        if len(shapes) != 2 or shapes[1] != x:
            raise ValueError(f"adds shapes {shapes}")
        return list(x)
    if node.op == "concat":
        if any(len(s) != len(x) or s[1:] != x[1:] for s in shapes):
            raise ValueError(f"concatenates shapes {shapes} along channels")
        return [sum(s[0] for s in shapes), *x[1:]]
    if node.op == "requant":
        return list(x)
    if node.op == "avgpool_global":
        if len(x) != 3:
            raise ValueError(f"pools a {x} tensor")
        return [x[0]]
    if node.op in ("maxpool", "avgpool"):
        (kh, kw), (sh, sw), (top, left, bottom, right) = node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"]
        if len(x) != 3 or max(top, bottom) >= kh or max(left, right) >= kw:
            raise ValueError(f"pools a {x} tensor with kernel {[kh, kw]} and pads {[top, left, bottom, right]}")
        return [x[0], (x[1] + top + bottom - kh) // sh + 1, (x[2] + left + right - kw) // sw + 1]
    if node.op in ("resize_bilinear", "resize_nearest"):
        factor = int(node.attrs["factor"])
        if len(x) != 3 or factor < 1:
            raise ValueError(f"resizes a {x} tensor by {factor}")
        return [x[0], x[1] * factor, x[2] * factor]
    if node.op == "flatten":
        shape = [int(d) for d in node.attrs.get("shape", [int(np.prod(x))])]
        if int(np.prod(shape)) != int(np.prod(x)):
            raise ValueError(f"reshapes a {x} tensor to {shape}")
        return shape
    raise ValueError(f"unknown op {node.op!r}")


def _check_node(graph: IntGraph, node: Node) -> None:
    out = graph.tensors[node.output]
    try:
        expected = _expected_shape(graph, node)
        if list(out.shape) != expected:
            raise ValueError(f"declares output shape {out.shape}, the op gives {expected}")
        if node.op in _MOVES:
            dtypes = {graph.tensors[name].dtype for name in node.inputs}
            if dtypes != {out.dtype}:
                raise ValueError(f"moves {sorted(dtypes)} data into a {out.dtype} tensor without requantising")
        if "mul" in node.params:
            channels = 1 if node.op in PER_TENSOR else out.shape[-1] if node.op in FEATURE_LAST else out.shape[0]
            for key in ("mul", "add"):
                if node.params[key].shape != (channels,):
                    raise ValueError(f"{key} has shape {node.params[key].shape}, expected ({channels},)")
            if not 0 <= int(node.attrs["shift"]) <= 31:
                raise ValueError(f"shift {node.attrs['shift']} is outside 0..31")
    except (ValueError, KeyError) as error:
        raise EdgemtlError(f"task {graph.task!r}: layer {node.name!r} ({node.op}) {error}") from None


def fits_int32(node: Node, graph: IntGraph) -> bool:
    """Whether acc and acc * mul + add + rounding stay in int32 for every input (then the kernels may use
    their int32 requantisation, the fast path on a 32-bit core; otherwise they evaluate it in int64)."""
    acc = worst_case_accumulator(node, graph.tensors)
    shift = int(node.attrs["shift"])
    total = (acc * np.abs(node.params["mul"].astype(np.int64)) + np.abs(node.params["add"].astype(np.int64))
             + (1 << (shift - 1) if shift > 0 else 0))
    return bool(acc.max() <= INT32[1] and total.max() <= INT32[1])


# -- C text helpers ---------------------------------------------------------------------------------------
def _c_string(text: str) -> str:
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append("\\" + char if char in '"\\' else char if 32 <= byte < 127 and char not in "?*" else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def c_int(value: int) -> str:
    return "(-2147483647 - 1)" if value == -(2**31) else str(value)


def _c_array(ctype: str, name: str, values: np.ndarray, per_line: int = 24) -> str:
    flat = [c_int(int(v)) for v in values.reshape(-1)]
    lines = [", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line)]
    return f"const {ctype} {name}[{len(flat)}] = {{\n    " + ",\n    ".join(lines) + "\n};\n"


def _check_prefix(prefix: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise EdgemtlError(f"C prefix {prefix!r} is not a C identifier; use letters, digits and underscores")


# -- one kernel call per node -------------------------------------------------------------------------------
class _Emitter:
    def __init__(self, graph: IntGraph, plan: ArenaPlan, prefix: str) -> None:
        self.graph, self.plan, self.prefix = graph, plan, prefix
        self.arena = f"{prefix}_arena"

    def ptr(self, name: str, typed: bool = True) -> str:
        address = f"{self.arena} + {self.plan.offsets[name]}"
        if not typed:
            return f"({address})"
        return f"(const {CTYPE[self.graph.tensors[name].dtype]} *)({address})"

    def requant(self, index: int, node: Node) -> str:
        lo, hi = LIMITS[self.graph.tensors[node.output].dtype]
        narrow = int(fits_int32(node, self.graph))
        return (f"static const emk_requant_t rq{index} = {{{self.prefix}_mul{index}, {self.prefix}_add{index}, "
                f"{int(node.attrs['shift'])}, {lo}, {hi}, {narrow}}};")

    def node(self, index: int, node: Node) -> list[str]:
        """The statement(s) computing `node` (empty for an aliased flatten)."""
        g, op = self.graph, node.op
        x_name = node.inputs[0]
        x, out = g.tensors[x_name], g.tensors[node.output]
        sfx, y = SUFFIX[x.dtype], self.ptr(node.output, typed=False)
        if op == "conv":
            (sh, sw), (top, left, _, _) = node.attrs["stride"], node.attrs["pads"]
            k, _, kh, kw = node.params["weight"].shape
            geometry = [*x.shape, k, *out.shape[1:], kh, kw, sh, sw, top, left, int(node.attrs.get("groups", 1))]
            return [f"static const emk_conv_t cv{index} = {{{', '.join(map(str, geometry))}}};", self.requant(index, node),
                    f"emk_conv_{sfx}({self.ptr(x_name)}, {self.prefix}_w{index}, &cv{index}, &rq{index}, {y});"]
        if op == "conv_transpose":
            k, _, kh, kw = node.params["weight"].shape
            geometry = [*x.shape, k, *out.shape[1:], kh, kw, kh, kw, 0, 0, 1]
            return [f"static const emk_conv_t cv{index} = {{{', '.join(map(str, geometry))}}};", self.requant(index, node),
                    f"emk_conv_transpose_{sfx}({self.ptr(x_name)}, {self.prefix}_w{index}, &cv{index}, &rq{index}, {y});"]
        if op == "lut":
            channels = x.shape[0] if node.params["table"].ndim == 2 else 1
            return [f"emk_lut({self.ptr(x_name, typed=False)}, {channels}, {x.elements // channels}, "
                    f"{self.prefix}_lut{index}, {y});"]
        if op == "gemm":
            k, c = node.params["weight"].shape
            return [self.requant(index, node),
                    f"emk_gemm_{sfx}({self.ptr(x_name)}, {self.prefix}_w{index}, {x.elements // c}, {c}, {k}, &rq{index}, {y});"]
        if op == "matmul":
            b = g.tensors[node.inputs[1]]
            batch, m, kd = int(np.prod(x.shape[:-2])), x.shape[-2], x.shape[-1]
            return [self.requant(index, node),
                    f"emk_matmul_{sfx}_{SUFFIX[b.dtype]}({self.ptr(x_name)}, {self.ptr(node.inputs[1])}, {batch}, {m}, "
                    f"{kd}, {b.shape[-1]}, &rq{index}, {y});"]
        if op == "add_const":
            return [self.requant(index, node),
                    f"emk_add_const_{sfx}({self.ptr(x_name)}, {x.elements}, {int(node.attrs['mul_a'])}, "
                    f"{self.prefix}_const{index}, &rq{index}, {y});"]
        if op in ("softmax", "slice"):
            axis = int(node.attrs["axis"])
            outer, n, inner = int(np.prod(x.shape[:axis])), x.shape[axis], int(np.prod(x.shape[axis + 1:]))
            if op == "slice":
                return [f"emk_slice({self.ptr(x_name, typed=False)}, {outer}, {n}, {inner}, {int(node.attrs['start'])}, "
                        f"{int(node.attrs['stop'])}, {y});"]
            return [f"emk_softmax_{sfx}({self.ptr(x_name)}, {outer}, {n}, {inner}, {self.prefix}_exp{index}, "
                    f"(int64_t){int(node.attrs['p'])}LL, {y});"]
        if op == "moe":
            experts, hidden, d = node.params["fc1"].shape
            tokens, top_k, p = x.shape[0], int(node.attrs["top_k"]), f"{self.prefix}_"
            arrays = ", ".join(f"{p}{key}{index}" for key in ("router", "router_mul", "router_add"))
            return [f"static int32_t moe_chosen{index}[{tokens * top_k}];",
                    f"static uint8_t moe_gates{index}[{tokens * top_k}];",
                    f"static int8_t moe_hidden{index}[{2 * hidden}];",
                    f"static int32_t moe_acc{index}[{tokens * d}];",
                    f"static const emk_moe_t moe{index} = {{{tokens}, {d}, {hidden}, {experts}, {top_k}, "
                    f"{int(node.attrs['router_shift'])}, {arrays}, {p}exp{index}, (int64_t){int(node.attrs['p'])}LL, "
                    f"{p}fc1{index}, {p}fc1_mul{index}, {p}fc1_add{index}, {p}fc1_shift{index}, {p}gelu{index}, "
                    f"{p}fc2{index}, {p}fc2_mul{index}, {p}fc2_add{index}, {p}fc2_shift{index}}};",
                    self.requant(index, node),
                    f"emk_moe_s8({self.ptr(x_name)}, &moe{index}, &rq{index}, moe_chosen{index}, moe_gates{index}, "
                    f"moe_hidden{index}, moe_acc{index}, {y});"]
        if op == "layernorm":
            d = x.shape[-1]
            return [self.requant(index, node),
                    f"emk_layernorm_{sfx}({self.ptr(x_name)}, {x.elements // d}, {d}, (int64_t){int(node.attrs['eps'])}LL, "
                    f"&rq{index}, {y});"]
        if op == "reduce_mean":
            outer, n, inner = (int(v) for v in node.attrs["view"])
            return [self.requant(index, node),
                    f"emk_reduce_mean_{sfx}({self.ptr(x_name)}, {outer}, {n}, {inner}, &rq{index}, {y});"]
        if op == "transpose":
            view, perm = [int(v) for v in node.attrs["view"]], [int(v) for v in node.attrs["perm"]]
            return [f"static const int32_t dims{index}[{len(view)}] = {{{', '.join(map(str, view))}}};",
                    f"static const int32_t perm{index}[{len(perm)}] = {{{', '.join(map(str, perm))}}};",
                    f"emk_transpose({self.ptr(x_name, typed=False)}, {len(view)}, dims{index}, perm{index}, {y});"]
        channels, per_channel = x.shape[0], x.elements // x.shape[0]
        if op == "add":
            b = node.inputs[1]
            return [self.requant(index, node),
                    f"emk_add_{sfx}_{SUFFIX[g.tensors[b].dtype]}({self.ptr(x_name)}, {self.ptr(b)}, {channels}, "
                    f"{per_channel}, {int(node.attrs['mul_a'])}, {int(node.attrs['mul_b'])}, &rq{index}, {y});"]
        if op in ("requant", "avgpool_global"):
            return [self.requant(index, node),
                    f"emk_{op}_{sfx}({self.ptr(x_name)}, {channels}, {per_channel}, &rq{index}, {y});"]
        if op in ("maxpool", "avgpool"):
            (kh, kw), (sh, sw), (top, left, _, _) = node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"]
            geometry = [*x.shape, *out.shape[1:], kh, kw, sh, sw, top, left]
            pool = f"static const emk_pool_t mp{index} = {{{', '.join(map(str, geometry))}}};"
            if op == "avgpool":
                return [pool, self.requant(index, node),
                        f"emk_avgpool_{sfx}({self.ptr(x_name)}, &mp{index}, &rq{index}, {y});"]
            return [pool, f"emk_maxpool_{sfx}({self.ptr(x_name)}, &mp{index}, {y});"]
        if op == "resize_bilinear":
            return [self.requant(index, node),
                    f"emk_resize_bilinear_{sfx}({self.ptr(x_name)}, {', '.join(map(str, x.shape))}, "
                    f"{int(node.attrs['factor'])}, &rq{index}, {y});"]
        if op == "resize_nearest":
            return [f"emk_resize_nearest({self.ptr(x_name, typed=False)}, {', '.join(map(str, x.shape))}, "
                    f"{int(node.attrs['factor'])}, {y});"]
        if op == "concat":
            pointers = ", ".join(self.ptr(name, typed=False) for name in node.inputs)
            sizes = ", ".join(str(self.plan.sizes[name]) for name in node.inputs)
            n = len(node.inputs)
            return [f"static const uint8_t *const cat{index}[{n}] = {{{pointers}}};",
                    f"static const int32_t catb{index}[{n}] = {{{sizes}}};",
                    f"emk_concat(cat{index}, catb{index}, {n}, {y});"]
        if op == "flatten":
            if self.plan.offsets[node.output] == self.plan.offsets[x_name]:
                return []
            return [f"emk_copy({self.ptr(x_name, typed=False)}, {self.plan.sizes[x_name]}, {y});"]
        raise EdgemtlError(f"task {g.task!r}: layer {node.name!r} has op {op!r}, which the C backend lacks")


def _header(graph: IntGraph, plan: ArenaPlan, prefix: str) -> str:
    p, P = prefix, prefix.upper()
    x, out = graph.tensors[graph.input], graph.tensors[graph.output]
    return f"""/* Generated by edgemtl for task {_c_string(graph.task)}: do not edit. */
#ifndef EDGEMTL_{P}_H
#define EDGEMTL_{P}_H

#include <stdint.h>

#define {P}_INPUT_ELEMENTS {x.elements}     /* shape {x.shape}, {x.dtype}, scale {x.scale!r} */
#define {P}_OUTPUT_ELEMENTS {out.elements}   /* shape {out.shape}, {out.dtype}, scale {out.scale!r} */
#define {P}_INPUT_SIGNED {int(x.dtype == "int8")}
#define {P}_OUTPUT_SIGNED {int(out.dtype == "int8")}
#define {P}_ARENA_BYTES {plan.arena_bytes}
#define {P}_LAYERS {len(graph.nodes)}

typedef {CTYPE[x.dtype]} {p}_input_t;
typedef {CTYPE[out.dtype]} {p}_output_t;

/* Runs one sample (CHW, integer-quantised input) and writes the integer output; returns 0.
 * Not reentrant: every activation lives in one static arena. */
int {p}_run(const {p}_input_t *input, {p}_output_t *output);

/* Retired instructions per layer (graph node order), accumulated over runs: counted on RISC-V through
 * minstret unless EDGEMTL_NO_INSTRET is defined, or by your own EDGEMTL_LAYER_BEGIN / END(i) macros. */
extern uint32_t {p}_layer_instructions[{P}_LAYERS];
extern const char *const {p}_layer_names[{P}_LAYERS];

#endif
"""


def _source(graph: IntGraph, plan: ArenaPlan, prefix: str) -> str:
    p, P = prefix, prefix.upper()
    emitter = _Emitter(graph, plan, prefix)
    names = ",\n    ".join(_c_string(node.name) for node in graph.nodes)
    body = []
    for index, node in enumerate(graph.nodes):
        statements = emitter.node(index, node)
        body.append(f"    /* {index}: {node.op} {_c_string(node.name)} -> {_c_string(node.output)} */")
        if not statements:
            body.append("    /* alias of its input: no code */")
            continue
        body.append("    {")
        body += [f"        {s}" for s in statements[:-1]]
        body += [f"        EDGEMTL_LAYER_BEGIN({index});", f"        {statements[-1]}", f"        EDGEMTL_LAYER_END({index});"]
        body.append("    }")
    x, out = graph.input, graph.output
    return f"""/* Generated by edgemtl for task {_c_string(graph.task)}: do not edit.
 * Arena: {plan.arena_bytes} bytes (liveness lower bound {plan.lower_bound}); weights in {p}_weights.c. */
#include "{p}.h"

#include <string.h>

#include "kernels.h"
#include "{p}_weights.h"

uint32_t {p}_layer_instructions[{P}_LAYERS];
const char *const {p}_layer_names[{P}_LAYERS] = {{
    {names}
}};

#ifndef EDGEMTL_LAYER_BEGIN
#if defined(__riscv) && !defined(EDGEMTL_NO_INSTRET)
static uint32_t {p}_layer_start;
#define EDGEMTL_LAYER_BEGIN(i) ({p}_layer_start = emk_instret())
#define EDGEMTL_LAYER_END(i) ({p}_layer_instructions[(i)] += emk_instret() - {p}_layer_start)
#else
#define EDGEMTL_LAYER_BEGIN(i) ((void)0)
#define EDGEMTL_LAYER_END(i) ((void)0)
#endif
#endif

static uint8_t {p}_arena[{P}_ARENA_BYTES] EMK_ALIGNED({plan.alignment});

int {p}_run(const {p}_input_t *input, {p}_output_t *output)
{{
    memcpy({p}_arena + {plan.offsets[x]}, input, {plan.sizes[x]});
{chr(10).join(body)}
    memcpy(output, {p}_arena + {plan.offsets[out]}, {plan.sizes[out]});
    return 0;
}}
"""


def _weights(graph: IntGraph, prefix: str) -> tuple[str, str]:
    header = [f"/* Generated by edgemtl for task {_c_string(graph.task)}: do not edit. */",
              f"#ifndef EDGEMTL_{prefix.upper()}_WEIGHTS_H", f"#define EDGEMTL_{prefix.upper()}_WEIGHTS_H", "",
              "#include <stdint.h>", ""]
    source = [f"/* Generated by edgemtl for task {_c_string(graph.task)}: do not edit. */",
              f'#include "{prefix}_weights.h"', ""]
    for index, node in enumerate(graph.nodes):
        if "table" in node.params:  # indexed by the input's raw byte (per channel); holds the output's raw byte
            lo = LIMITS[graph.tensors[node.inputs[0]].dtype][0]
            by_byte = np.atleast_2d(node.params["table"])[:, (np.arange(256) - lo) % 256] & 0xFF
            name = f"{prefix}_lut{index}"
            header.append(f"extern const uint8_t {name}[{by_byte.size}];   /* {_c_string(node.name)}: "
                          f"{len(by_byte)} table(s) by input byte */")
            source.append(_c_array("uint8_t", name, by_byte))
        for key, ctype in (("weight", "int8_t"), ("mul", "int32_t"), ("add", "int32_t"), ("constant", "int32_t"),
                           ("exp", "int32_t"),
                           *((key, "int8_t" if key in INT8_PARAMS else "int32_t") for key in MOE_PARAMS
                             if node.op == "moe")):
            if key in node.params:
                name = f"{prefix}_{_ARRAY_NAMES.get(key, key)}{index}"
                values = node.params[key]
                header.append(f"extern const {ctype} {name}[{values.size}];   /* {_c_string(node.name)}: {key} {list(values.shape)} */")
                source.append(_c_array(ctype, name, values))
    header += ["", "#endif", ""]
    return "\n".join(header), "\n".join(source)


def generate_c(graph: IntGraph, folder: Path, prefix: str = "network", alignment: int = 4) -> CSources:
    """Write the C sources for `graph` into `folder` (created) and return what was written."""
    _check_prefix(prefix)
    check_graph(graph)
    plan = plan_arena(graph, alignment=alignment)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_h, weights_c = _weights(graph, prefix)
    texts = {f"{prefix}.h": _header(graph, plan, prefix), f"{prefix}.c": _source(graph, plan, prefix),
             f"{prefix}_weights.h": weights_h, f"{prefix}_weights.c": weights_c}
    files = []
    for name, text in texts.items():
        (folder / name).write_text(text)
        files.append(folder / name)
    library = resources.files("edgemtl.backends.c")
    for name in KERNEL_FILES:
        with resources.as_file(library / name) as source:
            shutil.copyfile(source, folder / name)
        files.append(folder / name)
    return CSources(folder=folder, prefix=prefix, files=files, plan=plan,
                    layer_names=[node.name for node in graph.nodes],
                    input_elements=graph.tensors[graph.input].elements,
                    output_elements=graph.tensors[graph.output].elements)
