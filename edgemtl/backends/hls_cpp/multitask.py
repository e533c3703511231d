"""Every task's integer graph as ONE Vitis HLS design, `<top>(input, task, output)`: M3ViT's task switching on the
FPGA, where switching tasks is a register write, not a new bitstream.

Why next to the per-task designs (generate.py): a board that serves several tasks would otherwise hold one design
per task (reconfigure to switch) or all of them side by side (the shared layers once per task). Here the layers the
task paths share are one kernel call each, and the task id only selects what differs.

How the task graphs become one design:
- Nodes are matched by name and by what they compute (`_node_keys`: op, the layers their inputs come from, output
  shape and dtype; not tensor names, which differ between paths with different experts). A node every task holding
  it computes alike is one call (the shared trunk); a node only some tasks hold (a task's head) runs in the `case`
  of those tasks.
- A shared node's parameters that differ per task (each task path was calibrated on its own, so its requantisation
  multipliers and adds differ; the router's add carries the task embedding; the softmax and GELU tables; a residual
  add's input multipliers, softmax p, layernorm eps) are rows of one ROM, the row chosen by the task id. Parameters
  every task holds alike (the weights) are stored once.
- One shift per shared node: a task's (mul, add, shift) becomes (mul 2^k, add 2^k, shift + k), the same integers
  exactly (`align_shifts`). Where that would leave int32, or a template argument still differs, the node's call is
  emitted once per distinct form under `switch (task)`: correct, and counted as more kernels in the estimate
  (`MultiTaskSources.switched`).
- The tensors share static arrays over the design's run order (arrays.py), so one task's head reuses another's.
- An MoE layer is one engine for every task: each task's experts are rows of one table of router rows and expert
  weights (an expert two tasks keep is stored once: matched by its integers), and a task's path is its list of rows,
  its expert count and its top-k, read at run time (kernels.h `moe`), with its own requantisation tables.

Files, as generate.py's: firmware/<top>.h, .cpp, _weights.h, kernels.h; <top>_test.cpp (inputs, one task id byte
per sample, outputs: each sample's task's output bytes); build_prj.tcl; io.json (per task: its id and output).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgemtl.backends.c.generate import c_int, check_graph
from edgemtl.backends.hls_cpp.arrays import AP_TYPE, Step, array_bits, declarations, plan_arrays
from edgemtl.backends.hls_cpp.estimate import moe_arrays
from edgemtl.backends.hls_cpp.generate import (C_TYPE, MOE_ARRAYS, SHORT, _check_hls, _check_top,
                                               _comment, _Emitter, _io_json, _tcl, copy_kernels, moe_widths, node_widths,
                                               scalar_literal, test_bench_end)
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import INT8_PARAMS, RANGES, IntGraph, Node

RESCALED = (("shift", "mul", "add"), ("router_shift", "router_mul", "router_add"))   # a shift and what it scales
INT32_MAX = 2**31 - 1
PER_EXPERT = ("router_mul", "router_add", "fc1_mul", "fc1_add", "fc1_shift", "fc2_mul", "fc2_add", "fc2_shift")


def align_shifts(graphs: dict[str, IntGraph]) -> dict[str, IntGraph]:
    """Copies of `graphs` in which every node several tasks hold has one shift per requantisation: the largest any
    of them uses, each task's mul and add scaled to match where they stay within int32 (the same integers: the
    rounded shift of (acc mul + add) 2^k by s + k is that of acc mul + add by s)."""
    copies = {task: copy.deepcopy(graph) for task, graph in graphs.items()}
    holders: dict[str, list[Node]] = {}
    for graph in copies.values():
        for node in graph.nodes:
            holders.setdefault(node.name, []).append(node)
    for nodes in holders.values():
        for shift_key, mul_key, add_key in RESCALED:
            if len(nodes) < 2 or not all(shift_key in n.attrs and mul_key in n.params for n in nodes):
                continue
            target = max(int(n.attrs[shift_key]) for n in nodes)
            for node in nodes:
                k = target - int(node.attrs[shift_key])
                mul = node.params[mul_key].astype(np.int64) << k
                add = node.params[add_key].astype(np.int64) << k
                if k == 0 or max(int(np.abs(mul).max()), int(np.abs(add).max()) + (1 << (target - 1))) > INT32_MAX:
                    continue
                node.params[mul_key], node.params[add_key] = mul.astype(np.int32), add.astype(np.int32)
                node.attrs[shift_key] = target
    return copies


@dataclass
class MultiTaskSources:
    """What `generate_multitask_hls` wrote and what the test bench, the estimate and the record need."""

    folder: Path
    top: str
    files: list[Path]
    tasks: list[str]                                   # task id k is tasks[k]
    input_shape: list[int]
    input_dtype: str
    output_shapes: dict[str, list[int]]
    output_dtypes: dict[str, str]
    shared: list[str] = field(default_factory=list)    # nodes one call serves for every task that runs them
    switched: dict[str, int] = field(default_factory=dict)   # node -> calls under switch (forms that differ)
    task_only: dict[str, list[str]] = field(default_factory=dict)   # task -> nodes only it runs
    rom_bits: list[tuple[int, int]] = field(default_factory=list)   # (elements, bits) of every ROM array
    activation_bits: list[tuple[int, int]] = field(default_factory=list)   # (elements, bits) of every tensor array
    calls: list[tuple[IntGraph, Node]] = field(default_factory=list)   # every kernel call: a graph and node it runs
    moe_rows: dict[str, dict[str, list[int]]] = field(default_factory=dict)   # moe node -> task -> its expert rows
    engine_bits: list[tuple[int, int]] = field(default_factory=list)   # the MoE engines' own arrays (kernels.h)

    @property
    def input_elements(self) -> int:
        return int(np.prod(self.input_shape))

    def output_elements(self, task: str) -> int:
        return int(np.prod(self.output_shapes[task]))


INPUT = "<input>"


def _node_keys(graphs: dict[str, IntGraph]) -> dict[str, list[str]]:
    """The name each node goes by in the design: its own where every task holding that name computes it alike (op,
    the design's names of the layers its inputs come from, output shape and dtype: not the tensor names an export
    gave its path, which differ between paths with different experts), else its name and task. A layer that differs
    makes its readers differ too (they read other arrays), so the names are refined until they hold still."""
    for task, graph in graphs.items():
        names = [node.name for node in graph.nodes]
        if len(set(names)) != len(names):
            raise EdgemtlError(f"task {task!r}: the integer graph names two layers alike; one design needs unique names")
    split: set[str] = set()
    while True:
        keys = {task: [f"{n.name}@{task}" if n.name in split else n.name for n in graph.nodes]
                for task, graph in graphs.items()}
        signatures: dict[str, set[tuple]] = {}
        for task, graph in graphs.items():
            producer = {graph.input: INPUT, **{n.output: key for key, n in zip(keys[task], graph.nodes)}}
            for node in graph.nodes:
                out = graph.tensors[node.output]
                signature = (node.op, tuple(producer[i] for i in node.inputs), tuple(out.shape), out.dtype)
                signatures.setdefault(node.name, set()).add(signature)
        differ = {name for name, found in signatures.items() if len(found) > 1}
        if differ <= split:
            return keys
        split |= differ


def _merged_order(graphs: dict[str, IntGraph], keys: dict[str, list[str]]) -> list[str]:
    """One sequence of node keys in which every task's own order holds (its nodes are topologically ordered)."""
    merged: list[str] = []
    for task, graph in graphs.items():
        last = -1
        for key in keys[task]:
            if key in merged:
                position = merged.index(key)
                if position < last:
                    raise EdgemtlError(f"task {task!r} runs the shared layer {key!r} in another order than the other "
                                       "tasks; one design cannot serve them: use the per-task designs")
                last = position
            else:
                last += 1
                merged.insert(last, key)
    return merged


