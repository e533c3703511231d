"""The portable C backend: generated C99, compiled on the host (and for rv32 under qemu), must give
exactly `run_reference`'s integers, for every op of the integer graph: in multi-op graphs, and each op alone for
each input signedness its kernel has, on random inputs, all lows, all highs and alternating lows and highs (real
activations: tests/passes, the zoo and edge-CNN paths)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from edgemtl.backends.c.generate import fits_int32
from edgemtl.backends.c import generate_c, riscv_tools_missing, run_on_host, run_on_qemu
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import (FEATURE_LAST, OPS, PER_TENSOR, RANGES, IntGraph, Node, TensorInfo, accumulator, requantize,
                                    check_int32, run_node, run_reference, softmax_exp_table)


class Builder:
    """Builds an IntGraph node by node, calibrating each requantisation on sample data so outputs spread
    over the dtype's range (neither all saturated nor all zero)."""

    def __init__(self, task: str, shape: list[int], dtype: str, seed: int = 0, samples: int = 4) -> None:
        self.rng = np.random.default_rng(seed)
        lo, hi = RANGES[dtype]
        self.graph = IntGraph(task, "x", "x", {"x": TensorInfo("x", list(shape), dtype, 0.05)}, [])
        self.values = {"x": self.rng.integers(lo, hi + 1, size=(samples, *shape))}

    def node(self, op: str, inputs: list[str], dtype: str, shift: int = 14, **attrs) -> str:
        name = f"t{len(self.graph.nodes)}"
        params = {key: attrs.pop(key) for key in [k for k, v in attrs.items() if isinstance(v, np.ndarray)]}
        node = Node(f"layer{len(self.graph.nodes)}.{op}", op, inputs, name, attrs, params)
        self.graph.tensors[name] = TensorInfo(name, [], dtype, 0.05)
        acc = accumulator(node, self.values)
        if acc is not None:
            axis = acc.ndim - 1 if op in FEATURE_LAST else 1
            channels = 1 if op in PER_TENSOR else acc.shape[axis]
            axes = None if op in PER_TENSOR else tuple(i for i in range(acc.ndim) if i != axis)
            spread = np.maximum(acc.std(axis=axes), 1.0)
            centre = acc.mean(axis=axes)
            target = 60.0 if dtype == "int8" else 90.0
            mul = np.maximum(np.rint(2.0**shift * target / spread), 1).astype(np.int64)
            bias = np.rint(-centre + (0 if dtype == "int8" else 0.8 * spread) + self.rng.normal(0, 0.2, channels) * spread)
            node.params["mul"], node.params["add"] = (np.atleast_1d(mul).astype(np.int32),
                                                      np.atleast_1d(bias * mul).astype(np.int32))
            node.attrs["shift"] = shift
        self.values[name] = run_node(node, self.values, self.graph.tensors)
        self.graph.tensors[name].shape = list(self.values[name].shape[1:])
        self.graph.nodes.append(node)
        self.graph.output = name
        return name

    def conv(self, x: str, k: int, kernel: int, dtype: str, stride: int = 1, pads: list[int] | None = None,
             groups: int = 1) -> str:
        c = self.graph.tensors[x].shape[0]
        weight = self.rng.integers(-127, 128, size=(k, c // groups, kernel, kernel)).astype(np.int8)
        return self.node("conv", [x], dtype, weight=weight, stride=[stride, stride], pads=pads or [0, 0, 0, 0],
                         groups=groups)

    def gemm(self, x: str, k: int, dtype: str) -> str:
        weight = self.rng.integers(-127, 128, size=(k, self.graph.tensors[x].shape[0])).astype(np.int8)
        return self.node("gemm", [x], dtype, weight=weight)

    def add(self, a: str, b: str, dtype: str, mul_a: int, mul_b: int, shift: int = 8) -> str:
        name, channels = f"t{len(self.graph.nodes)}", self.graph.tensors[a].shape[0]
        node = Node(f"layer{len(self.graph.nodes)}.add", "add", [a, b], name,
                    {"mul_a": mul_a, "mul_b": mul_b, "shift": shift},
                    {"mul": np.ones(channels, np.int32), "add": self.rng.integers(-300, 300, channels).astype(np.int32)})
        self.graph.tensors[name] = TensorInfo(name, list(self.graph.tensors[a].shape), dtype, 0.05)
        self.values[name] = run_node(node, self.values, self.graph.tensors)
        self.graph.nodes.append(node)
        self.graph.output = name
        return name


def every_op_graph() -> IntGraph:
    """A small multi-branch CNN using every op: 3x3 / depthwise stride 2 / pointwise / asymmetric-pad /
    grouped convs, add with different multipliers, maxpool, bilinear x2 and x4, nearest, requant, concat
    (3-D and 1-D), global pool, flatten, gemm; int8 and uint8 tensors on both sides of the kernels."""
    b = Builder("every_op", [3, 16, 16], "int8")
    a = b.conv("x", 8, 3, "uint8", pads=[1, 1, 1, 1])                              # (8,16,16) u8 <- s8
    dw = b.conv(a, 8, 3, "int8", stride=2, pads=[1, 1, 1, 1], groups=8)            # (8,8,8) depthwise u8 input
    pw = b.conv(dw, 8, 1, "int8")                                                  # pointwise fast path
    d = b.add(dw, pw, "int8", mul_a=181, mul_b=-97)                                # (8,8,8)
    e = b.conv(d, 12, 3, "uint8", stride=2, pads=[0, 1, 1, 0])                     # (12,4,4)
    f = b.node("resize_bilinear", [e], "int8", factor=2)                           # (12,8,8) u8 -> s8
    g = b.node("resize_nearest", [d], "int8", factor=2)                            # (8,16,16)
    h = b.node("maxpool", [g], "int8", kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0])
    h2 = b.node("requant", [h], "int8")
    cat = b.node("concat", [f, h2, d], "int8")                                     # (28,8,8)
    up = b.node("resize_bilinear", [cat], "uint8", factor=4)                       # (28,32,32)
    grouped = b.conv(up, 8, 3, "int8", stride=2, pads=[1, 1, 1, 1], groups=4)      # u8 input, groups 4
    pooled = b.node("avgpool_global", [grouped], "int8", shift=16)                 # (8,)
    mp = b.node("maxpool", [e], "uint8", kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1])   # (12,2,2)
    mp2 = b.node("maxpool", [mp], "uint8", kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0])  # (12,1,1)
    flat = b.node("flatten", [mp2], "uint8")                                       # (12,) alias
    flat_s = b.node("requant", [flat], "int8")
    both = b.node("concat", [pooled, flat_s], "int8")                              # (20,)
    b.gemm(both, 10, "int8")
    return b.graph


