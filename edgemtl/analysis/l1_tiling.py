"""How the token layers of a task path are tiled for the cluster's L1, and the L2<->L1 traffic the tiling costs.

Why: the cycle estimate's DMA term counts every byte of a layer crossing L2<->L1 once, which holds only while one
operand of a product stays in L1 as the other streams through. Attention is where that breaks first: the scores
Q K^T need one head's K resident, the context P V one head's V, and softmax / layernorm need whole rows. A TinyMyo-
sized encoder (hundreds of tokens) does not keep a head's K in the 128 kB L1. Per layer (bytes; tiles that stream
are double-buffered, resident operands are not):

- matmul A (h, m, k) @ B (h, k, n): one head's B resident (k n) beside 2 (r k + r n) for r rows of A; when not even
  one row fits beside it, B goes in blocks of c columns (k c resident, one row of A at a time) and A is re-read once
  per block: traffic = A x blocks + B + out.
- gemm over token rows (W: o x i, int8, plus its int32 mul / add per output): W resident beside 2 (r i + r o); else
  W in blocks of o' outputs and the rows re-read once per block. A gemm on one vector streams W once: ideal.
- softmax / layernorm along rows of n: one row in and out, double-buffered, plus an int32 row (the exponentials or
  the centred values): 2 (n + n) + 4 n. A row that does not fit is an L1 overflow, named in the estimate.

Every other layer keeps the ideal figure (convolutions' halos and re-reads are Deeploy's tiler's business). All of it
is an *estimate*: the bytes a tiler with these tile shapes would move, not a tiler's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgemtl.analysis.arena_plan import BYTES_PER_ELEMENT, tensor_bytes
from edgemtl.model.intgraph import IntGraph, Node

INT32_BYTES = 4
TILED_OPS = ("matmul", "gemm", "softmax", "layernorm")


@dataclass(frozen=True)
class L1Tile:
    """One layer's L1 tiling: the working set, the L2<->L1 bytes it moves and whether it fits at all."""

    working_set_bytes: int   # L1 bytes the chosen tiles need (resident operand + double-buffered tiles)
    traffic_bytes: int       # L2<->L1 bytes per inference, re-reads included
    rows_per_tile: int       # rows of the streamed operand per tile
    blocks: int              # column / output blocks of the resident operand (1: resident whole)
    fits: bool
    plan: str                # one line: what stays, what streams


def _element_bytes(graph: IntGraph, name: str) -> int:
    return BYTES_PER_ELEMENT[graph.tensors[name].dtype]


def _largest(limit: int, need) -> int:
    """The largest r in [0, limit] with need(r) true (need is monotone: true up to some r)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid) else (lo, mid - 1)
    return lo


def _product(l1: int, rows: int, k: int, n: int, a_bytes: int, out_bytes: int, per_column: int,
             what: str) -> L1Tile:
    """rows x k (streamed) times a k x n operand (per_column: its bytes per column) kept in L1 whole or in column
    blocks; traffic_bytes here is only what the blocks re-read of the streamed operand."""
    def fits(r: int, columns: int) -> bool:
        return columns * per_column + 2 * r * (k * a_bytes + columns * out_bytes) <= l1

    r = _largest(rows, lambda r: fits(r, n))
    if r >= 1:
        return L1Tile(n * per_column + 2 * r * (k * a_bytes + n * out_bytes), 0, r, 1, True,
                      f"{what} resident ({n * per_column} B), {r} of {rows} rows per tile")
    c = _largest(n, lambda c: fits(1, c))
    if c == 0:
        need = per_column + 2 * (k * a_bytes + out_bytes)
        return L1Tile(need, 0, 1, n, False, f"one row and one column of {what} need {need} B > L1 {l1} B")
    blocks = math.ceil(n / c)
    r = _largest(rows, lambda r: fits(r, c))
    return L1Tile(c * per_column + 2 * r * (k * a_bytes + c * out_bytes), (blocks - 1) * rows * k * a_bytes, r,
                  blocks, True, f"{what} in {blocks} blocks of {c} columns, the rows re-read per block")


def tile_layer(graph: IntGraph, node: Node, l1_bytes: int, param_bytes: int) -> L1Tile | None:
    """The L1 tiling of a token layer (module docstring; param_bytes: its weights as stored), or None for a layer
    that keeps the ideal figure."""
    if node.op not in TILED_OPS:
        return None
    x, out = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    x_bytes, out_bytes = _element_bytes(graph, node.inputs[0]), _element_bytes(graph, node.output)
    moved = sum(tensor_bytes(graph, name) for name in node.inputs) + tensor_bytes(graph, node.output) + param_bytes
    if node.op == "matmul":
        b = graph.tensors[node.inputs[1]]
        m, k, n = x.shape[-2], x.shape[-1], b.shape[-1]
        heads = out.elements // (m * n)
        one = _product(l1_bytes, m, k, n, x_bytes, out_bytes, k * _element_bytes(graph, node.inputs[1]),
                       "one head's B")
        return L1Tile(one.working_set_bytes, moved + heads * one.traffic_bytes, one.rows_per_tile, one.blocks,
                      one.fits, f"{heads} head(s): {one.plan}")
    if node.op == "gemm":
        o, i = node.params["weight"].shape
        rows = x.elements // i
        if rows == 1:
            return None
        tile = _product(l1_bytes, rows, i, o, x_bytes, out_bytes, math.ceil(param_bytes / o), "W")
        return L1Tile(tile.working_set_bytes, moved + tile.traffic_bytes, tile.rows_per_tile, tile.blocks,
                      tile.fits, tile.plan)
    n = x.shape[int(node.attrs["axis"]) % len(x.shape)] if node.op == "softmax" else x.shape[-1]
    need = 2 * n * (x_bytes + out_bytes) + INT32_BYTES * n
    plan = f"one row of {n} at a time ({need} B)" if need <= l1_bytes else f"a row of {n} needs {need} B > L1 {l1_bytes} B"
    return L1Tile(need, moved, 1, 1, need <= l1_bytes, plan)