class _Roms:
    """The design's ROM arrays: a parameter every task holds alike once, one that differs as rows chosen by task."""

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = tasks
        self.lines: list[str] = []
        self.bits: list[tuple[int, int]] = []

    def _write(self, ctype: str, name: str, rows: list[np.ndarray]) -> None:
        flat = [[c_int(int(v)) if ctype == "int32_t" else f"{int(v)}LL" if ctype == "int64_t" else str(int(v))
                 for v in row.reshape(-1)] for row in rows]
        bits = 8 if ctype.endswith("int8_t") else 64 if ctype == "int64_t" else 32
        self.bits.append((sum(len(r) for r in flat), bits))
        if len(rows) == 1:
            body = ",\n    ".join(", ".join(flat[0][i:i + 32]) for i in range(0, len(flat[0]), 32))
            self.lines.append(f"static const {ctype} {name}[{len(flat[0])}] = {{\n    {body}\n}};\n")
        else:
            body = ",\n    ".join("{" + ", ".join(r) + "}" for r in flat)
            self.lines.append(f"static const {ctype} {name}[{len(rows)}][{len(flat[0])}] = {{\n    {body}\n}};\n")

    def reference(self, name: str, ctype: str, values: dict[str, np.ndarray], note: str) -> str:
        """The expression a call passes for `values` (task -> array, the tasks running the call)."""
        distinct: list[np.ndarray] = []
        row_of: dict[str, int] = {}
        for task, value in values.items():
            value = np.asarray(value)
            for index, seen in enumerate(distinct):
                if seen.shape == value.shape and np.array_equal(seen, value):
                    row_of[task] = index
                    break
            else:
                row_of[task], distinct = len(distinct), [*distinct, value]
        self.lines.append(f"// {_comment(note)}: {list(distinct[0].shape)}, {len(distinct)} distinct")
        self._write(ctype, name, distinct)
        if len(distinct) == 1:
            return f"W::{name}"
        if len({d.size for d in distinct}) != 1:
            raise EdgemtlError(f"{note}: the tasks' arrays differ in size; they cannot share one call")
        rows = np.array([row_of.get(task, 0) for task in self.tasks], dtype=np.int32)
        self.lines.append(f"// {_comment(note)}: the row each task reads")
        self._write("int32_t", f"{name}_row", [rows])
        return f"W::{name}[W::{name}_row[task]]"


