"""The GAP9 cost model by hand: L2 / L3 placement bytes on a tiny integer graph (fits, weights in L3, activations
in L3, too big for L2 or for L3), the cycle arithmetic of one convolution (and of L3 traffic), the kernel classes,
and the qemu instruction table's labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgemtl.analysis.mcu_cost import (KERNELS, SIM_PROVENANCE, McuSpec, estimate_cycles, layer_work, param_bytes,
                                       place_in_memory, simulated_instructions)
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import IntGraph, Node, TensorInfo
from edgemtl.targets import load_target


def requant_params(channels: int) -> dict[str, np.ndarray]:
    return {"mul": np.ones(channels, np.int32), "add": np.zeros(channels, np.int32)}


def tiny_graph() -> IntGraph:
    """x (3,8,8) int8 -conv 3x3 pad 1-> a (4,8,8) uint8 -avgpool-> p (4,) -gemm-> y (2,)."""
    tensors = {"x": TensorInfo("x", [3, 8, 8], "int8", 0.1), "a": TensorInfo("a", [4, 8, 8], "uint8", 0.1),
               "p": TensorInfo("p", [4], "int8", 0.1), "y": TensorInfo("y", [2], "int8", 0.1)}
    nodes = [
        Node("conv1", "conv", ["x"], "a", {"stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1, "shift": 8},
             {"weight": np.ones((4, 3, 3, 3), np.int8), **requant_params(4)}),
        Node("pool", "avgpool_global", ["a"], "p", {"shift": 8}, requant_params(4)),
        Node("fc", "gemm", ["p"], "y", {"shift": 8}, {"weight": np.ones((2, 4), np.int8), **requant_params(2)}),
    ]
    return IntGraph("tiny", "x", "y", tensors, nodes)


# Hand-computed bytes of tiny_graph():
#   weights: conv 4*3*3*3 = 108 int8 + (4 mul + 4 add) * 4 B = 140; pool (4 + 4) * 4 = 32; fc 2*4 = 8 + (2 + 2) * 4 = 24
#   arena: x (192 B) and a (256 B) are alive together at the conv; later tensors fit in x's old place -> 448 B
WEIGHTS = {"conv1": 140, "pool": 32, "fc": 24}
ARENA = 448


def spec(l2: int, l3: int | None = 10_000, l1: int = 64) -> McuSpec:
    return McuSpec(l1_bytes=l1, l2_bytes=l2, l3_bytes=l3, clock_mhz=370, l2_l1_gbps=2.96,
                   l3_gbps=0.4 if l3 is not None else 0.0)


def place(l2: int, l3: int | None = 10_000):
    return place_in_memory(tiny_graph(), spec(l2, l3), code_base_bytes=0, code_bytes_per_layer=0)


def test_param_bytes_count_int8_weights_and_int32_requant() -> None:
    assert [param_bytes(n) for n in tiny_graph().nodes] == list(WEIGHTS.values())


def test_everything_fits_l2() -> None:
    placement = place(l2=ARENA + 196)
    assert placement.status == "fits-l2" and placement.overflow is None and placement.fits
    assert placement.verdict.startswith("fits in L2") and placement.activation_l3_traffic_bytes == 0
    assert (placement.arena_bytes, placement.weight_bytes, placement.staging_bytes) == (ARENA, 196, 0)
    assert placement.l2_used_bytes == 644 and placement.l3_used_bytes == 0 and placement.weights_in_l3 == []


def test_code_allowance_counts_per_layer() -> None:
    placement = place_in_memory(tiny_graph(), spec(l2=10**6), code_base_bytes=1000, code_bytes_per_layer=10)
    assert placement.code_bytes == 1030 and placement.l2_used_bytes == ARENA + 196 + 1030


def test_weights_spill_to_l3_largest_first() -> None:
    # L2 600 B: spilling conv1 (140 B) leaves 448 + 56 kept + staging 2 * min(140, L1 64) = 128 -> 632 > 600;
    # spilling pool (32 B) next leaves 448 + 24 + 128 = 600 -> fits.
    placement = place(l2=600)
    assert placement.status == "weights-in-l3"
    assert [(e["name"], e["bytes"]) for e in placement.weights_in_l3] == [("conv1", 140), ("pool", 32)]
    assert placement.staging_bytes == 128 and placement.l2_used_bytes == 600 and placement.l3_used_bytes == 172
    assert placement.spilled_layers == {0, 1}


def test_activations_move_to_l3_when_the_arena_does_not_fit_even_without_weights() -> None:
    # L2 500 B: every weight in L3 still needs 448 arena + 128 staging = 576. Activations go to L3, largest first:
    #   a (256 B) -> L2 arena of x / p / y = 192 (x alone at the conv; p, y later in x's place); a is touched by
    #   conv1 (writes it) and pool (reads it): activation staging 2 * min(256, L1 64) = 128;
    #   need 192 + 0 + weight staging 128 + 128 = 448 <= 500.
    # Weight blocks come back largest first while they fit: conv1 (140) -> 192 + 140 + 2*min(32, 64) + 128 = 524 no;
    #   pool (32) -> 192 + 32 + 128 + 128 = 480 yes; fc (24) -> 192 + 56 + 128 + 128 = 504 no.
    placement = place(l2=500)
    assert placement.status == "activations-in-l3" and placement.fits and placement.overflow is None
    assert placement.activations_in_l3 == [{"tensor": "a", "bytes": 256, "tensors": ["a"]}]
    assert (placement.full_arena_bytes, placement.arena_bytes) == (ARENA, 192)
    assert [e["name"] for e in placement.weights_in_l3] == ["conv1", "fc"] and placement.l3_used_bytes == 164
    assert (placement.weight_staging_bytes, placement.activation_staging_bytes, placement.staging_bytes) == (128, 128,
                                                                                                            256)
    assert placement.l2_used_bytes == 480
    # L3: 164 B of weights + 256 B of activations; traffic: conv1 writes a (256), pool reads it (256)
    assert placement.activation_l3_bytes == 256 and placement.l3_total_bytes == 420
    assert placement.activation_l3_traffic_bytes == 512 and placement.l3_tensors == {"a"}
    assert placement.verdict.startswith("fits with activations in L3")
    assert "512 B of extra L3 traffic" in placement.verdict
    assert placement.to_dict()["activations_in_l3"][0]["tensor"] == "a"


def test_activation_tier_moves_more_buffers_when_l2_is_tighter() -> None:
    # L2 392 B: after a, x (192 B) goes too -> arena p / y = 4 + 4 (aligned) = 8; conv1 touches x and a:
    # staging 2*64 + 2*64 = 256; need 8 + 128 + 256 = 392. No weight block comes back (pool: 8+32+128+256 = 424).
    placement = place(l2=392)
    assert placement.status == "activations-in-l3" and placement.l2_used_bytes == 392
    assert [a["tensor"] for a in placement.activations_in_l3] == ["a", "x"] and placement.arena_bytes == 8
    assert placement.l3_used_bytes == 196 and placement.l3_total_bytes == 196 + 448
    assert placement.activation_l3_traffic_bytes == 192 + 256 + 256  # conv1 reads x, writes a; pool reads a


def test_too_big_for_l2_even_with_every_weight_and_activation_in_l3() -> None:
    # everything in L3: arena 0; staging = weights 128 + the worst layer's activation windows (conv1: x 128 + a 128)
    # = 384 > L2 383
    placement = place(l2=383)
    assert placement.status == "too-big" and not placement.fits
    assert placement.overflow == {"memory": "l2", "part": "code + L3 staging", "needed_bytes": 384,
                                  "capacity_bytes": 383, "bytes": 1}
    assert placement.verdict.startswith("does not fit") and "1 B over" in placement.verdict
    assert "every weight and every activation in L3" in placement.verdict


def test_too_big_only_when_l3_is_short_too() -> None:
    assert place(l2=500, l3=420).status == "activations-in-l3"       # 164 + 256 = 420 B of L3: exactly fits
    placement = place(l2=500, l3=400)
    assert placement.status == "too-big"
    assert placement.overflow == {"memory": "l3", "part": "spilled weights + activations", "needed_bytes": 420,
                                  "capacity_bytes": 400, "bytes": 20}
    assert placement.verdict.startswith("does not fit") and "20 B over" in placement.verdict


def test_estimate_charges_activation_l3_traffic() -> None:
    tight = spec(l2=500)
    placement = place_in_memory(tiny_graph(), tight, code_base_bytes=0, code_bytes_per_layer=0)
    estimate = estimate_cycles(tiny_graph(), tight, l3_efficiency=0.5, placement=placement)
    conv1, pool, fc = estimate.layers
    # conv1: its weights (140, spilled) + its output a (256, in L3); pool: reads a (its weights stay in L2);
    # fc: its weights (24, spilled)
    assert (conv1.l3_bytes, pool.l3_bytes, fc.l3_bytes) == (396, 256, 24)
    b3 = 0.4e9 / 370e6 * 0.5
    assert pool.dma_l3_cycles == pytest.approx(256 / b3)
    assert pool.cycles == pytest.approx(max(pool.compute_cycles, pool.dma_l2_l1_cycles) + 256 / b3)
    record = estimate.to_dict()
    assert record["totals"]["fits"] and record["totals"]["placement"] == "activations-in-l3"


def test_too_big_for_l3() -> None:
    placement = place(l2=600, l3=100)
    assert placement.status == "too-big"
    assert placement.overflow == {"memory": "l3", "part": "spilled weights", "needed_bytes": 172,
                                  "capacity_bytes": 100, "bytes": 72}


def test_no_l3_means_no_spilling() -> None:
    placement = place(l2=600, l3=None)
    assert placement.status == "too-big" and placement.weights_in_l3 == [] and placement.activations_in_l3 == []
    assert placement.overflow["memory"] == "l2" and placement.overflow["bytes"] == 44
    assert "no L3" in placement.verdict and placement.verdict.startswith("does not fit")


def one_conv(groups: int = 1, kernel: int = 3, channels: int = 8, out_channels: int = 16) -> IntGraph:
    pad = kernel // 2
    tensors = {"x": TensorInfo("x", [channels, 16, 16], "int8", 0.1),
               "y": TensorInfo("y", [out_channels, 16, 16], "int8", 0.1)}
    weight = np.ones((out_channels, channels // groups, kernel, kernel), np.int8)
    node = Node("conv", "conv", ["x"], "y", {"stride": [1, 1], "pads": [pad] * 4, "groups": groups, "shift": 8},
                {"weight": weight, **requant_params(out_channels)})
    return IntGraph("one", "x", "y", tensors, [node])


def test_cycles_of_one_conv_by_hand() -> None:
    graph = one_conv()
    estimate = estimate_cycles(graph, spec(l2=10**6), power_mw=50.0, dma_efficiency=0.8)
    layer = estimate.layers[0]
    macs = 16 * 16 * 16 * 8 * 3 * 3                       # output elements x (C/groups) x kh x kw = 294,912
    assert layer.kernel == "conv" and layer.macs == macs
    assert layer.compute_cycles == pytest.approx(macs / 15.5)
    # L2<->L1: input 2048 + output 4096 + weights 1152 + mul/add 128 = 7424 B at 8 B/cycle (2.96 GB/s at 370 MHz) x 0.8
    assert layer.l2_l1_bytes == 7424 and layer.dma_l2_l1_cycles == pytest.approx(7424 / 6.4)
    assert layer.bound == "compute" and layer.cycles == pytest.approx(macs / 15.5)
    assert estimate.latency_s == pytest.approx(macs / 15.5 / 370e6)
    assert estimate.energy_j == pytest.approx(0.050 * macs / 15.5 / 370e6)


def test_l3_weights_add_streaming_cycles() -> None:
    graph = one_conv()
    # arena 2048 + 4096 = 6144 B, weights 1280 B: 7424 B > L2 7000 B; in L3: 6144 + staging 2 * min(1280, 256) = 6656
    tight = McuSpec(l1_bytes=256, l2_bytes=7000, l3_bytes=10**6, clock_mhz=370, l2_l1_gbps=2.96, l3_gbps=0.4)
    placement = place_in_memory(graph, tight, code_base_bytes=0, code_bytes_per_layer=0)
    estimate = estimate_cycles(graph, tight, l3_efficiency=0.5, placement=placement)
    layer = estimate.layers[0]
    assert placement.status == "weights-in-l3" and placement.l2_used_bytes == 6656 and layer.l3_bytes == 1280
    # 0.4 GB/s at 370 MHz = 1.081 B/cycle, x 0.5 -> 1280 B in 2368 cycles, after the compute
    assert layer.dma_l3_cycles == pytest.approx(1280 / (0.4e9 / 370e6 * 0.5))
    assert layer.cycles == pytest.approx(layer.compute_cycles + layer.dma_l3_cycles)


def test_dma_bound_layer() -> None:
    slow = McuSpec(l1_bytes=10**5, l2_bytes=10**6, l3_bytes=None, clock_mhz=370, l2_l1_gbps=0.01, l3_gbps=0.0)
    layer = estimate_cycles(one_conv(), slow).layers[0]
    assert layer.bound == "dma-l2" and layer.cycles == pytest.approx(layer.dma_l2_l1_cycles)


@pytest.mark.parametrize("groups, kernel, channels, expected", [(1, 3, 8, "conv"), (1, 1, 8, "pointwise"),
                                                                (8, 3, 8, "depthwise")])
def test_kernel_classes(groups, kernel, channels, expected) -> None:
    graph = one_conv(groups=groups, kernel=kernel, channels=channels, out_channels=8)
    kind, macs, work = layer_work(graph, graph.nodes[0])
    assert kind == expected and macs == work == 8 * 16 * 16 * (channels // groups) * kernel * kernel
    assert KERNELS[expected].throughput <= KERNELS["conv"].throughput


def test_estimate_on_the_gap9_target_is_labelled_and_json_ready() -> None:
    target = load_target("gap9")
    spec_ = McuSpec.from_target(target)
    assert spec_.l1_bytes == 128000 and spec_.l2_bytes == 1500000 and spec_.clock_mhz == 370
    assert spec_.bytes_per_cycle(spec_.l2_l1_gbps) == pytest.approx(8.0)
    record = estimate_cycles(tiny_graph(), target).to_dict()
    json.dumps(record)
    assert record["provenance"]["kind"] == "estimated" and "analytical model" in record["provenance"]["source"]
    assert record["placement"]["status"] == "fits-l2" and record["totals"]["fits"]
    assert record["context"]["tinymyo"]["power_mw"] == pytest.approx(57.18)
    assert record["assumptions"] and all(layer["cycles"] > 0 for layer in record["layers"])


def test_simulated_instruction_table() -> None:
    graph = tiny_graph()
    counts = np.array([[1000, 300, 90], [1010, 300, 90], [990, 300, 90]])
    estimate = estimate_cycles(graph, spec(l2=10**6))
    table = simulated_instructions(graph, counts, estimate)
    json.dumps(table)
    assert table["provenance"] == SIM_PROVENANCE and "not cycles" in table["note"]
    conv, pool, fc = table["layers"]
    assert conv["macs"] == 4 * 8 * 8 * 27 and conv["instructions"] == 1000
    assert conv["instructions_per_mac"] == pytest.approx(1000 / 6912)
    assert pool["instructions_per_mac"] is None and fc["macs"] == 8
    assert conv["estimated_cycles"] == estimate.layers[0].cycles
    assert "cycles" not in table["totals"]
    with pytest.raises(EdgemtlError, match="shape"):
        simulated_instructions(graph, np.zeros((2, 2)))
