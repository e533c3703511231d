"""The static arrays a generated HLS design keeps its tensors in, each reused once the tensor it holds is dead.

Why: with every tensor in its own static array, BRAM was the binding resource of the m3vit designs (81-88% of the
XCZU7EV's BRAM18 per task design, the design serving every task past the part). The kernels run one after another
(no dataflow), each reading its inputs and writing its output in arrays of their own, so an array whose tensor no
later kernel reads can take the next tensor of its type: the liveness plan of a register allocator. The C simulation
checks the result bit for bit, as for any design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

from edgemtl.model.intgraph import IntGraph

AP_TYPE = {"int8": "ap_int<8>", "uint8": "ap_uint<8>"}


@dataclass
class Array:
    """One static array: its C++ name and type, its size (the largest tensor it holds) and the tensors it holds."""

    name: str
    dtype: str
    elements: int
    tensors: int = 0                                 # how many tensors it holds over the run
    holding: set[Hashable] = field(default_factory=set)   # the live tensors in it now (a flatten shares its input's)


@dataclass(frozen=True)
class Step:
    """One kernel call in run order: the tensor it writes (its key, dtype and elements; `alias`: the key of the tensor
    whose array it reuses as is, for a flatten; None for a call that writes nothing) and the tensors it reads."""

    output: Hashable | None
    dtype: str
    elements: int
    reads: tuple[Hashable, ...]
    alias: Hashable | None = None


def plan_arrays(steps: list[Step], first: tuple[Hashable, str, int], keep: set[Hashable]) -> tuple[dict[Hashable, str], list[Array]]:
    """Each tensor's array, and the arrays: `first` (key, dtype, elements) is the input (array `a_in`), `keep` the
    tensors read after the last step (the outputs). A tensor's array is freed after the last step that reads it, and
    a step's output never takes an array one of its own inputs is in."""
    last = {key: index for index, step in enumerate(steps) for key in step.reads}
    arrays: list[Array] = []
    of: dict[Hashable, Array] = {}

    def place(key: Hashable, array: Array) -> None:
        array.holding.add(key)
        array.tensors += 1
        of[key] = array

    place(first[0], _new(arrays, "a_in", first[1], first[2]))
    for index, step in enumerate(steps):
        if step.output is not None:
            if step.alias is not None:
                place(step.output, of[step.alias])
            else:
                free = [a for a in arrays if not a.holding and a.dtype == step.dtype]
                fits = [a for a in free if a.elements >= step.elements]
                array = (min(fits, key=lambda a: a.elements) if fits else max(free, key=lambda a: a.elements) if free
                         else _new(arrays, f"a{len(arrays)}", step.dtype, step.elements))
                array.elements = max(array.elements, step.elements)
                place(step.output, array)
        dead = {key for key in step.reads if last[key] == index}
        if step.output is not None and step.output not in last:   # written, never read: only an output stays
            dead.add(step.output)
        for key in dead - keep:
            of[key].holding.discard(key)
    return {key: array.name for key, array in of.items()}, arrays


def graph_arrays(graph: IntGraph) -> tuple[dict[str, str], list[Array]]:
    """One task graph's plan: each tensor's array (a flatten's output shares its input's), and the arrays."""
    steps = [Step(node.output, graph.tensors[node.output].dtype, graph.tensors[node.output].elements, tuple(node.inputs),
                  node.inputs[0] if node.op == "flatten" else None) for node in graph.nodes]
    x = graph.tensors[graph.input]
    return plan_arrays(steps, (graph.input, x.dtype, x.elements), {graph.output})


def _new(arrays: list[Array], name: str, dtype: str, elements: int) -> Array:
    arrays.append(Array(name, dtype, elements))
    return arrays[-1]


def declarations(arrays: list[Array]) -> list[str]:
    """The arrays as the top function's static declarations."""
    return [f"    static {AP_TYPE[a.dtype]} {a.name}[{a.elements}];   // {a.tensors} tensor(s), {a.dtype}" for a in arrays]


def array_bits(arrays: list[Array]) -> list[tuple[int, int]]:
    """(elements, bits) of each array, as the estimate counts them."""
    return [(a.elements, 8) for a in arrays]