class _TaskEmitter(_Emitter):
    """One task's kernel calls as the design writes them: its tensors in the design's arrays, its parameters as the
    design's ROM references (the same text for every task whose call is the same, so the call is shared)."""

    def __init__(self, graph: IntGraph, design: "_Design") -> None:
        self.design = design
        super().__init__(graph)

    def plan(self) -> dict[str, str]:
        return self.design.arrays_for(self.graph.task)

    def widths(self, node: Node) -> tuple[int, int]:
        return self.design.widths(self.graph.task, node)

    def scalar(self, index: int, key: str, value: int) -> str:
        return self.design.scalar(self.graph.task, self.graph.nodes[index], key, value)

    def param(self, index: int, key: str) -> str:
        return self.design.param(self.graph.task, self.graph.nodes[index], key)

    def _moe(self, index: int, node: Node, xa: str, y: str) -> tuple[list[str], str]:
        return self.design.moe_call(self.graph.task, node, xa, y)


class _Design:
    """The arrays and calls of one design serving `graphs` (shift-aligned)."""

    def __init__(self, graphs: dict[str, IntGraph]) -> None:
        self.graphs, self.tasks = graphs, list(graphs)
        self.keys = _node_keys(graphs)
        self.node_keys = {id(node): key for task, graph in graphs.items() for key, node in zip(self.keys[task], graph.nodes)}
        self.producer = {task: {graph.input: INPUT, **{n.output: key for key, n in zip(self.keys[task], graph.nodes)}}
                         for task, graph in graphs.items()}   # tensor -> the design's name of the node writing it
        self.order = _merged_order(graphs, self.keys)
        self.index = {key: i for i, key in enumerate(self.order)}
        self.holders: dict[str, dict[str, Node]] = {key: {} for key in self.order}
        for task, graph in graphs.items():
            for key, node in zip(self.keys[task], graph.nodes):
                self.holders[key][task] = node
        self.roms = _Roms(self.tasks)
        self.references: dict[tuple[str, str], str] = {}
        self.array_of, self.arrays = self._plan()   # a layer's output (by its design name) -> its static array
        self.moe_calls: dict[str, tuple[list[str], str]] = {}
        self.moe_rows: dict[str, dict[str, list[int]]] = {}
        self.engine_bits: list[tuple[int, int]] = []

    def key(self, node: Node) -> str:
        """The design's name of `node` (a node object belongs to one task's graph)."""
        return self.node_keys[id(node)]

    def widths(self, task: str, node: Node) -> tuple[int, int]:
        """The widest (accumulator, requantisation) bits of any task's form of the node: exact for every task."""
        forms = [node_widths(self.graphs[t], n) for t, n in self.holders[self.key(node)].items()]
        return max(f[0] for f in forms), max(f[1] for f in forms)

    def _plan(self) -> tuple[dict, list]:
        """The static arrays over the design's run order (arrays.py): a layer's output one array for every task
        running it, each array reused once no later layer of any task reads it (a task's head after another's)."""
        steps = []
        for key in self.order:
            task, node = next(iter(self.holders[key].items()))
            info = self.graphs[task].tensors[node.output]
            reads = tuple(dict.fromkeys(self.producer[t][i] for t, n in self.holders[key].items() for i in n.inputs))
            steps.append(Step(key, info.dtype, info.elements, reads,
                              self.producer[task][node.inputs[0]] if node.op == "flatten" else None))
        graph = self.graphs[self.tasks[0]]
        x = graph.tensors[graph.input]
        return plan_arrays(steps, (INPUT, x.dtype, x.elements), {self.producer[t][g.output] for t, g in self.graphs.items()})

    def arrays_for(self, task: str) -> dict[str, str]:
        """Task `task`'s tensors -> their arrays."""
        return {tensor: self.array_of[key] for tensor, key in self.producer[task].items()}

    def param(self, task: str, node: Node, key: str) -> str:
        node_key = self.key(node)
        if (node_key, key) not in self.references:
            graph = self.graphs[task]
            if key == "table":
                ctype = C_TYPE[graph.tensors[node.output].dtype]
            else:
                ctype = "int8_t" if key in INT8_PARAMS else "int32_t"
            values = {t: n.params[key] for t, n in self.holders[node_key].items()}
            self.references[(node_key, key)] = self.roms.reference(
                f"{SHORT.get(key, key)}_{self.index[node_key]}", ctype, values, f"{node.op} {node.name}: {key}")
        return self.references[(node_key, key)]

    def scalar(self, task: str, node: Node, key: str, value: int) -> str:
        """A scalar every task holding the node shares as a constant; else read from a per-task ROM."""
        node_key = self.key(node)
        values = {t: int(n.attrs[key]) for t, n in self.holders[node_key].items()}
        if len(set(values.values())) == 1:
            return scalar_literal(key, value)
        if (node_key, key) not in self.references:
            ctype = "int64_t" if key in ("p", "eps") else "int32_t"
            rows = {t: np.array([v], dtype=np.int64) for t, v in values.items()}
            self.references[(node_key, key)] = self.roms.reference(f"{key}_{self.index[node_key]}", ctype, rows,
                                                                   f"{node.op} {node.name}: {key}") + "[0]"
        return self.references[(node_key, key)]

    def moe_call(self, task: str, node: Node, xa: str, y: str) -> tuple[list[str], str]:
        """One engine for every task's path through this MoE layer: the experts' rows stored once, each task's rows,
        expert count and top-k chosen at run time."""
        node_key = self.key(node)
        if node_key in self.moe_calls:
            return self.moe_calls[node_key]
        holders = self.holders[node_key]
        rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        ids: dict[str, list[int]] = {}
        for t, n in holders.items():
            ids[t] = []
            for e in range(len(n.params["fc1"])):
                expert = (n.params["router"][e], n.params["fc1"][e], n.params["fc2"][e])
                match = next((i for i, r in enumerate(rows) if all(np.array_equal(a, b) for a, b in zip(r, expert))), None)
                if match is None:
                    match, rows = len(rows), [*rows, expert]
                ids[t].append(match)
        slots = max(len(i) for i in ids.values())
        top_k = max(int(n.attrs["top_k"]) for n in holders.values())
        tokens, d = self.graphs[task].tensors[node.inputs[0]].shape
        hidden = node.params["fc1"].shape[1]
        widths = np.max([moe_widths(self.graphs[t], n) for t, n in holders.items()], axis=0).tolist()
        if len({(int(n.attrs["router_shift"]), int(n.attrs["shift"]), int(n.attrs["p"])) for n in holders.values()}) > 1:
            raise EdgemtlError(f"MoE layer {node.name!r}: the tasks' router or output shifts differ beyond what int32 "
                               "multipliers can align; one engine cannot serve them: use the per-task designs")
        j, where = self.index[node_key], f"moe {node.name}"

        def padded(t: str, key: str) -> np.ndarray:
            values = holders[t].params[key]
            return np.concatenate([values, np.zeros((slots - len(values), *values.shape[1:]), values.dtype)])

        refs = {"ids": self.roms.reference(f"ids_{j}", "int32_t", {t: np.array(ids[t] + [0] * (slots - len(ids[t]))) for t in holders},
                                           f"{where}: each task's expert rows"),
                "router": self.roms.reference(f"router_{j}", "int8_t", {"every task": np.stack([r[0] for r in rows])},
                                              f"{where}: router rows of every task's experts"),
                "fc1": self.roms.reference(f"fc1_{j}", "int8_t", {"every task": np.stack([r[1] for r in rows])},
                                           f"{where}: fc1 of every task's experts"),
                "fc2": self.roms.reference(f"fc2_{j}", "int8_t", {"every task": np.stack([r[2] for r in rows])},
                                           f"{where}: fc2 of every task's experts")}
        for key in PER_EXPERT:
            refs[key] = self.roms.reference(f"{key}_{j}", "int32_t", {t: padded(t, key) for t in holders}, f"{where}: {key}")
        for key in ("exp", "gelu", "mul", "add"):
            refs[key] = self.roms.reference(f"{key}_{j}", "int8_t" if key in INT8_PARAMS else "int32_t",
                                            {t: n.params[key] for t, n in holders.items()}, f"{where}: {key}")
        counts = self.roms.reference(f"experts_{j}", "int32_t", {"every task": np.array([len(ids.get(t, [])) for t in self.tasks])},
                                     f"{where}: each task's expert count")
        ks = self.roms.reference(f"top_k_{j}", "int32_t", {"every task": np.array([int(holders[t].attrs["top_k"]) if t in holders
                                                                                else 1 for t in self.tasks])},
                                 f"{where}: each task's top-k")
        dims = [tokens, d, hidden, slots, len(rows), top_k, int(node.attrs["router_shift"])]
        arrays = ", ".join(refs[key] for key in ("ids", *MOE_ARRAYS))
        call = (f"emh::moe<{', '.join(map(str, dims))}, {int(node.attrs['p'])}LL, {', '.join(map(str, widths))}, "
                f"{int(node.attrs['shift'])}>({xa}, {counts}[task], {ks}[task], {arrays}, {y});")
        self.moe_rows[node.name] = ids
        widest = max(holders, key=lambda t: len(ids[t]))
        self.engine_bits += moe_arrays(self.graphs[widest], holders[widest])
        note = (f"one expert-major engine for {len(holders)} task(s): {len(rows)} expert rows stored, up to {slots} per "
                f"task's path; widths {widths}")
        self.moe_calls[node_key] = ([call], note)
        return self.moe_calls[node_key]


