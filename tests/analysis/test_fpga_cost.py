"""The FPGA roofline: hand-computed layers, MoE layers through the expert-major plan, the ZCU104 target,
and layers read from the zoo models."""

from __future__ import annotations

import json

import pytest

from edgemtl.analysis.cost import model_cost
from edgemtl.analysis.fpga_cost import (PROVENANCE, FabricSpec, LayerCost, MoEShape, estimate_model,
                                        fabric_from_target, layers_from_model, macs_per_dsp_per_cycle,
                                        precision_bits, roofline)
from edgemtl.errors import EdgemtlError
from edgemtl.targets import load_target
from tests.conftest import tiny_model

# 10 DSPs at 100 MHz, 1 GB/s DDR, 10,000 B on chip; w8a8 -> 1 MAC per DSP per cycle.
# utilisation 0.5 -> 10 * 1 * 100e6 * 0.5 = 5e8 MAC/s; DDR efficiency 0.5 -> 5e8 B/s; packing 1.0.
FABRIC = FabricSpec(part="test", clock_mhz=100, dsp=10, lut=100_000, bram18=10, uram=2, on_chip_bytes=10_000,
                    ddr_bandwidth_gbps=1.0)
KNOBS = dict(dsp_utilisation=0.5, ddr_efficiency=0.5, on_chip_packing=1.0)

# conv A: 5e6 MACs -> 10 ms compute; 4000 B weights -> 8 us if streamed (no stall: compute hides it)
# fc B:   1000 MACs -> 2 us; 6000 B -> 12 us if streamed: stall 10 us, 1.667 ns per byte kept on chip
# fc C:   1000 MACs -> 2 us; 3000 B -> 6 us if streamed:  stall 4 us,  1.333 ns per byte
# reserve the largest activations (1000 B): 9000 B for weights -> B (6000) then C (3000) resident, A streamed
LAYERS = [LayerCost("A", macs=5_000_000, weights=4000, activations=1000, kind="conv"),
          LayerCost("B", macs=1000, weights=6000, activations=500, kind="linear"),
          LayerCost("C", macs=1000, weights=3000, activations=200, kind="linear")]


def test_hand_computed_layers():
    est = roofline(LAYERS, FABRIC, weight_bits=8, act_bits=8, **KNOBS)
    a, b, c = est.layers
    assert est.macs_per_dsp_per_cycle == 1
    assert (a.resident, b.resident, c.resident) == (False, True, True)
    assert a.offchip_bytes == 4000 and b.offchip_bytes == c.offchip_bytes == 0
    assert a.compute_s == pytest.approx(0.01) and a.memory_s == pytest.approx(8e-6) and a.bound == "compute"
    assert b.latency_s == pytest.approx(2e-6) and c.latency_s == pytest.approx(2e-6)
    assert est.latency_s == pytest.approx(0.010004)
    assert est.fps == pytest.approx(1 / 0.010004)
    assert est.memory_s == pytest.approx(8e-6) and est.offchip_bytes == 4000
    r = est.resources
    # 9000 B of resident weights fit one URAM (36,864 B); the 1000 B activation buffer one BRAM18 (2304 B)
    assert (r["resident_weight_bytes"], r["activation_buffer_bytes"], r["uram"], r["bram18"]) == (9000, 1000, 1, 1)
    assert r["dsp"] == 10 and r["lut"] == 30 * 10 + 20_000 and r["fits"]
    d = est.to_dict()
    assert d["provenance"] == PROVENANCE and PROVENANCE["kind"] == "estimated"
    assert d["latency_ms"] == pytest.approx(10.004) and all(layer["provenance"] == PROVENANCE for layer in d["layers"])
    assert d["resources"]["provenance"] == PROVENANCE and len(d["assumptions"]) >= 8
    json.dumps(d)


def test_no_room_streams_everything_and_four_bit_packs_two_macs():
    tight = FabricSpec(**{**FABRIC.__dict__, "on_chip_bytes": 1000})  # just the activation buffer
    est = roofline(LAYERS, tight, weight_bits=4, act_bits=4, **KNOBS)
    # 4-bit: 2 MACs per DSP -> 1e9 MAC/s; weights are half a byte: A 2000 B, B 3000 B, C 1500 B, all streamed
    a, b, c = est.layers
    assert est.macs_per_dsp_per_cycle == 2 and not any(layer.resident for layer in est.layers)
    assert a.compute_s == pytest.approx(5e-3) and a.offchip_bytes == 2000
    assert b.memory_s == pytest.approx(6e-6) and b.bound == "memory" and b.latency_s == pytest.approx(6e-6)
    assert c.memory_s == pytest.approx(3e-6) and c.latency_s == pytest.approx(3e-6)
    assert est.latency_s == pytest.approx(5e-3 + 6e-6 + 3e-6)
    assert est.offchip_bytes == 6500 and est.resources["resident_weight_bytes"] == 0
    assert (macs_per_dsp_per_cycle(4, 8), macs_per_dsp_per_cycle(8, 8), macs_per_dsp_per_cycle(2, 3)) == (1, 1, 2)


