"""Prunable units torch-pruning has no pruner for: attention heads and the hidden channels of stacked MoE experts.

torch-pruning couples the channels of ordinary layers (convs, linears, norms) through its dependency graph; it does
not know that the rows of a fused qkv projection come in heads of `head_dim`, nor that the bare `(experts, dim,
hidden)` parameters of a mixture-of-experts layer share a hidden axis. Both are recognised by their layout:

- heads: a module with a `qkv` linear of 3 * inner outputs, a `proj` linear of inner inputs, and `head_dim` (the
  zoo's m3vit Attention, and timm's layout). Removing head h drops its q, k and v rows and proj's matching input
  columns; the module must derive its head count from the qkv width (the zoo's does) — a trial forward checks it.
- expert hidden channels: a module with parameters `w1 (E, D, H)`, `b1 (E, 1, H)`, `w2 (E, H, D)` (the zoo's MoE
  layer). A hidden channel goes from every expert at once, so the stacked tensors keep one shape; its saliency is
  the L2 norm of its weights summed over the experts.

Each unit is named `<module path>#heads` or `<module path>#hidden`, beside torch-pruning's root-layer names.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

HEADS, HIDDEN = "#heads", "#hidden"


def custom_units(model: nn.Module) -> list[str]:
    """Every attention-head and expert-hidden unit of `model`, by name."""
    units = []
    for name, module in model.named_modules():
        if _is_attention(module):
            units.append(name + HEADS)
        elif _is_expert_stack(module):
            units.append(name + HIDDEN)
    return units


def unit_widths(model: nn.Module) -> dict[str, int]:
    """Every custom unit -> its heads / hidden channels now."""
    return {unit: width(model, unit) for unit in custom_units(model)}


def is_custom(unit: str) -> bool:
    return unit.endswith((HEADS, HIDDEN))


def width(model: nn.Module, unit: str) -> int:
    """Heads, or hidden channels, the unit has now."""
    module = model.get_submodule(module_path(unit))
    return module.qkv.out_features // (3 * module.head_dim) if unit.endswith(HEADS) else module.w1.shape[2]


def saliency(model: nn.Module, unit: str) -> torch.Tensor:
    """One L2 norm per head / hidden channel over every weight that goes with it."""
    module = model.get_submodule(module_path(unit))
    with torch.no_grad():
        if unit.endswith(HEADS):
            heads, size = width(model, unit), module.head_dim
            rows = module.qkv.weight.view(3, heads, size, -1).permute(1, 0, 2, 3).reshape(heads, -1)
            columns = module.proj.weight.view(module.proj.out_features, heads, size).permute(1, 0, 2).reshape(heads, -1)
            return (rows.pow(2).sum(1) + columns.pow(2).sum(1)).sqrt()
        w1, w2 = module.w1, module.w2
        return (w1.pow(2).sum(dim=(0, 1)) + w2.pow(2).sum(dim=(0, 2))).sqrt()


def taylor(model: nn.Module, unit: str) -> torch.Tensor:
    """First-order Taylor importance per head / hidden channel, sum |w * dL/dw| over its weights (after a backward
    pass; weights without a gradient count 0): what a Taylor-ranked baseline compares these units by."""
    module = model.get_submodule(module_path(unit))

    def score(parameter: torch.Tensor) -> torch.Tensor:
        grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        return (parameter.detach() * grad).abs()

    if unit.endswith(HEADS):
        heads, size = width(model, unit), module.head_dim
        rows = score(module.qkv.weight).view(3, heads, size, -1).sum(dim=(0, 2, 3))
        if module.qkv.bias is not None:   # a head's q / k / v biases leave with it (`remove`)
            rows = rows + score(module.qkv.bias).view(3, heads, size).sum(dim=(0, 2))
        columns = score(module.proj.weight).view(module.proj.out_features, heads, size).sum(dim=(0, 2))
        return rows + columns
    return score(module.w1).sum(dim=(0, 1)) + score(module.w2).sum(dim=(0, 2)) + score(module.b1).sum(dim=(0, 1))


def remove(model: nn.Module, unit: str, idxs: list[int]) -> nn.Module:
    """A copy of `model` without the heads / hidden channels `idxs` of `unit`."""
    pruned = copy.deepcopy(model)
    module = pruned.get_submodule(module_path(unit))
    keep = sorted(set(range(width(pruned, unit))) - set(idxs))
    with torch.no_grad():
        if unit.endswith(HEADS):
            size = module.head_dim
            inner = module.qkv.out_features // 3
            per_head = [torch.arange(h * size, (h + 1) * size) for h in keep]
            columns = torch.cat(per_head)
            rows = torch.cat([part * inner + columns for part in range(3)])
            module.qkv = _linear(module.qkv, rows=rows)
            module.proj = _linear(module.proj, columns=columns)
        else:
            index = torch.tensor(keep)
            module.w1 = nn.Parameter(module.w1.index_select(2, index).clone())
            module.b1 = nn.Parameter(module.b1.index_select(2, index).clone())
            module.w2 = nn.Parameter(module.w2.index_select(1, index).clone())
    return pruned


def _linear(layer: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> nn.Linear:
    weight = layer.weight
    weight = weight.index_select(0, rows) if rows is not None else weight
    weight = weight.index_select(1, columns) if columns is not None else weight
    fresh = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    fresh.weight.copy_(weight)
    if layer.bias is not None:
        fresh.bias.copy_(layer.bias if rows is None else layer.bias.index_select(0, rows))
    return fresh


def module_path(unit: str) -> str:
    """The module a custom unit belongs to."""
    return unit.rsplit("#", 1)[0]


def _is_attention(module: nn.Module) -> bool:
    qkv, proj, size = getattr(module, "qkv", None), getattr(module, "proj", None), getattr(module, "head_dim", None)
    return (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(size, int) and size > 0
            and qkv.out_features == 3 * proj.in_features and proj.in_features % size == 0)


def _is_expert_stack(module: nn.Module) -> bool:
    w1, b1, w2 = (getattr(module, name, None) for name in ("w1", "b1", "w2"))
    return (all(isinstance(p, nn.Parameter) for p in (w1, b1, w2)) and w1.dim() == 3 and w2.dim() == 3
            and b1.shape == (w1.shape[0], 1, w1.shape[2]) and w2.shape[:2] == (w1.shape[0], w1.shape[2])
            and w2.shape[2] == w1.shape[1])
