"""Group-sparsity training before channel pruning (DepGraph, Fang et al., CVPR 2023, section 3.3).

Pruning removes whole coupled channel groups; if the weights of the channels that will go still carry signal, the
pruned model starts far from the trained one. A short training phase with a group-norm regulariser first pushes the
least important groups' weights (every layer of the coupled group: the conv's output channels, its BatchNorm, the
next layers' input channels) towards zero while the task losses keep the important ones, so that the cut later
removes channels that carry little. torch-pruning's `GroupNormPruner.regularize` does the gradient edit (its scale
grows up to 2**alpha for the least important channels of a group); this module only picks which groups it acts on:
those PAGCP may prune, never a head's output layer. Attention heads and experts' hidden channels
(`prune_units`), which torch-pruning knows no groups for, are left to the task losses.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from edgemtl.model.contract import example_input
from edgemtl.model.spec import ModelSpec
from edgemtl.passes import prune_units


def group_sparsity_regulariser(model: nn.Module, spec: ModelSpec, prunable: list[str],
                               strength: float) -> Callable[[nn.Module], None]:
    """A hook for `training.train(after_backward=...)` that adds the group-norm regulariser's gradient to the channel
    groups rooted at the layers named in `prunable` (their coupled layers included)."""
    roots = {model.get_submodule(name) for name in prunable if not prune_units.is_custom(name)}
    ignored = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in roots]
    model.eval()
    with torch.enable_grad(), warnings.catch_warnings():  # torch-pruning traces through autograd
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")  # bare parameters: never roots
        pruner = tp.pruner.GroupNormPruner(model, example_input(spec, batch=1),
                                           tp.importance.GroupMagnitudeImportance(p=2), reg=strength,
                                           ignored_layers=ignored)

    def regularise(trained: nn.Module) -> None:
        pruner.regularize(trained)

    return regularise