def _check(graphs: dict[str, IntGraph], top: str) -> None:
    _check_top(top)
    if not graphs:
        raise EdgemtlError("a design serving every task needs at least one task graph")
    for graph in graphs.values():
        check_graph(graph, "HLS C++ backend")
        for node in graph.nodes:
            _check_hls(graph, node)
    inputs = {(tuple(g.tensors[g.input].shape), g.tensors[g.input].dtype, g.tensors[g.input].scale) for g in graphs.values()}
    if len(inputs) > 1:
        raise EdgemtlError("the task graphs quantize the input differently (shape, dtype or scale); one design takes "
                           "one input: use the per-task designs")


def _source(design: _Design, top: str, body: list[str], finals: dict[str, str], out_type: str) -> str:
    big = top.upper()
    copies = "\n".join(f"    case {k}:\n        emh::copy<{big}_OUTPUT_ELEMENTS_{k}>({finals[t]}, output);\n        break;"
                       for k, t in enumerate(design.tasks))
    return f"""// Generated by edgemtl for tasks {_comment(', '.join(design.tasks))}: do not edit.
// Every task path as one design: the shared layers one kernel call each, the task id selecting what differs.
#include "{top}.h"

#include "kernels.h"
#include "{top}_weights.h"

void {top}(const {top}_in_t input[{big}_INPUT_ELEMENTS], int task, {out_type} output[{big}_OUTPUT_ELEMENTS]) {{
#pragma HLS INTERFACE m_axi port = input offset = slave bundle = gmem0 depth = {big}_INPUT_ELEMENTS
#pragma HLS INTERFACE m_axi port = output offset = slave bundle = gmem1 depth = {big}_OUTPUT_ELEMENTS
#pragma HLS INTERFACE s_axilite port = task bundle = control
#pragma HLS INTERFACE s_axilite port = return bundle = control
    namespace W = {top}_weights;
{chr(10).join(declarations(design.arrays))}

    if (task < 0 || task >= {big}_TASKS) {{
        return;
    }}
    emh::copy<{big}_INPUT_ELEMENTS>(input, a_in);
{chr(10).join(body)}
    switch (task) {{
{copies}
    default:
        break;
    }}
}}
"""


