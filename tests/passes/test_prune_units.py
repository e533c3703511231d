"""Attention heads and stacked experts' hidden channels: the units torch-pruning has no pruner for."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import edgemtl
from conftest import tiny_model
from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.data import load_data
from edgemtl.model.onnx_export import export_all_tasks
from edgemtl.passes import prune_units
from edgemtl.passes.prune_pagcp import PAGCPConfig, Surgeon, prune_pagcp


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x)


def test_m3vit_units_are_found_and_its_residual_stream_is_left_alone():
    model, spec = tiny_model("m3vit")
    assert prune_units.custom_units(model) == ["blocks.0.attn#heads", "blocks.1.attn#heads", "blocks.1.mlp#hidden"]
    units = Surgeon(spec).prunable_groups(model)
    assert {"blocks.0.attn#heads", "blocks.1.attn#heads", "blocks.1.mlp#hidden", "blocks.0.mlp.fc1"} <= set(units)
    # qkv / proj / router are inside custom units or would cut the bare position embedding: never torch-pruning roots
    assert not any(u.endswith((".qkv", ".proj", ".router")) and u.startswith("blocks") for u in units)
    assert "patch_embed" not in units


def test_removing_a_head_is_removing_what_it_adds():
    model, spec = tiny_model("m3vit")
    x = torch.randn(2, *spec.input.shape)
    pruned = prune_units.remove(model, "blocks.0.attn#heads", [1])
    silenced = copy.deepcopy(model)
    attention = silenced.blocks[0].attn
    inner, size = attention.qkv.out_features // 3, attention.head_dim
    with torch.no_grad():  # head 1's values at zero: it adds nothing through proj
        attention.qkv.weight[2 * inner + size: 2 * inner + 2 * size] = 0
        attention.qkv.bias[2 * inner + size: 2 * inner + 2 * size] = 0
    assert pruned.blocks[0].attn.heads == 1 and pruned.blocks[0].attn.proj.in_features == size
    expected, got = _outputs(silenced, x), _outputs(pruned, x)
    for task in expected:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-5)


def test_removing_hidden_channels_takes_them_from_every_expert():
    model, spec = tiny_model("m3vit")
    x = torch.randn(2, *spec.input.shape)
    pruned = prune_units.remove(model, "blocks.1.mlp#hidden", [0, 5])
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.blocks[1].mlp.w2[:, [0, 5], :] = 0
    experts, dim, hidden = model.blocks[1].mlp.w1.shape
    assert pruned.blocks[1].mlp.w1.shape == (experts, dim, hidden - 2) and pruned.blocks[1].mlp.w2.shape[1] == hidden - 2
    expected, got = _outputs(silenced, x), _outputs(pruned, x)
    for task in expected:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-5)
    assert prune_units.saliency(model, "blocks.1.mlp#hidden").shape == (hidden,)


@pytest.mark.slow
def test_pagcp_prunes_the_m3vit_and_the_result_loads_and_exports(tmp_path):
    model, spec = tiny_model("m3vit")
    data = load_data("scenes", "val", n=16)
    config = PAGCPConfig(flops_target=0.7, default_max_drop=50.0, finetune_steps=0, final_finetune_steps=0,
                         oracle_samples=8, max_rounds=1, keep_fraction=1.0, planned_rounds=0, min_channels=1,
                         bn_recalibration_samples=0, sparsity_steps=0, min_share=0.0)
    pruned, pruned_spec, record = prune_pagcp(model, spec, data, data, config, show_progress=False)
    assert record.kept_ratios["blocks.1.mlp#hidden"] < 1 or record.kept_ratios["blocks.0.attn#heads"] < 1
    assert record.macs_after < record.macs_before
    loaded = edgemtl.load(edgemtl.save(pruned, pruned_spec, tmp_path / "pruned.pt"))
    x = torch.randn(1, *spec.input.shape)
    expected, got = _outputs(pruned, x), _outputs(loaded.model, x)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    session = ort_backend.make_session(export_all_tasks(loaded.model, loaded.spec, spec.task_names, tmp_path / "p.onnx"), 1)
    onnx_outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for name, value in zip([o.name for o in session.get_outputs()], onnx_outputs):
        np.testing.assert_allclose(value, expected[name].numpy(), rtol=1e-3, atol=1e-4)


def test_taylor_counts_every_parameter_of_a_head_its_qkv_biases_too():
    """A head whose only gradient is on its q/k/v biases still scores (the biases leave with the head in `remove`)."""
    model, _ = tiny_model("m3vit")
    attention = model.blocks[0].attn
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    size = attention.head_dim
    attention.qkv.bias.grad.view(3, -1, size)[2, 1] = 1.0     # v bias of head 1 only
    with torch.no_grad():
        attention.qkv.bias.fill_(0.5)
    scores = prune_units.taylor(model, "blocks.0.attn#heads")
    assert scores[1] == pytest.approx(0.5 * size) and scores[0] == 0
