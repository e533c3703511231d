"""MoE memory planning: a hand-computed layer, the does-not-fit case, a real model, and the ZCU104 target."""

from __future__ import annotations

import pytest

from edgemtl.analysis.memory_plan import on_chip_bytes_of, plan_moe_layer, plan_moe_model, precision_bytes
from edgemtl.errors import EdgemtlError
from edgemtl.targets import load_target
from tests.conftest import tiny_model

# d=4, h=8, E=4, k=2, T=6 tokens, router input 6 (d + a 2-wide task embedding), 1 byte per value:
#   expert_bytes = 4*8 + 8 + 8*4 + 4 = 76
#   router_bytes = (6 + 1) * 4 = 28
#   token-major:  weights 4*76 + 28 = 332, activations 4 + 2*8 + 4 = 24, peak 356, traffic 332
#   expert-major: weights 2*76 + 28 = 180, balanced batch ceil(2*6/4) = 3,
#                 activations 6*4 + 6*4 + 3*8 = 72, peak 252, traffic 332
LAYER = dict(name="moe", dim=4, hidden=8, experts=4, top_k=2, tokens=6, router_in=6, weight_bytes=1,
             activation_bytes=1)


def test_hand_computed_layer_unbounded():
    plan = plan_moe_layer(**LAYER, on_chip_bytes=0)
    assert plan.expert_bytes == 76
    token, expert = plan.token_major, plan.expert_major
    assert (token.weight_bytes_on_chip, token.activation_bytes_on_chip, token.peak_on_chip_bytes) == (332, 24, 356)
    assert token.weight_traffic_bytes == 332 and token.fits_on_chip and not token.reloads_per_token
    assert (expert.weight_bytes_on_chip, expert.activation_bytes_on_chip, expert.peak_on_chip_bytes) == (180, 72, 252)
    assert expert.weight_traffic_bytes == 332 and expert.fits_on_chip and not expert.reloads_per_token


def test_does_not_fit_reloads_per_token():
    # 300 B on chip < 356: token-major holds only a token's 2 experts + router (2*76 + 28 = 180, peak 204)
    # and moves T*k*expert_bytes + router = 6*2*76 + 28 = 940 B; expert-major (252 B) still fits, 332 B moved
    plan = plan_moe_layer(**LAYER, on_chip_bytes=300)
    token, expert = plan.token_major, plan.expert_major
    assert token.reloads_per_token and token.fits_on_chip
    assert (token.weight_bytes_on_chip, token.peak_on_chip_bytes, token.weight_traffic_bytes) == (180, 204, 940)
    assert expert.fits_on_chip and (expert.peak_on_chip_bytes, expert.weight_traffic_bytes) == (252, 332)
    # 200 B: even the reload working set (204) and expert-major (252) exceed it, and the plan says so
    tight = plan_moe_layer(**LAYER, on_chip_bytes=200)
    assert tight.token_major.reloads_per_token and not tight.token_major.fits_on_chip
    assert not tight.expert_major.fits_on_chip and "exceeds" in tight.expert_major.notes


def test_measured_batch_and_single_buffer():
    # largest expert batch 6 tokens: activations 6*4 + 6*4 + 6*8 = 96; one buffer: weights 76 + 28 = 104
    plan = plan_moe_layer(**LAYER, on_chip_bytes=0, double_buffer=False, tokens_per_expert=[6, 3, 2, 1])
    assert (plan.expert_major.weight_bytes_on_chip, plan.expert_major.activation_bytes_on_chip) == (104, 96)


def test_bad_layer_arguments():
    with pytest.raises(EdgemtlError, match="top-k must lie in 1..4"):
        plan_moe_layer(**{**LAYER, "top_k": 5}, on_chip_bytes=0)
    with pytest.raises(EdgemtlError, match="tokens_per_expert needs 4 counts"):
        plan_moe_layer(**LAYER, on_chip_bytes=0, tokens_per_expert=[6, 6])


def test_plan_of_tiny_m3vit():
    # tiny m3vit: d=16, h=32, E=4, k=2, router input 16 + 4 (task embedding), 8x8 = 64 tokens, 1 B/value:
    #   expert_bytes = 16*32 + 32 + 32*16 + 16 = 1072, router_bytes = 21*4 = 84
    #   token-major:  4*1072 + 84 = 4372 weights + (16 + 2*32 + 16) = 96 activations -> peak 4468
    #   expert-major: 2*1072 + 84 = 2228 weights + (64*16 + 64*16 + ceil(2*64/4)*32) = 3072 -> peak 5300
    # At this width holding every token's input and output outweighs the experts, so the ratio is below 1;
    # at 8 tokens expert-major needs 2228 + (8*16 + 8*16 + 4*32) = 2612 and the ratio is 4468/2612 > 1.
    model, _ = tiny_model("m3vit")
    tokens = model.grid[0] * model.grid[1]
    plan = plan_moe_model(model, tokens, on_chip_bytes=0, weight_bytes=1, activation_bytes=1)
    assert [layer.name for layer in plan.layers] == ["blocks.1.mlp"] and len(model.moe_layers()) == 1
    assert plan.layers[0].expert_bytes == 1072 and plan.layers[0].experts == 4 and tokens == 64
    assert (plan.peak_bytes("token-major"), plan.peak_bytes("expert-major")) == (4468, 5300)
    assert plan.traffic_bytes("token-major") == plan.traffic_bytes("expert-major") == 4372
    few_tokens = plan_moe_model(model, 8, on_chip_bytes=0, weight_bytes=1, activation_bytes=1)
    assert few_tokens.peak_bytes("expert-major") == 2612 and few_tokens.ratio == 4468 / 2612 > 1
    data = plan.to_dict()
    assert data["totals"]["expert_major"]["peak_on_chip_bytes"] == 5300 and data["ratio"] == 4468 / 5300
    assert len(data["layers"]) == 1
    # a task keeping 2 experts: 2*1072 + 21*2 = 2186 weights + 96 -> token-major peak 2282
    fewer = plan_moe_model(model, tokens, 0, 1, 1, experts_per_layer=[2])
    assert fewer.layers[0].experts == 2 and fewer.peak_bytes("token-major") == 2282
    with pytest.raises(EdgemtlError, match="experts_per_layer has 2 entries"):
        plan_moe_model(model, tokens, 0, 1, 1, experts_per_layer=[2, 2])


def test_precision_bytes():
    assert precision_bytes("w4a4") == (0.5, 0.5) and precision_bytes("fp32") == (4, 4)
    with pytest.raises(EdgemtlError, match="unknown precision 'fp16'; valid: fp32, int8, w4a4, w8a8"):
        precision_bytes("fp16")


def test_zcu104_target():
    target = load_target("zcu104")
    assert target.flow == "fpga-hls4ml" and target.device.reach == "jtag"
    assert target.part == "xczu7ev-ffvc1156-2-e" and target.precisions == ["w4a4", "w8a8"]
    assert on_chip_bytes_of(target) == 1_437_696 + 3_538_944
    assert on_chip_bytes_of(load_target("host")) == 0
