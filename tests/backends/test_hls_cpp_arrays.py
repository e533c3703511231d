"""The static-array plan of the generated HLS designs (backends/hls_cpp/arrays.py): a tensor's array is reused only
once no later kernel reads the tensor, never by a kernel reading it, never across types, a flatten's output keeps
its input's array alive, and the outputs are never overwritten. (The C simulations in test_hls_cpp*.py check the
generated designs bit for bit with the plan in place.)"""

from __future__ import annotations

import sys
from pathlib import Path

from edgemtl.backends.hls_cpp.arrays import Step, array_bits, graph_arrays, plan_arrays

sys.path.insert(0, str(Path(__file__).parent))  # the C backend's test graphs (tests/backends is not on sys.path)
from test_c_backend import transformer_graph  # noqa: E402


def test_a_dead_tensors_array_is_reused_and_a_live_ones_is_not() -> None:
    steps = [Step("a", "int8", 100, ("x",)),              # x dies here; a may not take x's array (a reads x)
             Step("b", "int8", 50, ("a",)),               # a dies: b may not take a's array either
             Step("c", "int8", 80, ("b",)),
             Step("d", "uint8", 80, ("c",)),              # another type: never a signed array
             Step("e", "int8", 120, ("c", "d"))]
    names, arrays = plan_arrays(steps, ("x", "int8", 100), keep={"e"})
    assert names["a"] != names["x"] and names["b"] != names["a"]
    assert names["b"] == names["x"]                       # x was dead after step 0: the smallest free fit
    assert names["c"] == names["a"]                       # a dead after step 1
    assert names["d"] not in {names[k] for k in "xabc"}   # uint8: its own array
    assert names["e"] not in (names["c"], names["d"])     # e reads c and d
    grown = next(a for a in arrays if a.name == names["e"])
    assert grown.elements == 120 and {a.name for a in arrays} == set(names.values())
    assert array_bits(arrays) == [(a.elements, 8) for a in arrays]


def test_a_flatten_keeps_its_input_alive_and_outputs_are_kept() -> None:
    steps = [Step("a", "int8", 64, ("x",)),
             Step("f", "int8", 64, ("a",), alias="a"),    # the flatten: a's array, a dies here but f holds it
             Step("b", "int8", 64, ("x",)),               # must not take a's array (f lives)
             Step("out", "int8", 64, ("f", "b")),
             Step("late", "int8", 64, ("out",))]          # out is kept: late may not overwrite it
    names, _ = plan_arrays(steps, ("x", "int8", 64), keep={"out", "late"})
    assert names["f"] == names["a"] and names["b"] != names["a"]
    assert names["late"] != names["out"]


def test_a_transformer_graph_needs_far_fewer_arrays_than_tensors() -> None:
    graph = transformer_graph()
    names, arrays = graph_arrays(graph)
    assert set(names) == {graph.input, *(n.output for n in graph.nodes)}
    assert len(arrays) < len({n.output for n in graph.nodes if n.op != "flatten"}) / 2
    assert names[graph.input] == "a_in"
