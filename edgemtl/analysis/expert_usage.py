"""Which experts each task actually routes its tokens to, per mixture-of-experts layer.

A task-conditioned MoE (M3ViT) routes every task through its own subset of experts; experts a task never
picks can be left out of that task's deployed graph. The profile reads routing decisions from the layers'
own `gates(x, task_vector)` (captured with forward pre-hooks, so any model whose MoE layers expose `gates`
and `num_experts` works) and keeps per-expert counts and routing mass, from which `experts_covering` picks
the smallest expert set that carries a given share of a task's routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgemtl.errors import EdgemtlError


@dataclass(frozen=True)
class LayerUsage:
    """One task's routing through one MoE layer, summed over every token of every profiled image."""

    layer: str
    tokens: int
    selected: list[int]  # tokens that picked each expert (combine weight > 0); sums to top_k * tokens
    mass: list[float]  # each expert's summed combine weight / tokens; sums to 1

    def selection_share(self) -> list[float]:
        return [count / self.tokens if self.tokens else 0.0 for count in self.selected]

    def experts_used(self) -> list[int]:
        return [e for e, count in enumerate(self.selected) if count > 0]


@dataclass(frozen=True)
class ExpertUsage:
    """Expert usage of every profiled task: `tasks[name][i]` is MoE layer `layers[i]` (model order)."""

    layers: list[str]
    num_experts: list[int]
    tasks: dict[str, list[LayerUsage]]
    samples: int

    def usage(self, task: str, layer: int) -> LayerUsage:
        if task not in self.tasks:
            raise EdgemtlError(f"unknown task {task!r}: profiled tasks are {', '.join(self.tasks)}")
        if not 0 <= layer < len(self.layers):
            raise EdgemtlError(f"MoE layer index {layer} is out of range: the model has {len(self.layers)}")
        return self.tasks[task][layer]

    def selection_share(self, task: str, layer: int) -> list[float]:
        """Share of tokens that picked each expert; sums to top_k, since each token picks k experts."""
        return self.usage(task, layer).selection_share()

    def experts_covering(self, task: str, layer: int, fraction: float) -> list[int]:
        """Smallest expert set (ascending indices) carrying `fraction` of the task's routing mass at `layer`.

        Greedy by mass, heaviest first, over used experts only: at 1.0 it is exactly the experts picked at
        least once, whatever the float round-off in the mass shares.
        """
        if not 0.0 < fraction <= 1.0:
            raise EdgemtlError(f"coverage fraction must be in (0, 1], got {fraction}")
        usage = self.usage(task, layer)
        used = usage.experts_used()
        if fraction == 1.0:
            return used
        chosen, covered = [], 0.0
        for e in sorted(used, key=lambda e: (-usage.mass[e], e)):
            if covered >= fraction:
                break
            chosen.append(e)
            covered += usage.mass[e]
        return sorted(chosen)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, the manifest's `moe.expert_usage` section."""
        return {
            "samples": self.samples,
            "layers": list(self.layers),
            "tasks": {
                task: [
                    {"layer": u.layer, "tokens": u.tokens, "selected": list(u.selected),
                     "selection_share": u.selection_share(), "mass": list(u.mass),
                     "experts_used": len(u.experts_used())}
                    for u in usages
                ]
                for task, usages in self.tasks.items()
            },
        }


def moe_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer that routes tokens to experts, in `model.modules()` (layer) order."""
    return [(name, m) for name, m in model.named_modules()
            if callable(getattr(m, "gates", None)) and hasattr(m, "num_experts")]


def profile_expert_usage(model: nn.Module, images: torch.Tensor, tasks: list[str],
                         batch_size: int = 32) -> ExpertUsage:
    """Run `images` (already normalised) under each task's routing and count which experts the tokens pick.

    The model runs in eval mode without gradients (its training flag is restored after), as
    `model(x, task=task)`; routing is recomputed from each MoE layer's `gates` on the layer's real input.
    """
    layers = moe_layers(model)
    if not layers:
        raise EdgemtlError(f"{type(model).__name__} has no mixture-of-experts layer (nothing routes tokens to "
                           "experts); expert usage applies only to MoE models such as m3vit")
    _check_tasks(model, tasks)
    if batch_size < 1:
        raise EdgemtlError(f"batch size must be at least 1, got {batch_size}")
    if images.ndim < 1 or len(images) == 0:
        raise EdgemtlError("expert usage needs at least one image")
    was_training = model.training
    model.eval()
    try:
        profiled = {task: _profile_task(model, layers, images, task, batch_size) for task in tasks}
    finally:
        model.train(was_training)
    return ExpertUsage(layers=[name for name, _ in layers], num_experts=[int(m.num_experts) for _, m in layers],
                       tasks=profiled, samples=len(images))


def _check_tasks(model: nn.Module, tasks: list[str]) -> None:
    if not tasks:
        raise EdgemtlError("expert usage needs at least one task")
    known = getattr(model, "task_index", None)
    unknown = [t for t in tasks if known is not None and t not in known]
    if unknown:
        raise EdgemtlError(f"unknown task {unknown[0]!r}: valid tasks are {', '.join(known)}")


class _Tally:
    """Running per-expert counts and combine-weight sums of one layer, fed by a forward pre-hook."""

    def __init__(self, num_experts: int) -> None:
        self.tokens = 0
        self.selected = torch.zeros(num_experts, dtype=torch.long)
        self.mass = torch.zeros(num_experts, dtype=torch.float64)

    def hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        _, combine = module.gates(*args[:2])
        weights = combine.detach().reshape(-1, combine.shape[-1]).cpu()
        self.tokens += weights.shape[0]
        self.selected += (weights > 0).sum(dim=0)
        self.mass += weights.double().sum(dim=0)

    def usage(self, name: str) -> LayerUsage:
        mass = (self.mass / self.tokens).tolist() if self.tokens else [0.0] * len(self.mass)
        return LayerUsage(layer=name, tokens=self.tokens, selected=self.selected.tolist(), mass=mass)


def _profile_task(model: nn.Module, layers: list[tuple[str, nn.Module]], images: torch.Tensor, task: str,
                  batch_size: int) -> list[LayerUsage]:
    tallies = [_Tally(int(m.num_experts)) for _, m in layers]
    hooks = [m.register_forward_pre_hook(t.hook) for (_, m), t in zip(layers, tallies)]
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model(images[start : start + batch_size].to(device), task=task)
    finally:
        for handle in hooks:
            handle.remove()
    return [t.usage(name) for (name, _), t in zip(layers, tallies)]