def _header(design: _Design, top: str, out_type: str) -> str:
    big, graph = top.upper(), design.graphs[design.tasks[0]]
    x = graph.tensors[graph.input]
    outputs = []
    for k, task in enumerate(design.tasks):
        g = design.graphs[task]
        out = g.tensors[g.output]
        outputs.append(f"#define {big}_OUTPUT_ELEMENTS_{k} {out.elements}   // task {_comment(task)}: {out.shape}, "
                       f"{out.dtype}, scale {out.scale!r}")
    largest = max(design.graphs[t].tensors[design.graphs[t].output].elements for t in design.tasks)
    ids = "\n".join(f"#define {big}_TASK_{k} {k}   // {_comment(t)}" for k, t in enumerate(design.tasks))
    return f"""// Generated by edgemtl for tasks {_comment(', '.join(design.tasks))}: do not edit.
#ifndef EDGEMTL_{big}_H
#define EDGEMTL_{big}_H

#include "ap_int.h"

#define {big}_TASKS {len(design.tasks)}
{ids}
#define {big}_INPUT_ELEMENTS {x.elements}     // shape {x.shape}, {x.dtype}, scale {x.scale!r}
#define {big}_OUTPUT_ELEMENTS {largest}   // the largest task output; task k writes its first _OUTPUT_ELEMENTS_k
{chr(10).join(outputs)}

typedef {AP_TYPE[x.dtype]} {top}_in_t;

// One sample of task `task` (0 .. {big}_TASKS - 1; another value writes nothing): the integer-quantised input (CHW)
// in, the task's integer output out (its raw bytes where the tasks' output types differ). Not reentrant.
void {top}(const {top}_in_t input[{big}_INPUT_ELEMENTS], int task, {out_type} output[{big}_OUTPUT_ELEMENTS]);

#endif
"""


