"""IntGraph -> Vitis HLS C++ for Xilinx FPGAs (the ZCU104), one kernel call per node, bit-exact with the reference.

Why our own HLS C++ next to hls4ml: M3ViT's task-conditioned mixture of experts dispatches tokens by data
(top-k routing, per-expert token lists), which hls4ml's layer catalogue cannot express. This backend emits the
integer graph as template kernel calls (kernels.h), with the MoE run expert-major and double-buffered as the
hardware would run it.

Files written into `folder` (a Vitis HLS project; the C simulation builds it with g++, csim.py):
- `firmware/<top>.h`, `firmware/<top>.cpp`: `void <top>(const <top>_in_t input[N], <top>_out_t output[M])`, the
  data on m_axi ports and control on s_axilite; the tensors in static arrays, each reused once its tensor is dead
  (arrays.py; a flatten keeps its input's);
- `firmware/<top>_weights.h`: weights, mul / add, tables as `static const` int8_t / int32_t arrays in a namespace.
  Plain C integer types, not ap_int: g++ initialises an ap_int array element by element at run time, and compiling
  the initialiser grows with the array (measured: 100,000 ap_int<8> values 500 s and 4 GB at -O2; as int8_t 0.7 s).
  Vitis HLS synthesises both the same way (ROMs of 8 / 32-bit words); the kernels widen on read;
- `firmware/kernels.h`: the kernel templates (package data, copied verbatim);
- `<top>_test.cpp`: the test bench, `main(argc, argv)` with argv[1] = raw input bytes of n samples, argv[2] = the
  raw output bytes it writes, optional argv[3] = expected outputs (then it exits 1 on any difference);
- `build_prj.tcl`: the Vitis HLS script (C simulation on tb_data/, synthesis at 200 MHz, IP export);
- `io.json`: the top's name, the input and output tensors (shape, dtype, scale) and how a float input becomes the
  integer input: what the board kit's hls_cpp_design.tcl and hls_cpp_driver.py read, so they need no edgemtl.

Bit widths: each node's accumulator and requantisation widths are derived from its worst-case accumulator
(intgraph.worst_case_accumulator, the bound intgraph.check_int32 and the C backend's fits_int32 also use), so they
are exact by construction and no wider than the data needs.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgemtl.analysis.memory_plan import MoELayerPlan, plan_moe_layer
from edgemtl.backends.hls_cpp.arrays import AP_TYPE, declarations, graph_arrays
from edgemtl.backends.c.generate import c_int, check_graph, fits_int32
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import INT8_PARAMS, MOE_PARAMS, RANGES, IntGraph, Node, worst_case_accumulator

KERNEL_FILES = ("kernels.h",)
PART = "xczu7ev-ffvc1156-2-e"   # the ZCU104's Zynq UltraScale+
CLOCK_PERIOD_NS = 5              # 200 MHz
C_TYPE = {"int8": "int8_t", "uint8": "uint8_t"}
MAX_BITS = 64                    # the reference evaluates in int64: a wider bound would overflow there
SHORT = {"weight": "w", "constant": "const"}   # a parameter's array name in <top>_weights.h: <short>_<node index>
MOE_ARRAYS = ("router", "router_mul", "router_add", "exp", "fc1", "fc1_mul", "fc1_add", "fc1_shift", "gelu", "fc2",
              "fc2_mul", "fc2_add", "fc2_shift", "mul", "add")   # the moe kernel's table arguments, in order


@dataclass
class MoeMemory:
    """One moe node's on-chip bytes in the generated kernel, and memory_plan's expert-major plan of the same layer
    (at one byte per value: its biases where the kernel holds a 32-bit mul and add per feature)."""

    layer: str
    buffers: int            # experts on chip at once: 2, ping-pong
    expert_bytes: int       # one buffer: fc1 and fc2 int8, their mul / add int32, two shifts
    router_bytes: int       # the router's rows int8, its mul / add int32
    table_bytes: int        # the gates' exp table (int32) and the GELU table (int8)
    activation_bytes: int   # input tokens, accumulators, token tile, hidden tile, token lists
    plan: MoELayerPlan

    @property
    def weight_bytes(self) -> int:
        return self.buffers * self.expert_bytes + self.router_bytes + self.table_bytes


@dataclass
class HlsSources:
    """What `generate_hls` wrote and the facts a test bench needs."""

    folder: Path
    top: str
    files: list[Path]
    input_shape: list[int]
    output_shape: list[int]
    input_dtype: str
    output_dtype: str
    moe: list[MoeMemory] = field(default_factory=list)

    @property
    def input_elements(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_elements(self) -> int:
        return int(np.prod(self.output_shape))


# -- bit widths --------------------------------------------------------------------------------------------------
def _signed_bits(bound: int) -> int:
    """Bits of an ap_int holding every value in [-bound, bound]."""
    return max(int(bound).bit_length() + 1, 2)


def _requant_bound(acc: np.ndarray, mul: np.ndarray, add: np.ndarray, shift: np.ndarray | int) -> int:
    """The largest |acc * mul + add + 2^(shift - 1)| (per channel bounds; shift per channel or one), in Python ints."""
    columns = [np.asarray(v).reshape(-1) for v in (acc, mul, add, shift)]
    n = max(len(c) for c in columns)
    acc, mul, add, shifts = (np.broadcast_to(c, (n,)).tolist() for c in columns)
    return max(int(a) * abs(int(m)) + abs(int(d)) + (1 << (int(s) - 1) if int(s) > 0 else 0)
               for a, m, d, s in zip(acc, mul, add, shifts))


def _checked_bits(graph: IntGraph, node: Node, bound: int, what: str) -> int:
    bits = _signed_bits(bound)
    if bits > MAX_BITS:
        raise EdgemtlError(f"task {graph.task!r}: layer {node.name!r} ({node.op}) {what} can reach {bound:,}, beyond int64; "
                           "requantize with a smaller multiplier")
    return bits


def node_widths(graph: IntGraph, node: Node) -> tuple[int, int]:
    """(accumulator bits, requantisation bits) of a node that requantizes."""
    acc = worst_case_accumulator(node, graph.tensors).astype(object)
    total = _requant_bound(acc, node.params["mul"], node.params["add"], int(node.attrs["shift"]))
    return (_checked_bits(graph, node, int(max(acc)), "the accumulator"),
            _checked_bits(graph, node, total, "the requantisation acc * mul + add"))


def moe_widths(graph: IntGraph, node: Node) -> list[int]:
    """Router, fc1 and fc2 (accumulator, requantisation) bits, then the output's: the moe template's width order."""
    p = node.params
    x_max = 128  # int8 tokens
    router_acc = np.abs(p["router"].astype(np.int64)).sum(axis=1) * x_max
    fc1_acc = np.abs(p["fc1"].astype(np.int64)).sum(axis=2) * x_max                       # (E, H)
    fc2_acc = np.abs(p["fc2"].astype(np.int64)).sum(axis=2) * max(int(np.abs(p["gelu"]).max()), 1)   # (E, D)
    hidden, d = fc1_acc.shape[1], fc2_acc.shape[1]
    bounds = [(router_acc, _requant_bound(router_acc, p["router_mul"], p["router_add"], int(node.attrs["router_shift"]))),
              (fc1_acc, _requant_bound(fc1_acc, p["fc1_mul"], p["fc1_add"], np.repeat(p["fc1_shift"], hidden))),
              (fc2_acc, _requant_bound(fc2_acc, p["fc2_mul"], p["fc2_add"], np.repeat(p["fc2_shift"], d)))]
    widths = []
    for (acc, total), what in zip(bounds, ("router", "fc1", "fc2")):
        widths += [_checked_bits(graph, node, int(acc.max()), f"the {what} accumulator"),
                   _checked_bits(graph, node, total, f"the {what} requantisation")]
    return widths + list(node_widths(graph, node))


# -- checks beyond the C backend's: what the HLS kernels' fixed widths rely on ------------------------------------
def _check_hls(graph: IntGraph, node: Node) -> None:
    def refuse(message: str) -> None:
        raise EdgemtlError(f"task {graph.task!r}: layer {node.name!r} ({node.op}) {message}")

    if "exp" in node.params:
        table = node.params["exp"].astype(np.int64)
        if table.min() < 0 or table.max() > 2**16 or table[0] < 1:
            refuse("has a softmax exp table outside 0 .. 2**16 (or exp[0] == 0): the kernels hold e in 17 bits")
    if node.op == "lut":
        lo, hi = RANGES[graph.tensors[node.output].dtype]
        if node.params["table"].min() < lo or node.params["table"].max() > hi:
            refuse(f"has table values outside its {graph.tensors[node.output].dtype} output range")
    if node.op == "moe":
        shifts = [int(node.attrs["router_shift"]), *node.params["fc1_shift"].tolist(), *node.params["fc2_shift"].tolist()]
        if not all(0 <= s <= 31 for s in shifts) or node.params["gelu"].shape != (256,):
            refuse("needs shifts in 0..31 and a GELU table of 256 values")
        if any(node.params[key].min() < -128 or node.params[key].max() > 127 for key in INT8_PARAMS if key in node.params):
            refuse("has router, expert weights or a GELU table outside int8")


# -- C++ text helpers ------------------------------------------------------------------------------------------
def _comment(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text).replace("*/", "* /")


def _array(ctype: str, name: str, values: np.ndarray, per_line: int = 32) -> str:
    flat = values.reshape(-1).astype(np.int64).tolist()
    text = [c_int(v) for v in flat] if ctype == "int32_t" else [str(v) for v in flat]
    lines = [", ".join(text[i:i + per_line]) for i in range(0, len(text), per_line)]
    return f"static const {ctype} {name}[{len(text)}] = {{\n    " + ",\n    ".join(lines) + "\n};\n"


def _check_top(top: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", top):
        raise EdgemtlError(f"HLS top {top!r} is not a C++ identifier; use letters, digits and underscores")


def _transpose_args(view: list[int], perm: list[int]) -> list[int]:
    """The view padded to 8 axes with leading 1s, and the permutation shifted to match."""
    pad = 8 - len(view)
    return [1] * pad + view + list(range(pad)) + [p + pad for p in perm]


def _moe_memory(graph: IntGraph, node: Node, acc_bits: int) -> MoeMemory:
    experts, hidden, d = node.params["fc1"].shape
    tokens, top_k = graph.tensors[node.inputs[0]].shape[0], int(node.attrs["top_k"])
    index_bytes = (max(tokens - 1, 1).bit_length() + 7) // 8
    activations = (tokens * d + tokens * d * ((acc_bits + 7) // 8) + tokens * d + tokens * hidden
                   + experts * tokens * (index_bytes + 1))
    return MoeMemory(node.name, buffers=min(2, experts), expert_bytes=2 * d * hidden + 8 * (hidden + d) + 8,
                     router_bytes=experts * d + 8 * experts, table_bytes=4 * 256 + 256, activation_bytes=activations,
                     plan=plan_moe_layer(node.name, d, hidden, experts, top_k, tokens, d, 0, 1.0, 1.0))


def scalar_literal(key: str, value: int) -> str:
    """A kernel's scalar argument as C++: softmax p and layernorm eps are 64-bit, the multipliers int32."""
    return f"{value}LL" if key in ("p", "eps") else c_int(value)