def uint8_io_graph() -> IntGraph:
    """uint8 input and output (a segmentation-like head): mixed-signedness add, bilinear x4."""
    b = Builder("uint8_io", [2, 7, 9], "uint8", seed=1)     # 63 pixels: the pointwise remainder loop
    a = b.conv("x", 4, 3, "int8", pads=[1, 1, 1, 1])
    p = b.conv("x", 4, 1, "uint8")
    s = b.add(p, a, "uint8", mul_a=64, mul_b=45, shift=6)
    b.node("resize_bilinear", [s], "uint8", factor=4)
    return b.graph


def reshaped_output_graph() -> IntGraph:
    """A dense head whose output is reshaped to a multi-dimensional sample (landmarks as (5, 2)): the C output
    buffer holds the same row-major bytes."""
    b = Builder("landmarks", [3, 8, 8], "int8", seed=2)
    pooled = b.node("avgpool_global", [b.conv("x", 6, 3, "uint8", pads=[1, 1, 1, 1])], "int8", shift=10)
    b.node("flatten", [b.gemm(pooled, 10, "int8")], "int8", shape=[5, 2])
    return b.graph


def ceil_pool_graph() -> IntGraph:
    """Caffe-era max pools in ceil mode (MTCNN's): the end padding the converter adds never wins, also where every
    value of a border window is negative; then a dense layer, as in MTCNN's output network."""
    b = Builder("ceil_pool", [4, 11, 10], "int8", seed=5)
    odd = b.node("maxpool", ["x"], "int8", kernel=[3, 3], stride=[2, 2], pads=[0, 0, 1, 1])   # (4, 5, 5)
    even = b.node("maxpool", [b.conv(odd, 6, 2, "int8")], "int8", kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 1])
    b.gemm(b.node("flatten", [even], "int8"), 5, "int8")                           # (6, 2, 2) -> (24,) -> (5,)
    return b.graph


