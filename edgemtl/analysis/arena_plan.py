"""A static activation arena for one integer graph: liveness intervals + an offline greedy-by-size allocator.

An MCU has no heap worth using, so every activation of an `IntGraph` gets a fixed offset in one byte
array. Two tensors may share bytes only when they are never alive at the same time.

Liveness, in node indices (inclusive): a tensor is born at the node that writes it (the graph input at
node 0) and dies at the last node that reads it (the graph output at the last node). A node's inputs and
its output are therefore alive together, so a kernel never writes over what it still reads.

Aliases: a `flatten` only relabels (C,1,1) as (C,), so with `alias_flatten` its output shares its
input's bytes (no copy); the two form one buffer whose interval is the union of theirs.

Allocation (TFLite-Micro's "greedy by size"): buffers sorted by size (largest first, ties by birth), each
placed in the smallest gap between already-placed, time-overlapping buffers that holds it, else after
the last of them. Offsets and allocated sizes are rounded up to `alignment` bytes. `lower_bound` is the
most bytes alive at any one node, which no plan can beat; `arena_bytes / lower_bound` measures the
allocator's fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import IntGraph

BYTES_PER_ELEMENT = {"int8": 1, "uint8": 1}


@dataclass
class ArenaPlan:
    """Where each activation tensor lives in the arena (every tensor name, aliases included)."""

    offsets: dict[str, int]
    sizes: dict[str, int]                   # true bytes of each tensor
    intervals: dict[str, tuple[int, int]]   # (first node, last node), inclusive, of the tensor's buffer
    aliases: dict[str, str]                 # tensor -> the tensor whose bytes it reuses
    arena_bytes: int
    lower_bound: int
    alignment: int

    def overlaps_in_time(self, a: str, b: str) -> bool:
        (a0, a1), (b0, b1) = self.intervals[a], self.intervals[b]
        return a0 <= b1 and b0 <= a1

    def to_dict(self) -> dict[str, Any]:
        return {"arena_bytes": self.arena_bytes, "lower_bound": self.lower_bound, "alignment": self.alignment,
                "tensors": {name: {"offset": self.offsets[name], "bytes": self.sizes[name],
                                   "live": list(self.intervals[name]), "alias_of": self.aliases.get(name)}
                            for name in self.offsets}}


def _round_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def tensor_bytes(graph: IntGraph, name: str) -> int:
    info = graph.tensors[name]
    if info.dtype not in BYTES_PER_ELEMENT:
        raise EdgemtlError(f"task {graph.task!r}: tensor {name!r} has dtype {info.dtype!r}, which the arena cannot hold")
    return info.elements * BYTES_PER_ELEMENT[info.dtype]


def liveness(graph: IntGraph) -> dict[str, tuple[int, int]]:
    """(first, last) node index of each activation tensor, before any aliasing."""
    last_node = max(len(graph.nodes) - 1, 0)
    intervals: dict[str, list[int]] = {graph.input: [0, 0]}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name not in intervals:
                raise EdgemtlError(f"task {graph.task!r}: layer {node.name!r} reads {name!r} before it is computed")
            intervals[name][1] = max(intervals[name][1], index)
        intervals[node.output] = [index, index]
    if graph.output not in intervals:
        raise EdgemtlError(f"task {graph.task!r}: the output {graph.output!r} is never computed")
    intervals[graph.output][1] = last_node
    return {name: (first, last) for name, (first, last) in intervals.items()}


def _alias_roots(graph: IntGraph, alias_flatten: bool) -> dict[str, str]:
    aliases: dict[str, str] = {}
    if alias_flatten:
        for node in graph.nodes:
            if node.op == "flatten":
                source = node.inputs[0]
                aliases[node.output] = aliases.get(source, source)
    return aliases


def _place(size: int, interval: tuple[int, int], placed: list[tuple[int, int, tuple[int, int]]]) -> int:
    """Smallest gap among time-overlapping placed buffers (offset, size, interval) that holds `size`."""
    conflicts = sorted((offset, offset + used) for offset, used, (first, last) in placed
                       if first <= interval[1] and interval[0] <= last)
    best_offset, best_gap, cursor = None, None, 0
    for start, end in conflicts:
        gap = start - cursor
        if gap >= size and (best_gap is None or gap < best_gap):
            best_offset, best_gap = cursor, gap
        cursor = max(cursor, end)
    return cursor if best_offset is None else best_offset


def plan_arena(graph: IntGraph, alignment: int = 1, alias_flatten: bool = True) -> ArenaPlan:
    """Liveness-based static arena for `graph`'s activations (input and output included)."""
    if alignment < 1:
        raise EdgemtlError(f"arena alignment must be >= 1 byte, got {alignment}")
    intervals = liveness(graph)
    sizes = {name: tensor_bytes(graph, name) for name in intervals}
    aliases = _alias_roots(graph, alias_flatten)
    buffers: dict[str, tuple[int, int]] = {}
    for name, (first, last) in intervals.items():
        root = aliases.get(name, name)
        old = buffers.get(root, (first, last))
        buffers[root] = (min(old[0], first), max(old[1], last))
    buffer_size = {root: max(sizes[n] for n in intervals if aliases.get(n, n) == root) for root in buffers}

    order = sorted(buffers, key=lambda root: (-buffer_size[root], buffers[root][0], root))
    placed: list[tuple[int, int, tuple[int, int]]] = []
    root_offset: dict[str, int] = {}
    for root in order:
        allocated = _round_up(buffer_size[root], alignment)
        root_offset[root] = _place(allocated, buffers[root], placed)
        placed.append((root_offset[root], allocated, buffers[root]))
    arena = max((offset + used for offset, used, _ in placed), default=0)

    steps = range(max(len(graph.nodes), 1))
    lower = max(sum(buffer_size[r] for r, (f, l) in buffers.items() if f <= i <= l) for i in steps)
    return ArenaPlan(offsets={n: root_offset[aliases.get(n, n)] for n in intervals}, sizes=sizes,
                     intervals={n: buffers[aliases.get(n, n)] for n in intervals}, aliases=aliases,
                     arena_bytes=arena, lower_bound=lower, alignment=alignment)
