"""L1 tiling of token layers by hand: a head's B resident or in column blocks (rows re-read per block), a gemm's
weights resident or in output blocks, softmax / layernorm rows, overflows named in the cycle estimate."""

from __future__ import annotations

import numpy as np
import pytest

from edgemtl.analysis.l1_tiling import tile_layer
from edgemtl.analysis.mcu_cost import McuSpec, estimate_cycles, param_bytes
from edgemtl.model.intgraph import IntGraph, Node, TensorInfo
from edgemtl.targets import load_target


def scores_graph(heads: int = 2, tokens: int = 16, head_dim: int = 4) -> IntGraph:
    """q (h, T, d) int8 -transpose-> kt (h, d, T); q @ kt -> s (h, T, T) int8 -> softmax along the keys -> p uint8."""
    tensors = {"q": TensorInfo("q", [heads, tokens, head_dim], "int8", 0.1),
               "kt": TensorInfo("kt", [heads, head_dim, tokens], "int8", 0.1),
               "s": TensorInfo("s", [heads, tokens, tokens], "int8", 0.1),
               "p": TensorInfo("p", [heads, tokens, tokens], "uint8", 1 / 255)}
    nodes = [Node("keys", "transpose", ["q"], "kt", {"view": [heads, tokens, head_dim], "perm": [0, 2, 1]}),
             Node("scores", "matmul", ["q", "kt"], "s", {"shift": 12, "mul": 1, "add": 0}),
             Node("probs", "softmax", ["s"], "p", {"axis": 2, "p": 2**16})]
    return IntGraph("attn", "q", "p", tensors, nodes)


def tile(graph: IntGraph, index: int, l1: int):
    node = graph.nodes[index]
    return tile_layer(graph, node, l1, param_bytes(node))


def test_a_head_of_b_resident_moves_every_byte_once() -> None:
    graph = scores_graph()   # A 2*16*4 = 128 B, B 128 B, out 2*16*16 = 512 B
    whole = tile(graph, 1, 128_000)
    assert (whole.blocks, whole.rows_per_tile, whole.fits, whole.traffic_bytes) == (1, 16, True, 768)
    assert whole.working_set_bytes == 64 + 2 * 16 * (4 + 16)
    few_rows = tile(graph, 1, 64 + 2 * 2 * (4 + 16))          # B (4 x 16 = 64 B) + two rows in and out, twice
    assert (few_rows.blocks, few_rows.rows_per_tile, few_rows.traffic_bytes) == (1, 2, 768)


def test_b_in_column_blocks_re_reads_the_rows_per_block() -> None:
    graph = scores_graph()
    blocked = tile(graph, 1, 40)   # c columns: 4c + 2 (4 + c) <= 40 -> c = 5, 4 blocks of the 16 keys
    assert (blocked.blocks, blocked.rows_per_tile, blocked.fits) == (4, 1, True)
    assert blocked.working_set_bytes == 5 * 4 + 2 * (4 + 5)
    assert blocked.traffic_bytes == 768 + 2 * 3 * 16 * 4       # each head's 16 rows of q read 3 more times
    assert "4 blocks of 5 columns" in blocked.plan


def test_too_small_an_l1_is_an_overflow_named_in_the_estimate() -> None:
    graph = scores_graph()
    assert not tile(graph, 1, 10).fits
    row = tile(graph, 2, 10_000)   # a softmax row of 16: in + out double-buffered, int32 exponentials
    assert (row.working_set_bytes, row.fits, row.traffic_bytes) == (2 * 16 * 2 + 4 * 16, True, 1024)
    assert not tile(graph, 2, 127).fits
    spec = McuSpec(l1_bytes=127, l2_bytes=1_000_000, l3_bytes=None, clock_mhz=370, l2_l1_gbps=2.96, l3_gbps=0.0)
    totals = estimate_cycles(graph, spec).to_dict()["totals"]
    assert totals["l1_overflows"] == ["probs: a row of 16 needs 128 B > L1 127 B"]


def test_a_gemm_over_token_rows_keeps_its_weights_or_blocks_them() -> None:
    tensors = {"x": TensorInfo("x", [16, 12], "int8", 0.1), "y": TensorInfo("y", [16, 8], "int8", 0.1)}
    params = {"weight": np.ones((8, 12), np.int8), "mul": np.ones(8, np.int32), "add": np.zeros(8, np.int32)}
    graph = IntGraph("rows", "x", "y", tensors, [Node("fc", "gemm", ["x"], "y", {"shift": 8}, params)])
    moved = 16 * 12 + 16 * 8 + 96 + 64
    assert tile(graph, 0, 128_000).traffic_bytes == moved
    blocked = tile(graph, 0, 60)   # 20 B per output (12 weights + mul + add); 20c + 2 (12 + c) <= 60 -> c = 1
    assert blocked.blocks == 8 and blocked.traffic_bytes == moved + 7 * 16 * 12
    vector = IntGraph("vec", "x", "y", {"x": TensorInfo("x", [12], "int8", 0.1), "y": TensorInfo("y", [8], "int8", 0.1)},
                      [Node("fc", "gemm", ["x"], "y", {"shift": 8}, params)])
    assert tile(vector, 0, 60) is None   # a vector streams its weights once: the ideal figure holds


@pytest.mark.parametrize("tokens, blocks", [(400, 1), (2048, 2)])
def test_long_sequences_on_the_gap9_block_the_keys_and_pay_for_it(tokens, blocks) -> None:
    """A TinyMyo-sized sequence keeps one head's K (64 x 400 B) in the 128 kB L1; 2048 tokens (128 kB of K per
    head) do not: K goes in two blocks and the queries are read twice, which the estimate charges."""
    graph = scores_graph(heads=1, tokens=tokens, head_dim=64)
    estimate = estimate_cycles(graph, load_target("gap9"))
    layer = estimate.layers[1]
    ideal = 2 * tokens * 64 + tokens * tokens
    assert layer.l1_fits and layer.l1_working_set_bytes <= 128_000
    assert layer.l2_l1_bytes == ideal + (blocks - 1) * tokens * 64
    assert f"{blocks} blocks" in layer.l1_plan if blocks > 1 else "resident" in layer.l1_plan
    assert estimate.to_dict()["totals"]["l1_overflows"] == []
