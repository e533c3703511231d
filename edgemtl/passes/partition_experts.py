"""Task-specific expert paths for task-conditioned mixture-of-experts models (M3ViT's deployment).

In M3ViT the router reads the token together with a task embedding, so each task routes its tokens to
its own subset of each layer's experts. Serving one task therefore needs only: the shared non-MoE
layers, that task's routing, the experts it actually uses, and its head. This pass builds that model
per task (`TaskExpertPath`), dropping experts by a coverage policy measured on calibration samples:
keep the fewest experts that carry `coverage` of the task's routing mass in each layer (1.0 = exactly
the experts selected at least once). At inference a token whose top-k would have hit a dropped expert is
re-routed among the kept ones: the kept MoE layer takes the top-k of the kept experts' router logits and
softmaxes over those, which is the same computation as the full layer whenever no dropped expert would
have been chosen (so at coverage 1.0 the path equals the full model on the calibration samples).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from edgemtl.analysis.cost import ModelCost, model_cost
from edgemtl.analysis.expert_usage import ExpertUsage, profile_expert_usage
from edgemtl.data import TaskData
from edgemtl.data.teacher import teach_missing
from edgemtl.errors import EdgemtlError
from edgemtl.evaluate import evaluate, torch_predictor
from edgemtl.model.spec import ModelSpec, TaskSpec
from edgemtl.model.zoo.m3vit import MoELayer
from edgemtl.passes.base import PassInput, PassResult
from edgemtl.passes.budget import agreement_loss, relative_loss


@dataclass(frozen=True)
class PartitionConfig:
    """coverage: share of each task's routing mass (per layer) the kept experts must carry, in (0, 1].

    Below 1.0 a path drops experts a few of its tokens use, and they are re-routed: a task whose held-out loss
    (its metric's relative change, or 1 - cosine against the full model without labels) would exceed
    `max_metric_change` keeps every expert it uses instead (coverage 1.0), and its record says so; None cuts as asked
    (a coverage the user chose). 0.95 by default: measured on the MI-routed m3vit (docs/experts.md), it keeps 1-3 of 8
    experts per layer at most 0.35% off."""

    coverage: float = 0.95
    calibration_samples: int = 64
    max_metric_change: float | None = 0.01

    def check(self, spec: ModelSpec | None = None) -> None:  # noqa: ARG002 (nothing here depends on the model)
        if not 0.0 < self.coverage <= 1.0:
            raise EdgemtlError(f"expert coverage must lie in (0, 1], got {self.coverage:g} (1.0 keeps every expert a task uses)")
        if self.calibration_samples < 1:
            raise EdgemtlError(f"calibration samples must be at least 1, got {self.calibration_samples}")
        if self.max_metric_change is not None and self.max_metric_change < 0:
            raise EdgemtlError(f"the allowed metric change must be >= 0, got {self.max_metric_change:g}")


def has_experts(model: nn.Module) -> bool:
    """A task-conditioned MoE model this pass understands (M3ViT's structure)."""
    return all(hasattr(model, a) for a in ("moe_layers", "task_embed", "task_index", "blocks", "heads")) and bool(model.moe_layers())


def check_partition_request(model: nn.Module, spec: ModelSpec, tasks: list[str], config: PartitionConfig) -> None:
    """One-line errors for what cannot be partitioned, before any work is done."""
    config.check()
    unknown = [t for t in tasks if t not in spec.task_names]
    if unknown:
        raise EdgemtlError(f"unknown task {unknown[0]!r}; the model's tasks are: {', '.join(spec.task_names)}")
    if not has_experts(model):
        raise EdgemtlError(f"the {spec.arch or 'given'} model has no task-conditioned mixture-of-experts layer: "
                           "there is nothing to partition (expert paths apply to m3vit-style models)")


class TaskExpertPath(nn.Module):
    """One task's deployable model: shared layers, the task's routing, its kept experts and its head."""

    def __init__(self, model: nn.Module, task: str, kept: list[list[int]]) -> None:
        super().__init__()
        self.task, self.grid = task, model.grid
        self.patch_embed = copy.deepcopy(model.patch_embed)
        self.pos_embed = nn.Parameter(model.pos_embed.detach().clone())
        self.register_buffer("task_vector", model.task_embed[model.task_index[task]].detach().clone())
        layers = iter(kept)
        self.blocks = nn.ModuleList()
        for block in model.blocks:
            copied = copy.deepcopy(block)
            if isinstance(block.mlp, MoELayer):
                copied.mlp = _keep_experts(block.mlp, next(layers))
            self.blocks.append(copied)
        self.norm = copy.deepcopy(model.norm)
        self.head = copy.deepcopy(model.heads[task])

    def moe_layers(self) -> list[MoELayer]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoELayer)]

    def forward(self, x: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        if task not in (None, self.task):
            raise EdgemtlError(f"this expert path serves task {self.task!r} only, not {task!r}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens, self.task_vector)
        grid = self.norm(tokens).transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        return {self.task: self.head(grid)}


def _keep_experts(layer: MoELayer, kept: list[int]) -> MoELayer:
    """The same layer with only `kept` experts (and their router rows); top-k shrinks if fewer remain."""
    dim, hidden = layer.w1.shape[1], layer.w1.shape[2]
    task_dim = layer.router.in_features - dim
    small = MoELayer(dim, hidden, len(kept), min(layer.top_k, len(kept)), task_dim, layer.capacity_factor)
    index = torch.tensor(kept, dtype=torch.long)
    with torch.no_grad():
        small.router.weight.copy_(layer.router.weight[index])
        small.router.bias.copy_(layer.router.bias[index])
        for name in ("w1", "b1", "w2", "b2"):
            getattr(small, name).copy_(getattr(layer, name)[index])
    small.kept_experts = list(kept)
    return small.train(layer.training)


@dataclass
class TaskPartition:
    """What partitioning did to one task: experts kept per layer, cost and metric before and after."""

    task: str
    experts_kept: list[list[int]]
    experts_total: list[int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    metric: str = ""
    metric_before: float | None = None
    metric_after: float | None = None
    rerouted_share: float | None = None  # held-out routing choices that hit a dropped expert
    coverage: float = 1.0                 # the coverage the path was cut at
    fallback: str | None = None           # why the path keeps every expert instead of the asked coverage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"experts_kept_count": [len(k) for k in self.experts_kept]}


@dataclass
class PartitionRecord:
    coverage: float
    calibration: str
    held_out: str
    tasks: dict[str, TaskPartition] = field(default_factory=dict)
    usage: ExpertUsage | None = None   # the routing profile the paths were cut from (the flow records it under "moe")

    def to_dict(self) -> dict[str, Any]:
        return {"coverage": self.coverage, "calibration": self.calibration, "held_out": self.held_out,
                "tasks": {name: p.to_dict() for name, p in self.tasks.items()}}

    to_manifest = to_dict


def partition_experts(model: nn.Module, spec: ModelSpec, calibration: TaskData, held_out: TaskData | None,
                      tasks: list[str], config: PartitionConfig = PartitionConfig(),
                      usage: ExpertUsage | None = None, cost: ModelCost | None = None,
                      ) -> tuple[dict[str, TaskExpertPath], PartitionRecord, ExpertUsage]:
    """Per-task expert paths at the configured coverage, with their cost and held-out metric before/after.

    `usage` (a profile on the calibration images) and `cost` (`model_cost(model, spec, tasks)`) may be
    passed in when the caller has them, to avoid computing them twice."""
    check_partition_request(model, spec, tasks, config)
    model.eval()
    if usage is None:
        images = torch.from_numpy(calibration.normalise(calibration.images[: config.calibration_samples]))
        usage = profile_expert_usage(model, images, tasks)
    layers = len(model.moe_layers())
    labelled = {t.name for t in held_out.tasks} if held_out is not None else set()
    record = PartitionRecord(config.coverage, f"{calibration.name}/{calibration.split} ({min(len(calibration), config.calibration_samples)} samples)",
                             f"{held_out.name}/{held_out.split} ({len(held_out)} samples)" if held_out is not None else "none")
    full_cost = cost or model_cost(model, spec, tasks)
    held_usage = None
    if held_out is not None:
        held_usage = profile_expert_usage(model, torch.from_numpy(held_out.normalise(held_out.images)), tasks)
    paths = {}
    for task in tasks:
        entry, path = _cut(model, spec, task, usage, config.coverage, layers, full_cost, held_out, labelled, held_usage)
        guarded = config.coverage < 1.0 and config.max_metric_change is not None
        loss = _path_loss(model, path, spec.task(task), entry, held_out) if guarded else None
        if loss is not None and loss > config.max_metric_change:  # type: ignore[operator]  (guarded)
            reason = (f"at coverage {config.coverage:g} the path lost {loss:.2%} "
                      f"({entry.metric or '1 - cosine against the full model'}), more than {config.max_metric_change:.0%}")
            entry, path = _cut(model, spec, task, usage, 1.0, layers, full_cost, held_out, labelled, held_usage,
                               metric_before=entry.metric_before)
            entry.fallback = reason
        record.tasks[task] = entry
        paths[task] = path
    return paths, record, usage


def _cut(model: nn.Module, spec: ModelSpec, task: str, usage: ExpertUsage, coverage: float, layers: int,
         full_cost: ModelCost, held_out: TaskData | None, labelled: set[str], held_usage: ExpertUsage | None,
         metric_before: float | None = None) -> tuple[TaskPartition, TaskExpertPath]:
    """One task's path at `coverage`, with its cost and held-out metric before (the full model's: evaluated unless
    given) and after."""
    kept = [usage.experts_covering(task, i, coverage) for i in range(layers)]
    path = TaskExpertPath(model, task, kept).eval()
    path_cost = model_cost(path, spec, [task])
    entry = TaskPartition(task, kept, [layer.num_experts for layer in model.moe_layers()],
                          full_cost.tasks[task].params, path_cost.total_params,
                          full_cost.tasks[task].macs, path_cost.tasks[task].macs, coverage=coverage)
    if task in labelled:
        task_spec = spec.task(task)
        entry.metric = task_spec.metric
        entry.metric_before = (metric_before if metric_before is not None else
                               evaluate(torch_predictor(model), [task_spec], held_out)[task][task_spec.metric])
        entry.metric_after = evaluate(torch_predictor(path), [task_spec], held_out)[task][task_spec.metric]
    if held_usage is not None:
        entry.rerouted_share = _rerouted_share(held_usage, task, kept)
    return entry, path


def _path_loss(model: nn.Module, path: TaskExpertPath, task: TaskSpec, entry: TaskPartition,
               held_out: TaskData | None) -> float | None:
    """The path's held-out loss against the full model: its metric's relative loss (from `entry`), or 1 - cosine of
    its outputs against the full model's for a task the data does not label; None without held-out data."""
    if held_out is None:
        return None
    if entry.metric_before is not None and entry.metric_after is not None:
        return relative_loss(entry.metric_before, entry.metric_after, bool(task.higher_is_better))[1]
    unlabelled = replace(held_out, targets={k: v for k, v in held_out.targets.items() if k != task.name})
    taught = teach_missing(unlabelled, model, [task.name])
    return agreement_loss(evaluate(torch_predictor(path), [task], taught)[task.name])


def run(inputs: PassInput, config: PartitionConfig) -> PassResult[TaskExpertPath]:
    """Each task's expert path, calibrated on the train split and scored on the held-out one; skipped (said why)
    for a model without experts or a compile without data."""
    model, spec = inputs.model, inputs.spec
    if not has_experts(model):
        return PassResult.skip(inputs, f"the {spec.arch or 'given'} model has no task-conditioned mixture-of-experts "
                                       "layer: nothing to partition")
    check_partition_request(model, spec, inputs.tasks, config)
    if inputs.source is None:
        return PassResult.skip(inputs, "expert paths need calibration images: pass --data (see docs/own-model.md)")
    calibration = inputs.source.load("train", n=config.calibration_samples)
    paths, record, usage = partition_experts(model, spec, calibration, inputs.held_out, inputs.tasks, config,
                                             cost=inputs.cost)
    record.usage = usage
    return PassResult(model, spec, record, paths)


def _rerouted_share(usage: ExpertUsage, task: str, kept: list[list[int]]) -> float:
    """Share of the task's top-k routing choices (all layers) that went to an expert the path dropped."""
    total = dropped = 0
    for layer, keep in zip(usage.tasks[task], kept):
        total += sum(layer.selected)
        dropped += sum(count for e, count in enumerate(layer.selected) if e not in keep)
    return dropped / total if total else 0.0