# -- one kernel call per node --------------------------------------------------------------------------------------
class _Emitter:
    def __init__(self, graph: IntGraph) -> None:
        self.graph = graph
        self.moe: list[MoeMemory] = []
        self.arrays = self.plan()   # tensor -> the static array holding it

    def plan(self) -> dict[str, str]:
        """Each tensor's array (arrays.py: reused once dead); keeps the arrays to declare."""
        names, self.array_list = graph_arrays(self.graph)
        return names

    def widths(self, node: Node) -> tuple[int, int]:
        """(accumulator bits, requantisation bits) the call of a requantizing node is written with."""
        return node_widths(self.graph, node)

    def scalar(self, index: int, key: str, value: int) -> str:  # noqa: ARG002 (the design serving every task needs it)
        """The expression a kernel call passes for node `index`'s scalar `key` (a multiplier, softmax p, eps)."""
        return scalar_literal(key, value)

    def param(self, index: int, key: str) -> str:
        """The expression a kernel call passes for node `index`'s parameter `key`."""
        return f"W::{SHORT.get(key, key)}_{index}"

    def node(self, index: int, node: Node) -> tuple[list[str], str]:
        """The statement(s) computing `node` and a note on its widths (no statement for a flatten)."""
        g, op = self.graph, node.op
        x, out = g.tensors[node.inputs[0]], g.tensors[node.output]
        xa, y = self.arrays[node.inputs[0]], self.arrays[node.output]
        w = f"{self.param(index, 'weight')}, " if "weight" in node.params else ""
        if "mul" in node.params and op != "moe":
            acc_bits, rq_bits = self.widths(node)
            widths = f"{acc_bits}, {rq_bits}, {int(node.attrs['shift'])}"
            note = f"acc {acc_bits} bits, requantisation {rq_bits} bits (int32-safe: {fits_int32(node, g)})"
            rq = f"{self.param(index, 'mul')}, {self.param(index, 'add')}, "
        else:
            widths, note, rq = "", "", ""
        if op == "conv":
            (sh, sw), (top, left, _, _) = node.attrs["stride"], node.attrs["pads"]
            k, _, kh, kw = node.params["weight"].shape
            dims = [*x.shape, k, *out.shape[1:], kh, kw, sh, sw, top, left, int(node.attrs.get("groups", 1))]
            return [f"emh::conv<{', '.join(map(str, dims))}, {widths}>({xa}, {w}{rq}{y});"], note
        if op == "conv_transpose":
            k, _, kh, kw = node.params["weight"].shape
            return [f"emh::conv_transpose<{', '.join(map(str, [*x.shape, k, kh, kw]))}, {widths}>({xa}, {w}{rq}{y});"], note
        if op == "gemm":
            k, c = node.params["weight"].shape
            return [f"emh::gemm<{x.elements // c}, {c}, {k}, {widths}>({xa}, {w}{rq}{y});"], note
        if op == "matmul":
            b = g.tensors[node.inputs[1]]
            dims = [int(np.prod(x.shape[:-2])), x.shape[-2], x.shape[-1], b.shape[-1]]
            return [f"emh::matmul<{', '.join(map(str, dims))}, {widths}>({xa}, {self.arrays[node.inputs[1]]}, {rq}{y});"], note
        if op == "add_const":
            mul_a = self.scalar(index, "mul_a", int(node.attrs["mul_a"]))
            return [f"emh::add_const<{x.elements}, {widths}>({xa}, {mul_a}, {self.param(index, 'constant')}, {rq}{y});"], note
        if op in ("softmax", "slice"):
            axis = int(node.attrs["axis"])
            outer, n, inner = int(np.prod(x.shape[:axis])), x.shape[axis], int(np.prod(x.shape[axis + 1:]))
            if op == "slice":
                return [f"emh::slice<{outer}, {n}, {inner}, {int(node.attrs['start'])}, {int(node.attrs['stop'])}>({xa}, {y});"], ""
            p = self.scalar(index, "p", int(node.attrs["p"]))
            return [f"emh::softmax<{outer}, {n}, {inner}>({xa}, {self.param(index, 'exp')}, {p}, {y});"], ""
        if op == "layernorm":
            d = x.shape[-1]
            eps = self.scalar(index, "eps", int(node.attrs["eps"]))
            return [f"emh::layernorm<{x.elements // d}, {d}, {widths}>({xa}, {eps}, {rq}{y});"], note
        if op == "reduce_mean":
            view = ", ".join(str(int(v)) for v in node.attrs["view"])
            return [f"emh::reduce_mean<{view}, {widths}>({xa}, {rq}{y});"], note
        if op == "transpose":
            args = _transpose_args([int(v) for v in node.attrs["view"]], [int(v) for v in node.attrs["perm"]])
            return [f"emh::transpose<{', '.join(map(str, args))}>({xa}, {y});"], ""
        if op == "moe":
            return self._moe(index, node, xa, y)
        if op == "lut":
            tables = x.shape[0] if node.params["table"].ndim == 2 else 1
            return [f"emh::lut<{tables}, {x.elements // tables}, {tables}>({xa}, {self.param(index, 'table')}, {y});"], ""
        if op == "flatten":
            return [], "reuses its input's array"
        if op == "concat":
            total, offset, calls = out.elements, 0, []
            for name in node.inputs:
                size = g.tensors[name].elements
                calls.append(f"emh::copy_to<{size}, {offset}, {total}>({self.arrays[name]}, {y});")
                offset += size
            return calls, ""
        channels, per_channel = x.shape[0], x.elements // x.shape[0]
        if op == "add":
            mul_a, mul_b = (self.scalar(index, k, int(node.attrs[k])) for k in ("mul_a", "mul_b"))
            return [f"emh::add<{channels}, {per_channel}, {widths}>({xa}, {self.arrays[node.inputs[1]]}, {mul_a}, {mul_b}, "
                    f"{rq}{y});"], note
        if op in ("requant", "avgpool_global"):
            return [f"emh::{op}<{channels}, {per_channel}, {widths}>({xa}, {rq}{y});"], note
        if op in ("maxpool", "avgpool"):
            (kh, kw), (sh, sw), (top, left, _, _) = node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"]
            dims = ", ".join(map(str, [*x.shape, *out.shape[1:], kh, kw, sh, sw, top, left]))
            if op == "maxpool":
                return [f"emh::maxpool<{dims}>({xa}, {y});"], ""
            return [f"emh::avgpool<{dims}, {widths}>({xa}, {rq}{y});"], note
        if op in ("resize_bilinear", "resize_nearest"):
            dims = ", ".join(map(str, [*x.shape, int(node.attrs["factor"])]))
            if op == "resize_nearest":
                return [f"emh::resize_nearest<{dims}>({xa}, {y});"], ""
            return [f"emh::resize_bilinear<{dims}, {widths}>({xa}, {rq}{y});"], note
        raise EdgemtlError(f"task {g.task!r}: layer {node.name!r} has op {op!r}, which the HLS C++ backend lacks")

    def _moe(self, index: int, node: Node, xa: str, y: str) -> tuple[list[str], str]:
        experts, hidden, d = node.params["fc1"].shape
        tokens = self.graph.tensors[node.inputs[0]].shape[0]
        widths = moe_widths(self.graph, node)
        memory = _moe_memory(self.graph, node, widths[-2])
        self.moe.append(memory)
        top_k = int(node.attrs["top_k"])
        dims = [tokens, d, hidden, experts, experts, top_k, int(node.attrs["router_shift"])]
        arrays = ", ".join(self.param(index, key) for key in ("ids", *MOE_ARRAYS))
        plan = memory.plan.expert_major
        note = (f"expert-major, double-buffered; on chip {memory.weight_bytes:,} B of weights and "
                f"{memory.activation_bytes:,} B of activations (memory_plan expert-major at 1 B/value: "
                f"{plan.weight_bytes_on_chip:,.0f} B and {plan.activation_bytes_on_chip:,.0f} B); widths {widths}")
        return [f"emh::moe<{', '.join(map(str, dims))}, {int(node.attrs['p'])}LL, {', '.join(map(str, widths))}, "
                f"{int(node.attrs['shift'])}>({xa}, {experts}, {top_k}, {arrays}, {y});"], note