def _test_bench(design: _Design, top: str, out_type: str) -> str:
    big, graph = top.upper(), design.graphs[design.tasks[0]]
    load = "(signed char)raw_in[i]" if graph.tensors[graph.input].dtype == "int8" else "raw_in[i]"
    sizes = ", ".join(f"{big}_OUTPUT_ELEMENTS_{k}" for k in range(len(design.tasks)))
    return f"""// Generated by edgemtl: the C simulation test bench of {top} (tasks {_comment(', '.join(design.tasks))}).
// usage: {top}_test INPUTS.bin TASKS.bin OUTPUTS.bin [EXPECTED.bin]: samples of raw input bytes (int8 / uint8, CHW)
// back to back and one task id byte per sample in; each sample's task output bytes out, back to back; with
// EXPECTED.bin (the same layout), exit status 1 when any sample differs from it.
#include <cstdio>
#include <cstring>

#include "firmware/{top}.h"
#ifdef EMH_CYCLES
#include "firmware/kernels.h"   // the pipelined-iteration counter
#endif

static int {top}_test(int argc, char **argv) {{
    static const int sizes[{big}_TASKS] = {{{sizes}}};
    static unsigned char raw_in[{big}_INPUT_ELEMENTS], raw_out[{big}_OUTPUT_ELEMENTS], expected[{big}_OUTPUT_ELEMENTS];
    static {top}_in_t input[{big}_INPUT_ELEMENTS];
    static {out_type} output[{big}_OUTPUT_ELEMENTS];
    if (argc != 4 && argc != 5) {{
        std::fprintf(stderr, "usage: %s INPUTS.bin TASKS.bin OUTPUTS.bin [EXPECTED.bin]\\n", argv[0]);
        return 2;
    }}
    std::FILE *in = std::fopen(argv[1], "rb"), *ids = std::fopen(argv[2], "rb"), *out = std::fopen(argv[3], "wb");
    std::FILE *want = argc == 5 ? std::fopen(argv[4], "rb") : NULL;
    if (in == NULL || ids == NULL || out == NULL || (argc == 5 && want == NULL)) {{
        std::fprintf(stderr, "cannot open the input, task, output or expected file\\n");
        return 2;
    }}
    long samples = 0, wrong = 0;
    std::size_t got;
    while ((got = std::fread(raw_in, 1, sizeof raw_in, in)) == sizeof raw_in) {{
        const int task = std::fgetc(ids);
        if (task < 0 || task >= {big}_TASKS) {{
            std::fprintf(stderr, "sample %ld: no task id, or one outside 0 .. %d\\n", samples, {big}_TASKS - 1);
            return 2;
        }}
        for (int i = 0; i < {big}_INPUT_ELEMENTS; i++) {{
            input[i] = {load};
        }}
#ifdef EMH_MOE_TRACE
        std::fprintf(stderr, "sample %ld\\n", samples);
#endif
#ifdef EMH_CYCLES
        emh::pipelined_iterations = 0;
#endif
        {top}(input, task, output);
#ifdef EMH_CYCLES
        std::fprintf(stderr, "EMH_CYCLES %ld %llu\\n", samples, emh::pipelined_iterations);
#endif
        const int size = sizes[task];
        for (int i = 0; i < size; i++) {{
            raw_out[i] = (unsigned char)(output[i].to_int() & 0xFF);
        }}
        if (std::fwrite(raw_out, 1, size, out) != (std::size_t)size) {{
            return 3;
        }}
        if (want != NULL) {{
            if (std::fread(expected, 1, size, want) != (std::size_t)size) {{
                std::fprintf(stderr, "the expected file ends before sample %ld\\n", samples);
                return 2;
            }}
            wrong += std::memcmp(expected, raw_out, size) != 0;
        }}
        samples++;
    }}
""" + test_bench_end(top, ("in", "ids"))