def _spread(acc: np.ndarray, shift: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Per last-axis feature: mul / add that centre the accumulator and spread it over int8."""
    flat = acc.reshape(-1, acc.shape[-1])
    mul = np.maximum(np.rint(2.0**shift * 50 / np.maximum(flat.std(axis=0), 1.0)), 1).astype(np.int64)
    return mul.astype(np.int32), (np.rint(-flat.mean(axis=0)) * mul).astype(np.int32)


def moe_graph() -> IntGraph:
    """A task's MoE layer on 12 tokens of 8 features: 4 experts (6 hidden), top 2, a GELU table; the C runs it
    expert by expert over the routed tokens only, the reference densely: the integers must agree."""
    b = Builder("moe", [12, 8], "int8", seed=6)
    rng, x = b.rng, b.values["x"].astype(np.int64)
    experts, hidden, d = 4, 6, 8
    router = rng.integers(-127, 128, (experts, d)).astype(np.int8)
    fc1 = rng.integers(-127, 128, (experts, hidden, d)).astype(np.int8)
    fc2 = rng.integers(-127, 128, (experts, d, hidden)).astype(np.int8)
    gelu = np.clip(np.rint(0.5 * np.arange(-128, 128) * (1 + np.tanh(0.8 * np.arange(-128, 128) * 0.05))),
                   -128, 127).astype(np.int32)
    router_mul, router_add = _spread(x @ router.astype(np.int64).T, 10)
    fc1_mul, fc1_add, fc2_mul, fc2_add = [], [], [], []
    for e in range(experts):
        h_acc = x @ fc1[e].astype(np.int64).T
        mul, add = _spread(h_acc)
        fc1_mul.append(mul), fc1_add.append(add)
        h = requantize(h_acc, mul, add, 14, "int8", channel_axis=-1)
        mul, add = _spread(gelu[h + 128] @ fc2[e].astype(np.int64).T)
        fc2_mul.append(mul), fc2_add.append(add)
    b.node("moe", ["x"], "int8", shift=14, top_k=2, router_shift=10, p=255 * 2**16, router=router,
           router_mul=router_mul, router_add=router_add, exp=softmax_exp_table(0.08), fc1=fc1,
           fc1_mul=np.stack(fc1_mul), fc1_add=np.stack(fc1_add), fc1_shift=np.full(experts, 14, np.int32), gelu=gelu,
           fc2=fc2, fc2_mul=np.stack(fc2_mul), fc2_add=np.stack(fc2_add), fc2_shift=np.full(experts, 14, np.int32))
    return b.graph


def upsampling_graph() -> IntGraph:
    """A learnt x2 and x3 upsampling (ConvTranspose, kernel == stride) from int8 and uint8 inputs, a sigmoid
    table on each signedness (a detector's decoder and its heat-map head) and one table per channel."""
    b = Builder("heatmap", [5, 4, 6], "int8", seed=3)
    rng = b.rng
    up = b.node("conv_transpose", ["x"], "uint8", weight=rng.integers(-127, 128, (6, 5, 2, 2)).astype(np.int8),
                stride=[2, 2])                                                     # (6, 8, 12) u8 <- s8
    up3 = b.node("conv_transpose", [up], "int8", weight=rng.integers(-127, 128, (3, 6, 3, 3)).astype(np.int8),
                 stride=[3, 3])                                                    # (3, 24, 36) s8 <- u8
    sigmoid = np.clip(np.rint(255 / (1 + np.exp(-np.arange(-128, 128) / 16))), 0, 255).astype(np.int32)
    b.node("lut", [up3], "uint8", table=sigmoid, function="Sigmoid")               # s8 -> u8
    b.node("lut", [b.graph.output], "int8", table=np.arange(256, dtype=np.int32) // 2 - 64, function="Test")
    per_channel = rng.integers(-128, 128, (3, 256)).astype(np.int32)  # a PReLU's slopes: one table per channel
    b.node("lut", [b.graph.output], "int8", table=per_channel, function="PRelu")
    return b.graph


def transformer_graph() -> IntGraph:
    """A ViT block's integer ops on tokens (16, 12), both signednesses into each kernel: layernorm, gemm over rows,
    slices of the qkv features, head-major transposes, scores (s8 @ s8) and softmax along the last axis, context
    (u8 @ s8), a position-embedding constant, token mean; a softmax along a middle axis; an average pool."""
    b = Builder("tokens", [16, 12], "int8", seed=4)
    rng = b.rng
    pos = b.node("add_const", ["x"], "int8", shift=6, mul_a=37, constant=rng.integers(-4000, 4000, (16, 12)).astype(np.int32))
    norm = b.node("layernorm", [pos], "int8", shift=20, eps=5)
    qkv = b.node("gemm", [norm], "int8", weight=rng.integers(-127, 128, (24, 12)).astype(np.int8))   # (16, 24)
    q = b.node("slice", [qkv], "int8", axis=1, start=0, stop=8)
    k = b.node("slice", [qkv], "int8", axis=1, start=8, stop=16)
    v = b.node("slice", [qkv], "int8", axis=1, start=16, stop=24)
    q_heads = b.node("transpose", [q], "int8", view=[16, 2, 4], perm=[1, 0, 2])     # (2, 16, 4)
    k_heads = b.node("transpose", [k], "int8", view=[16, 2, 4], perm=[1, 2, 0])     # (2, 4, 16)
    v_heads = b.node("transpose", [v], "int8", view=[16, 2, 4], perm=[1, 0, 2])
    scores = b.node("matmul", [q_heads, k_heads], "int8", shift=12)                   # (2, 16, 16)
    probs = b.node("softmax", [scores], "uint8", axis=2, p=int(2**16 * 255 / 0.6), exp=softmax_exp_table(0.03))
    context = b.node("matmul", [probs, v_heads], "int8", shift=12)                    # (2, 16, 4) u8 @ s8
    merged = b.node("transpose", [context], "int8", view=[2, 16, 4], perm=[1, 0, 2])  # (16, 2, 4)
    tokens = b.node("flatten", [merged], "int8", shape=[16, 8])
    u_norm = b.node("layernorm", [b.node("requant", [tokens], "uint8")], "int8", shift=18, eps=1)  # u8 input
    u_probs = b.node("softmax", [b.node("requant", [u_norm], "uint8")], "uint8", axis=0, p=2**16 * 255,
                     exp=softmax_exp_table(0.02))                                     # along the tokens, u8 input
    rows = b.node("slice", [b.node("requant", [u_norm], "uint8")], "uint8", axis=0, start=0, stop=8)   # (8, 8) u8
    mixed = b.add(b.node("matmul", [u_probs, rows], "int8", shift=10),                 # u8 @ u8
                  b.node("matmul", [tokens, rows], "int8", shift=10), "int8", mul_a=90, mul_b=70)   # s8 @ u8
    grid = b.node("flatten", [mixed], "int8", shape=[8, 4, 4])
    pooled = b.node("avgpool", [grid], "uint8", shift=10, kernel=[3, 3], stride=[1, 1], pads=[1, 1, 1, 1])
    u_pool = b.node("avgpool", [pooled], "int8", shift=10, kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0])
    b.node("reduce_mean", [b.node("flatten", [u_pool], "int8", shape=[8, 4])], "int8", shift=12, view=[1, 8, 4])
    return b.graph


def assert_bit_exact(got: np.ndarray, want: np.ndarray) -> None:
    """Bit for bit: same shape, every value equal (np.array_equal; no tolerance, no broadcasting)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {want.size} values differ"


def random_inputs(graph: IntGraph, n: int, seed: int) -> np.ndarray:
    info = graph.tensors[graph.input]
    lo, hi = RANGES[info.dtype]
    return np.random.default_rng(seed).integers(lo, hi + 1, size=(n, *info.shape))


def test_builder_graphs_are_valid_and_not_saturated() -> None:
    for graph in (every_op_graph(), uint8_io_graph(), upsampling_graph(), transformer_graph(), moe_graph()):
        graph.validate()
        check_int32(graph)
        values = run_reference(graph, random_inputs(graph, 4, 3), keep_all=True)
        for node in graph.nodes:
            lo, hi = RANGES[graph.tensors[node.output].dtype]
            clipped = np.isin(values[node.output], [lo, hi]).mean()
            assert clipped < 0.5, (node.name, clipped)
    assert {n.op for n in every_op_graph().nodes} == {"conv", "gemm", "add", "concat", "requant", "avgpool_global",
                                                      "maxpool", "resize_bilinear", "resize_nearest", "flatten"}
    assert {n.op for n in upsampling_graph().nodes} == {"conv_transpose", "lut"}
    assert {n.op for n in transformer_graph().nodes} >= {"add_const", "layernorm", "gemm", "slice", "transpose", "matmul",
                                                         "softmax", "avgpool", "reduce_mean"}


@pytest.mark.parametrize("make", [every_op_graph, uint8_io_graph, reshaped_output_graph, upsampling_graph,
                                  transformer_graph, ceil_pool_graph, moe_graph])
def test_host_c_is_bit_exact(make, tmp_path: Path) -> None:
    graph = make()
    inputs = random_inputs(graph, 6, seed=7)
    # extreme inputs too: all lows, all highs
    lo, hi = RANGES[graph.tensors[graph.input].dtype]
    inputs = np.concatenate([inputs, np.full_like(inputs[:1], lo), np.full_like(inputs[:1], hi)])
    assert_bit_exact(run_on_host(graph, inputs, tmp_path), run_reference(graph, inputs)[graph.output])


def test_generated_layout_and_arena(tmp_path: Path) -> None:
    graph = every_op_graph()
    sources = generate_c(graph, tmp_path, prefix="every_op")
    names = sorted(p.name for p in sources.files)
    assert names == sorted(["every_op.h", "every_op.c", "every_op_weights.h", "every_op_weights.c",
                            "kernels.h", "kernels.c", "kernels_typed.inc"])
    text = (tmp_path / "every_op.c").read_text()
    assert "static uint8_t every_op_arena[EVERY_OP_ARENA_BYTES]" in text
    assert f"#define EVERY_OP_ARENA_BYTES {sources.plan.arena_bytes}" in (tmp_path / "every_op.h").read_text()
    assert text.count("        EDGEMTL_LAYER_BEGIN(") == len(graph.nodes) - 1   # the flatten is aliased
    assert "alias of its input" in text
    assert sources.plan.arena_bytes >= sources.plan.lower_bound


def test_int64_requantisation_path(tmp_path: Path) -> None:
    """mul * 2^8 with shift + 8 gives the same integers but no longer fits int32: the kernels' int64
    path must agree with the reference (and with the int32 path's graph)."""
    graph = uint8_io_graph()
    wide = copy.deepcopy(graph)
    for node in wide.nodes:
        mul, add = (node.params[k].astype(np.int64) << 8 for k in ("mul", "add"))
        assert np.abs(mul).max() < 2**31 and np.abs(add).max() < 2**31 and node.attrs["shift"] <= 23
        node.params["mul"], node.params["add"] = mul.astype(np.int32), add.astype(np.int32)
        node.attrs["shift"] += 8
    assert all(fits_int32(n, graph) for n in graph.nodes)
    assert not all(fits_int32(n, wide) for n in wide.nodes if n.op == "conv")
    inputs = random_inputs(graph, 4, seed=5)
    want = run_reference(graph, inputs)[graph.output]
    assert_bit_exact(run_reference(wide, inputs)[wide.output], want)
    assert_bit_exact(run_on_host(wide, inputs, tmp_path), want)


def test_requant_rounding_edges(tmp_path: Path) -> None:
    """Negative products on exact .5 boundaries, shift 0 and 31, int32 extremes of mul / add."""
    channels = 6
    graph = IntGraph("edges", "x", "y", {"x": TensorInfo("x", [channels, 1, 8], "int8", 1.0),
                                         "y": TensorInfo("y", [channels, 1, 8], "int8", 1.0),
                                         "z": TensorInfo("z", [channels, 1, 8], "uint8", 1.0),
                                         "w": TensorInfo("w", [channels, 1, 8], "int8", 1.0)}, [])
    graph.nodes = [
        Node("r1", "requant", ["x"], "z", {"shift": 1},
             {"mul": np.array([1, -1, 3, 5, 1, 7], np.int32), "add": np.array([0, 0, -1, 1, 128, -3], np.int32)}),
        Node("r2", "requant", ["z"], "w", {"shift": 31},
             {"mul": np.array([2**31 - 1, 2**30, -(2**31), 2**24, 2**31 - 1, 1], np.int32),
              "add": np.array([-(2**31), 2**30, 0, 2**31 - 1, 0, 0], np.int32)}),
        Node("r3", "add", ["x", "w"], "y", {"shift": 0, "mul_a": -(2**20), "mul_b": 2**12},
             {"mul": np.ones(channels, np.int32), "add": np.arange(channels, dtype=np.int32)}),
    ]
    inputs = np.stack([np.full((channels, 1, 8), v) for v in (-128, -1, 0, 1, 127)]
                      + [np.arange(-128, 128, 5)[:channels * 8].reshape(channels, 1, 8)])
    assert_bit_exact(run_on_host(graph, inputs, tmp_path), run_reference(graph, inputs)["y"])


def test_unsupported_op_names_op_layer_and_task(tmp_path: Path) -> None:
    graph = uint8_io_graph()
    graph.nodes[1].op = "argmax"
    with pytest.raises(EdgemtlError, match=r"task 'uint8_io'.*layer 'layer1\.conv'.*'argmax'.*C backend"):
        generate_c(graph, tmp_path)


def test_inconsistent_shapes_are_refused(tmp_path: Path) -> None:
    graph = uint8_io_graph()
    graph.tensors[graph.nodes[0].output].shape = [4, 7, 8]
    with pytest.raises(EdgemtlError, match=r"layer 'layer0\.conv'"):
        generate_c(graph, tmp_path)


@pytest.mark.needs_qemu
@pytest.mark.parametrize("make", [every_op_graph, uint8_io_graph, upsampling_graph, transformer_graph,
                                  ceil_pool_graph, moe_graph])
def test_qemu_rv32_is_bit_exact_and_counts_instructions(make, tmp_path: Path) -> None:
    """Every op kind the C backend has (every_op_graph and upsampling_graph together) and uint8 input / output
    (uint8_io_graph), 8 samples each including both input extremes, under qemu rv32imac: the same integers as the
    reference, exactly."""
    reason = riscv_tools_missing()
    if reason:
        pytest.skip(reason)
    graph = make()
    if make is every_op_graph:
        assert {n.op for g in (graph, upsampling_graph(), transformer_graph(), moe_graph())
                for n in g.nodes} == set(OPS)
    lo, hi = RANGES[graph.tensors[graph.input].dtype]
    inputs = random_inputs(graph, 8, seed=11)
    inputs[0], inputs[1] = lo, hi
    run = run_on_qemu(graph, inputs, tmp_path, timeout_s=120)
    want = run_reference(graph, inputs)[graph.output]
    assert_bit_exact(run.outputs, want)
    assert run.layer_instructions.shape == (8, len(graph.nodes))
    computed = [i for i, n in enumerate(graph.nodes) if n.op != "flatten"]  # a flatten is an alias: no code
    assert (run.layer_instructions[:, computed] > 0).all()
    # icount makes the count deterministic; the first conv needs at least ~2 instructions per MAC
    first = next((n for n in graph.nodes if "weight" in n.params), None)
    if first is not None:
        per_output = first.params["weight"].shape[1:] if first.op == "conv" else first.params["weight"].shape[1:2]
        macs = int(np.prod(graph.tensors[first.output].shape)) * int(np.prod(per_output))
        assert run.layer_instructions[:, graph.nodes.index(first)].min() > 2 * macs
    assert (run.total_instructions >= run.layer_instructions.sum(axis=1)).all()


# -- one test per op: the op alone behind the graph input, so its own input takes the extremes ---------------------
def _extreme_inputs(graph: IntGraph, seed: int = 3) -> np.ndarray:
    info = graph.tensors[graph.input]
    lo, hi = RANGES[info.dtype]
    rng = np.random.default_rng(seed)
    alternating = np.where(np.arange(info.elements).reshape(info.shape) % 2 == 0, lo, hi)
    return np.concatenate([rng.integers(lo, hi + 1, size=(4, *info.shape)), np.full((1, *info.shape), lo),
                           np.full((1, *info.shape), hi), alternating[None], alternating[None][..., ::-1]])


def _single(op: str, dtype: str) -> IntGraph:
    """A graph whose (last) node is `op` reading the graph input (two-input ops: the input and a copy of it)."""
    token_ops = ("gemm_rows", "matmul", "add_const", "softmax", "layernorm", "reduce_mean", "transpose", "slice")
    b = Builder(op, [6, 8] if op in token_ops else [4, 6, 6], dtype, seed=len(op))
    rng, other = b.rng, "uint8" if dtype == "int8" else "int8"
    builders: dict[str, Callable[[], str]] = {
        "conv": lambda: b.conv("x", 5, 3, "int8", stride=2, pads=[1, 0, 1, 1]),
        "conv_transpose": lambda: b.node("conv_transpose", ["x"], "int8", stride=[2, 2],
                                         weight=rng.integers(-127, 128, (3, 4, 2, 2)).astype(np.int8)),
        "gemm": lambda: b.gemm(b.node("flatten", ["x"], dtype), 7, "int8"),
        "gemm_rows": lambda: b.node("gemm", ["x"], "int8", weight=rng.integers(-127, 128, (5, 8)).astype(np.int8)),
        "add": lambda: b.add("x", b.node("requant", ["x"], other), "int8", mul_a=113, mul_b=-77),
        "concat": lambda: b.node("concat", ["x", b.node("requant", ["x"], dtype)], dtype),
        "requant": lambda: b.node("requant", ["x"], other),
        "avgpool_global": lambda: b.node("avgpool_global", ["x"], "int8", shift=12),
        "maxpool": lambda: b.node("maxpool", ["x"], dtype, kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1]),
        "resize_bilinear": lambda: b.node("resize_bilinear", ["x"], "int8", factor=3),
        "resize_nearest": lambda: b.node("resize_nearest", ["x"], dtype, factor=2),
        "flatten": lambda: b.gemm(b.node("flatten", ["x"], dtype), 3, "int8"),
        "lut": lambda: b.node("lut", ["x"], "int8", table=rng.integers(-128, 128, 256).astype(np.int32), function="T"),
        "avgpool": lambda: b.node("avgpool", ["x"], "int8", shift=10, kernel=[2, 3], stride=[2, 1], pads=[1, 1, 0, 1]),
        "transpose": lambda: b.node("transpose", ["x"], dtype, view=[6, 2, 4], perm=[1, 2, 0]),
        "slice": lambda: b.node("slice", ["x"], dtype, axis=1, start=2, stop=7),
        "matmul": lambda: b.node("matmul", ["x", b.node("transpose", ["x"], dtype, view=[6, 8], perm=[1, 0])],
                                 "int8", shift=12),
        "add_const": lambda: b.node("add_const", ["x"], "int8", shift=6, mul_a=41,
                                    constant=rng.integers(-3000, 3000, (6, 8)).astype(np.int32)),
        "softmax": lambda: b.node("softmax", ["x"], "uint8", axis=1, p=int(2**16 * 255), exp=softmax_exp_table(0.04)),
        "layernorm": lambda: b.node("layernorm", ["x"], "int8", shift=19, eps=3),
        "reduce_mean": lambda: b.node("reduce_mean", ["x"], "int8", shift=12, view=[1, 6, 8]),
    }
    builders[op]()
    return b.graph


CASES = [(op, dtype) for op in [*(o for o in OPS if o != "moe"), "gemm_rows"] for dtype in ("int8", "uint8")]


def test_every_op_has_a_case() -> None:
    assert {op for op, _ in CASES} | {"moe"} >= set(OPS)


@pytest.mark.parametrize(("op", "dtype"), CASES)
def test_op_alone_is_bit_exact_at_the_extremes(op: str, dtype: str, tmp_path: Path) -> None:
    graph = _single(op, dtype)
    assert graph.nodes[-1].op == ("gemm" if op == "gemm_rows" else op) or op == "flatten"
    inputs = _extreme_inputs(graph)
    assert_bit_exact(run_on_host(graph, inputs, tmp_path), run_reference(graph, inputs)[graph.output])


def test_moe_alone_is_bit_exact_at_the_extremes(tmp_path: Path) -> None:
    """int8 tokens only (the kernel takes the layernorm's signed output)."""
    graph = moe_graph()
    inputs = _extreme_inputs(graph)
    assert_bit_exact(run_on_host(graph, inputs, tmp_path), run_reference(graph, inputs)[graph.output])