# -- the files ---------------------------------------------------------------------------------------------------
def _weights(graph: IntGraph, top: str) -> str:
    lines = [f"// Generated by edgemtl for task {_comment(graph.task)}: do not edit.",
             f"#ifndef EDGEMTL_{top.upper()}_WEIGHTS_H", f"#define EDGEMTL_{top.upper()}_WEIGHTS_H", "",
             "#include <stdint.h>", "", f"namespace {top}_weights {{", ""]
    for index, node in enumerate(graph.nodes):
        keys = [("weight", "w"), ("mul", "mul"), ("add", "add"), ("constant", "const"), ("exp", "exp"), ("table", "table")]
        if node.op == "moe":
            keys += [(key, key) for key in MOE_PARAMS]
        params = dict(node.params)
        if node.op == "moe":   # a one-task design runs its experts in order: expert e at row e of the tables
            params["ids"] = np.arange(len(node.params["fc1"]), dtype=np.int32)
            keys.append(("ids", "ids"))
        for key, short in keys:
            if key not in params:
                continue
            values = params[key]
            if key == "table":
                ctype = C_TYPE[graph.tensors[node.output].dtype]
            else:
                ctype = "int8_t" if key in INT8_PARAMS else "int32_t"
            lines.append(f"// {index}: {node.op} {_comment(node.name)}: {key} {list(values.shape)}")
            lines.append(_array(ctype, f"{short}_{index}", values))
    return "\n".join([*lines, f"}}  // namespace {top}_weights", "", "#endif", ""])


