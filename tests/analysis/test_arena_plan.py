"""The static activation arena: hand-computed offsets on a chain with a skip connection, and the safety
property (tensors alive at the same time never share a byte) on an mtl-cnn-like graph and random DAGs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgemtl.analysis.arena_plan import liveness, plan_arena
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import IntGraph, Node, TensorInfo


def graph_of(shapes: dict[str, list[int]], nodes: list[tuple[str, list[str], str]], output: str,
             dtypes: dict[str, str] | None = None) -> IntGraph:
    """Structure only: the plan reads shapes, dtypes and who reads what."""
    tensors = {n: TensorInfo(n, s, (dtypes or {}).get(n, "int8"), 1.0) for n, s in shapes.items()}
    return IntGraph("t", "x", output, tensors, [Node(f"n{i}", op, ins, out) for i, (op, ins, out) in enumerate(nodes)])


def chain_with_skip() -> IntGraph:
    # x(64 B) -conv-> a(128) -conv-> b(256) -conv-> c(128) -add(c, a)-> d(128)
    return graph_of({"x": [1, 8, 8], "a": [2, 8, 8], "b": [4, 8, 8], "c": [2, 8, 8], "d": [2, 8, 8]},
                    [("conv", ["x"], "a"), ("conv", ["a"], "b"), ("conv", ["b"], "c"), ("add", ["c", "a"], "d")], "d",
                    dtypes={"a": "uint8"})


def test_chain_with_skip_by_hand() -> None:
    plan = plan_arena(chain_with_skip())
    # Live intervals: x [0,0], a [0,3] (the skip keeps it until the add), b [1,2], c [2,3], d [3,3].
    assert plan.intervals == {"x": (0, 0), "a": (0, 3), "b": (1, 2), "c": (2, 3), "d": (3, 3)}
    # Live bytes per node: 0: x+a = 192, 1: a+b = 384, 2: a+b+c = 512, 3: a+c+d = 384 -> lower bound 512.
    assert plan.lower_bound == 512
    # Greedy by size: b (256) at 0; a (128) beside b at 256; c (alive with a and b) at 384; d (alive with
    # a and c, not b) takes b's old place at 0 (the smallest gap that holds it); x (alive only with a) at 0.
    assert plan.offsets == {"b": 0, "a": 256, "c": 384, "d": 0, "x": 0}
    assert plan.arena_bytes == 512
    assert plan.to_dict()["tensors"]["a"] == {"offset": 256, "bytes": 128, "live": [0, 3], "alias_of": None}


def test_alignment_rounds_offsets() -> None:
    shapes = {"x": [3], "a": [5], "b": [7]}
    plan = plan_arena(graph_of(shapes, [("gemm", ["x"], "a"), ("gemm", ["a"], "b")], "b"), alignment=4)
    assert all(offset % 4 == 0 for offset in plan.offsets.values())
    assert plan.lower_bound == 12 and plan.arena_bytes == 16     # a (5 -> 8 B) next to b (7 -> 8 B)


def test_flatten_aliases_its_input() -> None:
    shapes = {"x": [4, 1, 1], "f": [4], "y": [3]}
    graph = graph_of(shapes, [("flatten", ["x"], "f"), ("gemm", ["f"], "y")], "y")
    plan = plan_arena(graph)
    assert plan.aliases == {"f": "x"} and plan.offsets["f"] == plan.offsets["x"]
    assert plan.intervals["x"] == plan.intervals["f"] == (0, 1)
    assert plan.arena_bytes == 7
    unaliased = plan_arena(graph, alias_flatten=False)
    # without the alias: x + f alive at node 0 (8 B), f + y at node 1 (7 B); y reuses x's bytes
    assert unaliased.aliases == {} and unaliased.arena_bytes == 8 and unaliased.offsets["y"] == unaliased.offsets["x"]


def mtl_cnn_like() -> IntGraph:
    """Stem, two residual blocks with a downsample, then two task heads (seg: upsample + concat skip;
    cls: global pool + flatten-free gemm) merged into one output only through a final concat."""
    s = {"x": [3, 32, 32], "s": [8, 32, 32], "b1": [8, 32, 32], "b2": [8, 32, 32], "r1": [8, 32, 32],
         "d": [16, 16, 16], "c1": [16, 16, 16], "c2": [16, 16, 16], "r2": [16, 16, 16],
         "u": [16, 32, 32], "cat": [24, 32, 32], "seg": [4, 32, 32], "p": [16], "cls": [8],
         "m": [16, 1, 1], "fl": [16]}
    nodes = [("conv", ["x"], "s"), ("conv", ["s"], "b1"), ("conv", ["b1"], "b2"), ("add", ["b2", "s"], "r1"),
             ("conv", ["r1"], "d"), ("conv", ["d"], "c1"), ("conv", ["c1"], "c2"), ("add", ["c2", "d"], "r2"),
             ("avgpool_global", ["r2"], "p"), ("maxpool", ["r2"], "m"), ("flatten", ["m"], "fl"),
             ("gemm", ["p"], "cls"), ("resize_bilinear", ["r2"], "u"), ("concat", ["u", "r1"], "cat"),
             ("conv", ["cat"], "seg")]
    return graph_of(s, nodes, "seg")


def random_dag(seed: int) -> IntGraph:
    rng = np.random.default_rng(seed)
    shapes, nodes = {"x": [int(rng.integers(1, 40))]}, []
    for i in range(int(rng.integers(3, 14))):
        out = f"t{i}"
        shapes[out] = [int(rng.integers(1, 60))]
        inputs = list(rng.choice(list(shapes)[:-1], size=min(int(rng.integers(1, 4)), len(shapes) - 1), replace=False))
        nodes.append(("concat", inputs, out))
    return graph_of(shapes, nodes, f"t{len(nodes) - 1}")


def assert_safe(graph: IntGraph, alignment: int = 1) -> None:
    plan = plan_arena(graph, alignment=alignment)
    assert plan.lower_bound <= plan.arena_bytes
    for a, b in itertools.combinations(plan.offsets, 2):
        if plan.aliases.get(a, a) == plan.aliases.get(b, b) or not plan.overlaps_in_time(a, b):
            continue
        a0, b0 = plan.offsets[a], plan.offsets[b]
        assert a0 + plan.sizes[a] <= b0 or b0 + plan.sizes[b] <= a0, (a, b)
    for name, offset in plan.offsets.items():
        assert 0 <= offset and offset + plan.sizes[name] <= plan.arena_bytes
    # every node's inputs and output are alive at that node
    for index, node in enumerate(graph.nodes):
        for name in [*node.inputs, node.output]:
            first, last = plan.intervals[name]
            assert first <= index <= last


def test_mtl_cnn_like_graph_is_safe_and_tight() -> None:
    graph = mtl_cnn_like()
    assert_safe(graph)
    assert_safe(graph, alignment=4)
    plan = plan_arena(graph)
    assert plan.intervals["s"] == (0, 3) and plan.intervals["r1"] == (3, 13) and plan.intervals["seg"] == (14, 14)
    assert plan.arena_bytes <= 1.25 * plan.lower_bound


@pytest.mark.parametrize("seed", range(40))
def test_random_dags_are_safe(seed: int) -> None:
    assert_safe(random_dag(seed), alignment=1 + seed % 4)


def test_liveness_rejects_unknown_reads() -> None:
    graph = graph_of({"x": [4], "y": [4]}, [("gemm", ["z"], "y")], "y")
    with pytest.raises(EdgemtlError, match="reads 'z'"):
        liveness(graph)
