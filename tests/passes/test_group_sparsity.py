"""The sparsity phase before pruning: torch-pruning's group-norm regulariser on the groups PAGCP may cut."""

from __future__ import annotations

import copy

import torch

from conftest import tiny_model
from edgemtl.data import load_data
from edgemtl.passes.group_sparsity import group_sparsity_regulariser
from edgemtl.passes.prune_pagcp import Surgeon
from edgemtl.training import TrainConfig, train


def _channel_norms(model: torch.nn.Module, layer: str) -> torch.Tensor:
    return model.get_submodule(layer).weight.detach().flatten(1).norm(dim=1)


def test_the_regulariser_drives_the_weakest_channels_of_prunable_groups_down_and_spares_the_heads_outputs():
    model, spec = tiny_model("mtl-cnn")
    data = load_data("scenes", "train", n=64)
    roots = Surgeon(spec).prunable_groups(model)
    layer = roots[0]
    weakest = int(torch.argmin(_channel_norms(model, layer)))
    config = TrainConfig(steps=40, batch_size=16, lr=1e-3, warmup_steps=1)
    plain, regularised = copy.deepcopy(model), copy.deepcopy(model)
    train(plain, spec, data, config, show_progress=False)
    train(regularised, spec, data, config, show_progress=False,
          after_backward=group_sparsity_regulariser(regularised, spec, roots, strength=1.0))
    assert _channel_norms(regularised, layer)[weakest] < 0.8 * _channel_norms(plain, layer)[weakest]
    # a task's output layer is not a prunable root: the regulariser leaves its output channels to the loss alone
    output_layer = "heads.scene.fc"
    assert output_layer not in roots
    assert torch.allclose(_channel_norms(regularised, output_layer), _channel_norms(plain, output_layer), rtol=0.2)


def test_pagcp_sparsifies_a_copy_and_still_guards_against_the_original():
    from edgemtl.passes.prune_pagcp import PAGCPConfig, prune_pagcp
    model, spec = tiny_model("mtl-cnn")
    data = load_data("scenes", "train", n=32)
    before = copy.deepcopy(model.state_dict())
    config = PAGCPConfig(flops_target=0.9, default_max_drop=5.0, sparsity_steps=3, finetune_steps=1,
                         final_finetune_steps=0, oracle_samples=8, max_rounds=1)
    pruned, _, record = prune_pagcp(model, spec, data, data, config, show_progress=False)
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in before.items())  # input untouched
    assert record.macs_after < record.macs_before


def test_the_regulariser_accepts_a_vit_whose_units_include_heads_and_experts():
    """The first benchmark smoke run stopped here: `blocks.0.attn#heads` is no module; those units are left to the
    loss (torch-pruning's regulariser knows no heads) and the ViT's torch-pruning groups are regularised."""
    model, spec = tiny_model("m3vit")
    units = Surgeon(spec).prunable_groups(model)
    assert any("#" in unit for unit in units)
    data = load_data("scenes", "train", n=16)
    before = copy.deepcopy(model)
    train(model, spec, data, TrainConfig(steps=2, batch_size=8, warmup_steps=1), show_progress=False,
          after_backward=group_sparsity_regulariser(model, spec, units, strength=1.0))
    assert not torch.equal(before.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight)