def _header(graph: IntGraph, top: str) -> str:
    x, out, big = graph.tensors[graph.input], graph.tensors[graph.output], top.upper()
    return f"""// Generated by edgemtl for task {_comment(graph.task)}: do not edit.
#ifndef EDGEMTL_{big}_H
#define EDGEMTL_{big}_H

#include "ap_int.h"

#define {big}_INPUT_ELEMENTS {x.elements}     // shape {x.shape}, {x.dtype}, scale {x.scale!r}
#define {big}_OUTPUT_ELEMENTS {out.elements}   // shape {out.shape}, {out.dtype}, scale {out.scale!r}
#define {big}_INPUT_SIGNED {int(x.dtype == "int8")}
#define {big}_OUTPUT_SIGNED {int(out.dtype == "int8")}

typedef {AP_TYPE[x.dtype]} {top}_in_t;
typedef {AP_TYPE[out.dtype]} {top}_out_t;

// One sample: the integer-quantised input (CHW) in, the integer output out. Not reentrant (static tensors).
void {top}(const {top}_in_t input[{big}_INPUT_ELEMENTS], {top}_out_t output[{big}_OUTPUT_ELEMENTS]);

#endif
"""


def _source(graph: IntGraph, top: str) -> tuple[str, list[MoeMemory]]:
    emitter, big = _Emitter(graph), top.upper()
    body = []
    for index, node in enumerate(graph.nodes):
        statements, note = emitter.node(index, node)
        body.append(f"    // {index}: {node.op} {_comment(node.name)} -> {_comment(node.output)} "
                    f"{graph.tensors[node.output].shape} {graph.tensors[node.output].dtype}" + (f"; {note}" if note else ""))
        body += [f"    {s}" for s in statements]
    return f"""// Generated by edgemtl for task {_comment(graph.task)}: do not edit.
// The task path as one kernel call per node (kernels.h); the tensors in static arrays reused once dead, the weights ROMs.
#include "{top}.h"

#include "kernels.h"
#include "{top}_weights.h"

void {top}(const {top}_in_t input[{big}_INPUT_ELEMENTS], {top}_out_t output[{big}_OUTPUT_ELEMENTS]) {{
#pragma HLS INTERFACE m_axi port = input offset = slave bundle = gmem0 depth = {big}_INPUT_ELEMENTS
#pragma HLS INTERFACE m_axi port = output offset = slave bundle = gmem1 depth = {big}_OUTPUT_ELEMENTS
#pragma HLS INTERFACE s_axilite port = return bundle = control
    namespace W = {top}_weights;
{chr(10).join(declarations(emitter.array_list))}

    emh::copy<{big}_INPUT_ELEMENTS>(input, a_in);
{chr(10).join(body)}
    emh::copy<{big}_OUTPUT_ELEMENTS>({emitter.arrays[graph.output]}, output);
}}
""", emitter.moe