def _io(design: _Design, top: str) -> str:
    first = json.loads(_io_json(design.graphs[design.tasks[0]], top))
    tasks = {task: {"id": k, "output": json.loads(_io_json(design.graphs[task], top))["output"]}
             for k, task in enumerate(design.tasks)}
    io = {"top": top, "tasks": tasks, "task_register": "task", "input": first["input"], "quantize": first["quantize"]}
    return json.dumps(io, indent=1) + "\n"


def _body(design: _Design, statements: dict[str, dict[str, tuple[list[str], str]]], sources: MultiTaskSources
          ) -> list[str]:
    """The top's body in run order: a call every task runs alike as is, other calls under `switch (task)`, one case
    per distinct form; what is shared, switched and task-only, and every call, recorded in `sources`."""
    body: list[str] = []
    for key in design.order:
        forms: dict[tuple[str, ...], list[str]] = {}
        for task, (calls, _) in statements[key].items():
            forms.setdefault(tuple(calls), []).append(task)
        holders = design.holders[key]
        first_task, first = next(iter(holders.items()))
        graph = design.graphs[first_task]
        note = statements[key][first_task][1]
        body.append(f"    // {design.index[key]}: {first.op} {_comment(first.name)} -> {graph.tensors[first.output].shape} "
                    f"{graph.tensors[first.output].dtype}; tasks {_comment(', '.join(holders))}" + (f"; {note}" if note else ""))
        everyone = len(holders) == len(design.tasks)
        if len(forms) == 1 and everyone:
            body += [f"    {s}" for s in next(iter(forms))]
            sources.shared.append(first.name)
        else:
            body.append("    switch (task) {")
            for calls, tasks in forms.items():
                body += [f"    case {design.tasks.index(t)}:   // {_comment(t)}" for t in tasks]
                body += [f"        {s}" for s in calls] + ["        break;"]
            body += ["    default:", "        break;", "    }"]
            if len(forms) > 1:
                sources.switched[first.name] = len(forms)
            elif len(holders) > 1:
                sources.shared.append(first.name)
            else:
                sources.task_only.setdefault(first_task, []).append(first.name)
        for calls, tasks in forms.items():
            if calls:
                sources.calls.append((design.graphs[tasks[0]], holders[tasks[0]]))
    return body