def test_moe_layer_uses_the_expert_major_plan():
    # the memory-plan test's layer: d=4, h=8, E=4, k=2, T=6, router input 6, 1 byte per value:
    # all experts + router 332 B, expert-major working set 2*76 + 28 = 180 B, activations 72 B, traffic 332 B
    shape = MoEShape(dim=4, hidden=8, experts=4, top_k=2, tokens=6, router_in=6)
    moe = LayerCost("moe", macs=6 * 2 * 2 * 4 * 8 + 6 * 6 * 4, weights=332, kind="moe", moe=shape)  # 912 MACs
    fabric = FabricSpec(part="test", clock_mhz=100, dsp=10, lut=100_000, bram18=10, uram=2, on_chip_bytes=400,
                        ddr_bandwidth_gbps=0.1)
    knobs = dict(dsp_utilisation=1.0, ddr_efficiency=1.0, on_chip_packing=1.0)
    # 400 B - 72 B activations - 180 B streaming set = 148 B < 332 B: streamed, 332 B at 0.1 GB/s = 3.32 us
    (layer,) = roofline([moe], fabric, 8, 8, **knobs).layers
    assert not layer.resident and layer.offchip_bytes == 332 and layer.weight_bytes == 332
    assert layer.compute_s == pytest.approx(912e-9) and layer.latency_s == pytest.approx(3.32e-6)
    est = roofline([moe], fabric, 8, 8, **knobs)
    assert est.resources["moe_stream_buffer_bytes"] == 180 and est.resources["activation_buffer_bytes"] == 72
    # with room for all experts the layer is resident: no traffic, compute-bound, no streaming buffer
    roomy = roofline([moe], FabricSpec(**{**fabric.__dict__, "on_chip_bytes": 10_000}), 8, 8, **knobs)
    assert roomy.layers[0].resident and roomy.offchip_bytes == 0 and roomy.latency_s == pytest.approx(912e-9)
    assert roomy.resources["moe_stream_buffer_bytes"] == 0


def test_shared_weights_are_resident_once_and_streamed_per_run():
    # one module run once per task (two runs): kept on chip, its 3000 B count once; streamed, they cross twice
    runs = [LayerCost("mlp", 1000, 3000, weights_key="mlp"), LayerCost("mlp#2", 1000, 3000, weights_key="mlp")]
    kept = roofline(runs, FABRIC, 8, 8, **KNOBS)
    assert all(layer.resident for layer in kept.layers) and kept.resources["resident_weight_bytes"] == 3000
    tight = FabricSpec(**{**FABRIC.__dict__, "on_chip_bytes": 100})
    streamed = roofline(runs, tight, 8, 8, **KNOBS)
    assert streamed.offchip_bytes == 6000
    bad = [LayerCost("x", 1, 10, weights_key="k"), LayerCost("y", 1, 20, weights_key="k")]
    with pytest.raises(EdgemtlError, match="disagree"):
        roofline(bad, FABRIC, 8, 8)


def test_bad_arguments():
    with pytest.raises(EdgemtlError, match="at least one layer"):
        roofline([], FABRIC, 8, 8)
    with pytest.raises(EdgemtlError, match="1..16-bit"):
        roofline(LAYERS, FABRIC, 32, 32)
    with pytest.raises(EdgemtlError, match="dsp_utilisation"):
        roofline(LAYERS, FABRIC, 8, 8, dsp_utilisation=1.5)
    assert precision_bits("w4a8") == (4, 8)
    with pytest.raises(EdgemtlError, match="w<bits>a<bits>"):
        precision_bits("fp32")


def test_zcu104_fabric_from_the_target():
    fabric = fabric_from_target(load_target("zcu104"))
    assert (fabric.clock_mhz, fabric.dsp, fabric.lut, fabric.bram18, fabric.uram) == (200, 1728, 230_400, 624, 96)
    assert fabric.on_chip_bytes == 1_437_696 + 3_538_944 and fabric.ddr_bandwidth_gbps == 19.2
    with pytest.raises(EdgemtlError, match="no fpga-fabric"):
        fabric_from_target(load_target("host"))


def test_layers_of_the_zoo_models_add_up_to_the_cost_analysis():
    model, spec = tiny_model("mtl-cnn")
    task = spec.tasks[0].name
    layers = layers_from_model(model, spec, task)
    cost = model_cost(model, spec, [task]).tasks[task]
    assert sum(layer.macs for layer in layers) == cost.macs
    assert any(layer.kind == "conv" for layer in layers)

    vit, vspec = tiny_model("m3vit")
    vtask = vspec.tasks[0].name
    vlayers = layers_from_model(vit, vspec, vtask)
    (moe,) = [layer for layer in vlayers if layer.kind == "moe"]
    assert moe.moe == MoEShape(dim=16, hidden=32, experts=4, top_k=2, tokens=64, router_in=20)
    # attention products: 2 blocks x 2 heads x 64 x 64 tokens x (8 + 8) head dims
    (rest,) = [layer for layer in vlayers if layer.kind == "unattributed"]
    assert rest.macs == 2 * 2 * 64 * 64 * 16
    assert sum(layer.macs for layer in vlayers) == model_cost(vit, vspec, [vtask]).tasks[vtask].macs
    out = estimate_model(vit, vspec, load_target("zcu104"), vtask, "w4a4")
    assert out["provenance"] == PROVENANCE and out["precision"] == "w4a4" and out["fps"] > 0
    assert out["macs_per_dsp_per_cycle"] == 2 and out["resources"]["fits"]
    json.dumps(out)