def _test_bench(graph: IntGraph, top: str) -> str:
    big = top.upper()
    load = "(signed char)raw_in[i]" if graph.tensors[graph.input].dtype == "int8" else "raw_in[i]"
    return f"""// Generated by edgemtl: the C simulation test bench of {top} (task {_comment(graph.task)}).
// usage: {top}_test INPUTS.bin OUTPUTS.bin [EXPECTED.bin]: samples of raw input bytes (int8 / uint8, CHW) back to
// back in, the raw output bytes out; with EXPECTED.bin, exit status 1 when any sample differs from it.
// With EDGEMTL_TB_NO_MAIN defined, only {top}_test(argc, argv) (several test benches in one C simulation build).
#include <cstdio>
#include <cstring>

#include "firmware/{top}.h"
#ifdef EMH_CYCLES
#include "firmware/kernels.h"   // the pipelined-iteration counter
#endif

static int {top}_test(int argc, char **argv) {{
    static unsigned char raw_in[{big}_INPUT_ELEMENTS], raw_out[{big}_OUTPUT_ELEMENTS], expected[{big}_OUTPUT_ELEMENTS];
    static {top}_in_t input[{big}_INPUT_ELEMENTS];
    static {top}_out_t output[{big}_OUTPUT_ELEMENTS];
    if (argc != 3 && argc != 4) {{
        std::fprintf(stderr, "usage: %s INPUTS.bin OUTPUTS.bin [EXPECTED.bin]\\n", argv[0]);
        return 2;
    }}
    std::FILE *in = std::fopen(argv[1], "rb"), *out = std::fopen(argv[2], "wb");
    std::FILE *want = argc == 4 ? std::fopen(argv[3], "rb") : NULL;
    if (in == NULL || out == NULL || (argc == 4 && want == NULL)) {{
        std::fprintf(stderr, "cannot open the input, output or expected file\\n");
        return 2;
    }}
    long samples = 0, wrong = 0;
    std::size_t got;
    while ((got = std::fread(raw_in, 1, sizeof raw_in, in)) == sizeof raw_in) {{
        for (int i = 0; i < {big}_INPUT_ELEMENTS; i++) {{
            input[i] = {load};
        }}
#ifdef EMH_MOE_TRACE
        std::fprintf(stderr, "sample %ld\\n", samples);
#endif
#ifdef EMH_CYCLES
        emh::pipelined_iterations = 0;
#endif
        {top}(input, output);
#ifdef EMH_CYCLES
        std::fprintf(stderr, "EMH_CYCLES %ld %llu\\n", samples, emh::pipelined_iterations);
#endif
        for (int i = 0; i < {big}_OUTPUT_ELEMENTS; i++) {{
            raw_out[i] = (unsigned char)(output[i].to_int() & 0xFF);
        }}
        if (std::fwrite(raw_out, 1, sizeof raw_out, out) != sizeof raw_out) {{
            return 3;
        }}
        if (want != NULL) {{
            if (std::fread(expected, 1, sizeof expected, want) != sizeof expected) {{
                std::fprintf(stderr, "the expected file ends before sample %ld\\n", samples);
                return 2;
            }}
            wrong += std::memcmp(expected, raw_out, sizeof raw_out) != 0;
        }}
        samples++;
    }}
""" + test_bench_end(top, ("in",))