def generate_multitask_hls(graphs: dict[str, IntGraph], folder: Path, top: str = "edgemtl_tasks") -> MultiTaskSources:
    """Write one Vitis HLS project serving every task of `graphs` (task id k = the k-th task) into `folder`."""
    _check(graphs, top)
    design = _Design(align_shifts(graphs))
    emitters = {task: _TaskEmitter(graph, design) for task, graph in design.graphs.items()}
    statements: dict[str, dict[str, tuple[list[str], str]]] = {key: {} for key in design.order}
    for task, graph in design.graphs.items():
        for index, (key, node) in enumerate(zip(design.keys[task], graph.nodes)):
            statements[key][task] = emitters[task].node(index, node)
    graph = graphs[design.tasks[0]]
    sources = MultiTaskSources(folder=Path(folder), top=top, files=[], tasks=design.tasks,
                               input_shape=list(graph.tensors[graph.input].shape), input_dtype=graph.tensors[graph.input].dtype,
                               output_shapes={t: list(g.tensors[g.output].shape) for t, g in graphs.items()},
                               output_dtypes={t: g.tensors[g.output].dtype for t, g in graphs.items()})
    body = _body(design, statements, sources)
    dtypes = set(sources.output_dtypes.values())
    out_type = AP_TYPE[dtypes.pop()] if len(dtypes) == 1 else "ap_uint<8>"
    finals = {task: emitters[task].arrays[graph.output] for task, graph in design.graphs.items()}
    folder = Path(folder)
    (folder / "firmware").mkdir(parents=True, exist_ok=True)
    (folder / "tb_data").mkdir(exist_ok=True)
    weights = "\n".join([f"// Generated by edgemtl for tasks {_comment(', '.join(design.tasks))}: do not edit.",
                         f"#ifndef EDGEMTL_{top.upper()}_WEIGHTS_H", f"#define EDGEMTL_{top.upper()}_WEIGHTS_H", "",
                         "#include <stdint.h>", "", f"namespace {top}_weights {{", "", *design.roms.lines,
                         f"}}  // namespace {top}_weights", "", "#endif", ""])
    texts = {f"firmware/{top}.h": _header(design, top, out_type),
             f"firmware/{top}.cpp": _source(design, top, body, finals, out_type),
             f"firmware/{top}_weights.h": weights, f"{top}_test.cpp": _test_bench(design, top, out_type),
             "build_prj.tcl": _tcl(f"tasks {', '.join(design.tasks)}", top, ("inputs.bin", "tasks.bin")),
             "io.json": _io(design, top)}
    for name, text in texts.items():
        (folder / name).write_text(text)
        sources.files.append(folder / name)
    sources.files += copy_kernels(folder)
    sources.rom_bits, sources.activation_bits = list(design.roms.bits), array_bits(design.arrays)
    sources.moe_rows, sources.engine_bits = design.moe_rows, list(design.engine_bits)
    return sources


def write_tb_data(sources: MultiTaskSources, q_inputs: np.ndarray, tasks: list[str],
                  expected: list[np.ndarray] | None = None) -> Path:
    """tb_data/inputs.bin, tasks.bin (and expected.bin) for build_prj.tcl's C simulation; returns the folder."""
    folder = sources.folder / "tb_data"
    folder.mkdir(exist_ok=True)
    (folder / "inputs.bin").write_bytes(as_input_bytes(sources, q_inputs))
    (folder / "tasks.bin").write_bytes(bytes(sources.tasks.index(t) for t in tasks))
    if expected is not None:
        (folder / "expected.bin").write_bytes(b"".join(np.asarray(e).astype(np.int64).astype(np.uint8).tobytes()
                                                       for e in expected))
    return folder


def as_input_bytes(sources: MultiTaskSources, q_inputs: np.ndarray) -> bytes:
    """(N, *input shape) integers in the input dtype's range, as the bytes the test bench reads."""
    q_inputs = np.asarray(q_inputs)
    lo, hi = RANGES[sources.input_dtype]
    if q_inputs.ndim != len(sources.input_shape) + 1 or list(q_inputs.shape[1:]) != sources.input_shape or not len(q_inputs):
        raise EdgemtlError(f"{sources.top}: inputs have shape {q_inputs.shape}, expected (N, "
                           f"{', '.join(map(str, sources.input_shape))})")
    if not np.issubdtype(q_inputs.dtype, np.integer) or q_inputs.min() < lo or q_inputs.max() > hi:
        raise EdgemtlError(f"{sources.top}: inputs must be integers in [{lo}, {hi}] ({sources.input_dtype})")
    return q_inputs.astype(np.int64).astype(np.uint8).tobytes()