def test_bench_end(top: str, inputs: tuple[str, ...]) -> str:
    """The test bench after its sample loop: a partial last sample is an error, the files closed, the counts printed
    (exit 1 on any mismatching sample), and `main` unless EDGEMTL_TB_NO_MAIN."""
    closes = "".join(f"    std::fclose({name});\n" for name in inputs)
    return f"""    if (got != 0) {{
        std::fprintf(stderr, "the input file ends inside sample %ld\\n", samples);
        return 2;
    }}
{closes}    if (std::fclose(out) != 0) {{
        return 3;
    }}
    std::printf("samples %ld\\n", samples);
    if (want != NULL) {{
        std::fclose(want);
        std::printf("mismatching samples %ld\\n", wrong);
        return wrong != 0;
    }}
    return 0;
}}

#ifndef EDGEMTL_TB_NO_MAIN
int main(int argc, char **argv) {{
    return {top}_test(argc, argv);
}}
#endif
"""


def _tcl(what: str, top: str, inputs: tuple[str, ...] = ("inputs.bin",)) -> str:
    """build_prj.tcl for the project of `top` (`what` it serves), its C simulation reading tb_data/`inputs`."""
    argv = " ".join(f"$here/tb_data/{name}" for name in (*inputs, "csim_outputs.bin"))
    return f"""# Generated by edgemtl for {_comment(what)}: the Vitis HLS project of {top} for the ZCU104
# ({PART}, {1000 // CLOCK_PERIOD_NS} MHz): C simulation, C synthesis, IP catalog export into {top}_prj/ here. Run it with
#   vitis_hls -f build_prj.tcl                      (Vitis HLS 2020.2 .. 2023.2)
#   vitis-run --mode hls --tcl build_prj.tcl        (Vitis 2024.1 and later)
# The C simulation reads tb_data/inputs.bin (samples of raw int8 / uint8 input bytes, CHW, back to back), compares
# with tb_data/expected.bin when it exists (edgemtl.backends.hls_cpp.csim.write_tb_data writes both) and writes
# tb_data/csim_outputs.bin. Vitis HLS brings its own ap_int.h.
set here [file dirname [file normalize [info script]]]
cd $here
set cflags "-std=c++14 -I$here/firmware"
open_project -reset {top}_prj
set_top {top}
foreach source [glob -directory $here/firmware *.cpp] {{
    add_files $source -cflags $cflags
}}
add_files -tb $here/{top}_test.cpp -cflags $cflags
open_solution -reset solution1 -flow_target vivado
set_part {{{PART}}}
create_clock -period {CLOCK_PERIOD_NS} -name default
set csim_argv "{argv}"
if {{[file exists $here/tb_data/expected.bin]}} {{
    append csim_argv " $here/tb_data/expected.bin"
}}
csim_design -argv $csim_argv
csynth_design
export_design -format ip_catalog
exit
"""


def _tensor_io(graph: IntGraph, name: str) -> dict[str, Any]:
    info = graph.tensors[name]
    return {"shape": [int(s) for s in info.shape], "dtype": info.dtype, "scale": float(info.scale)}


def _io_json(graph: IntGraph, top: str) -> str:
    """The facts a board driver needs without edgemtl: the top's I/O tensors and the input quantisation, stated as
    intgraph.quantize_input computes it (the driver replicates it, so its inputs are bit for bit the reference's)."""
    lo, hi = RANGES[graph.tensors[graph.input].dtype]
    rule = (f"q = clip(rint(x / input.scale), {lo}, {hi}) with numpy: x one float input sample (its shape, normalised as the model "
            f"takes it) divided by the scale in x's own float dtype, rounded half to even (np.rint), saturated to "
            f"{graph.tensors[graph.input].dtype}")
    io = {"top": top, "task": graph.task, "input": _tensor_io(graph, graph.input),
          "output": _tensor_io(graph, graph.output), "quantize": rule}
    return json.dumps(io, indent=1) + "\n"


def copy_kernels(folder: Path) -> list[Path]:
    """The kernel headers (package data) into the project's firmware/."""
    library, copied = resources.files("edgemtl.backends.hls_cpp"), []
    for name in KERNEL_FILES:
        with resources.as_file(library / name) as path:
            shutil.copyfile(path, folder / "firmware" / name)
        copied.append(folder / "firmware" / name)
    return copied


def generate_hls(graph: IntGraph, folder: Path, top: str = "edgemtl_task") -> HlsSources:
    """Write the Vitis HLS project for `graph` into `folder` (created) and return what was written."""
    _check_top(top)
    check_graph(graph, "HLS C++ backend")
    for node in graph.nodes:
        _check_hls(graph, node)
    folder = Path(folder)
    (folder / "firmware").mkdir(parents=True, exist_ok=True)
    (folder / "tb_data").mkdir(exist_ok=True)
    source, moe = _source(graph, top)
    texts = {f"firmware/{top}.h": _header(graph, top), f"firmware/{top}.cpp": source,
             f"firmware/{top}_weights.h": _weights(graph, top), f"{top}_test.cpp": _test_bench(graph, top),
             "build_prj.tcl": _tcl(f"task {graph.task}", top), "io.json": _io_json(graph, top)}
    files = []
    for name, text in texts.items():
        (folder / name).write_text(text)
        files.append(folder / name)
    files += copy_kernels(folder)
    x, out = graph.tensors[graph.input], graph.tensors[graph.output]
    return HlsSources(folder=folder, top=top, files=files, input_shape=list(x.shape), output_shape=list(out.shape),
                      input_dtype=x.dtype, output_dtype=out.dtype, moe=moe)
