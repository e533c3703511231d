"""PAGCP: performance-aware global channel pruning for multi-task CNNs (Ye et al., T-PAMI 2023).

Written from the paper's description. One round:

1. Every prunable channel group (torch-pruning's DependencyGraph couples the channels of residual adds,
   BatchNorms, concatenations and head inputs; attention heads and stacked experts' hidden channels are units
   of `prune_units`) is scored by the MACs a trial removal ratio saves, and the groups are visited largest
   saving first.
2. Sequential greedy: for each group, on the model pruned so far, the largest removal ratio of a grid at
   which no task's held-out loss exceeds its allowance is kept (found by bisection; the paper sweeps upwards
   to the first refusal, the same ratio where the loss grows with the ratio). The allowance at the i-th group
   is the round-start loss times prod_{j<=i}(1 + t_j): the thresholds compound along the order, so budget a
   group leaves unused carries over to later groups.
   With the cumulative guard (the default, the paper's per-task constraint) they compound to (1 + budget)
   times the ORIGINAL model's loss, in every round: losses cannot compound from round to round.
   A task the data does not label is judged by its distance to the unpruned model, from a floor
   (`DISTILLED_LOSS_FLOOR`) since that distance starts at 0.
   Channels are removed lowest saliency first; the saliency is the L2 norm of each channel's weights
   summed over every layer of its coupled group (torch-pruning's GroupMagnitudeImportance), the paper's
   first-order approximation of the joint effect across layers.
3. Thresholds grow along the visiting order, t_i = t0 * lambda**i, with lambda solved so that
   prod(1 + t_i) = 1 + the round's headroom (`allowances`).
4. Filter: only the `keep_fraction` of pruned groups with the smallest loss increase per MAC removed are
   kept, and of those only as many as the round's share of the MACs needs (the MACs fall geometrically
   over `planned_rounds`, so that one round cannot spend the whole reduction before any fine-tuning; an
   addition to the paper). Those removals are applied to the round's starting model, which is then
   fine-tuned on all tasks (task losses plus distillation from the unpruned model, also an addition).

Rounds repeat until the MACs fall to `flops_target` times the original. MACs inside the search come from
torch-pruning's fast hook counter; the before/after figures reported come from edgemtl's own analysis.
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch_pruning as tp
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgemtl.analysis.cost import model_cost
from edgemtl.data import TaskData
from edgemtl.data.teacher import teach_missing
from edgemtl.errors import EdgemtlError
from edgemtl.evaluate import evaluate, torch_predictor
from edgemtl.manifest import prov
from edgemtl.model.checkpoint import save
from edgemtl.model.contract import example_input
from edgemtl.model.losses import supervised_loss
from edgemtl.model.resize import layer_widths
from edgemtl.model.spec import ModelSpec
from edgemtl.passes import prune_units
from edgemtl.passes.base import PassInput, PassResult
from edgemtl.passes.group_sparsity import group_sparsity_regulariser
from edgemtl.training import TrainConfig, train


# A task without labels is judged by its NMSE to the unpruned model (losses.distillation_loss); its allowance starts
# from at least 0.01, an SQNR of 20 dB, so the default budget of +100% lets the greedy go to ~17 dB before fine-tuning.
DISTILLED_LOSS_FLOOR = 0.01
PRUNED_CHECKPOINT = "model/pruned.pt"   # where `run` writes the pruned model in a bundle
GUARDS = ("cumulative", "per-round")


@dataclass(frozen=True)
class PAGCPConfig:
    """How hard to prune and how carefully. Defaults suit the zoo's mtl-cnn on `scenes`."""

    flops_target: float = 0.35            # keep this fraction of the original MACs (0.35 = remove 65%)
    max_drop: dict[str, float] = field(default_factory=dict)  # per-task loss-increase budget (see `guard`)
    default_max_drop: float = 1.0         # budget for tasks not named in max_drop (relative oracle loss increase before
                                          # fine-tuning, 1.0 = x2; with the width floor and the sparsity phase, the
                                          # setting benchmarks/pagcp.py measured)
    guard: str = "cumulative"             # "cumulative": no candidate may take a task's oracle loss above (1 + budget)
                                          # times the ORIGINAL model's, in any round (the paper's per-task constraint);
                                          # "per-round": (1 + budget) times the round's starting loss, which lets
                                          # losses compound round after round (the pass before 2026-12-05)
    initial_threshold: float = 0.0        # t0 of the schedule; 0 = budget / (2 * groups)
    ratio_step: float = 0.05
    max_ratio: float = 0.95
    trial_ratio: float = 0.3              # removal ratio used to order groups by MACs saved
    keep_fraction: float = 0.75           # filter: share of pruned groups kept per round
    planned_rounds: int = 6               # the MACs fall geometrically, flops_target**(r / planned_rounds) after
                                          # round r, so that no round takes more than its share before fine-tuning
                                          # (0 = no per-round quota: a round keeps whatever the filter keeps)
    oracle_samples: int = 32              # held-out samples the loss oracle uses (benchmarks/pagcp.py: trade-off)
    bn_recalibration_samples: int = 64    # training images that re-estimate BatchNorm statistics before every oracle
                                          # call (adaptive BN); 0 = the paper's plain oracle
    sparsity_steps: int = 400             # group-sparsity training before the first round (passes/group_sparsity.py;
                                          # 0 = off, the ablation in docs/pruning.md)
    sparsity_strength: float = 1e-3       # the group-norm regulariser's coefficient in that phase
    finetune_steps: int = 60              # per round, all tasks' losses
    final_finetune_steps: int = 300
    finetune_lr: float = 1e-3
    distill_weight: float = 1.0           # fine-tuning also distils every task's output from the unpruned model
                                          # (0 = task losses only): the pruned model is judged against it
    batch_size: int = 32
    max_rounds: int = 12
    min_channels: int = 2                 # never prune a group below this many channels
    min_share: float = 0.5                # nor below this share of its original width (the dense tasks' floor;
                                          # 0 = none, the ablation in docs/pruning.md)
    channel_multiple: int = 8             # kept widths are multiples of this (or the original width), because
                                          # odd widths fall off the vectorised kernels (ORT's NCHWc blocks are 8/16)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.flops_target < 1:
            raise EdgemtlError(f"the FLOPs target must lie strictly between 0 and 1, got {self.flops_target}")
        if any(v <= 0 for v in self.max_drop.values()) or self.default_max_drop <= 0:
            raise EdgemtlError("--max-drop budgets must be positive (relative loss increase, e.g. 0.1)")
        if not 0 <= self.min_share < 1:
            raise EdgemtlError(f"min_share must lie in [0, 1), got {self.min_share}")
        if self.sparsity_steps < 0 or self.sparsity_strength < 0:
            raise EdgemtlError("sparsity_steps and sparsity_strength must be >= 0")
        if self.planned_rounds < 0:
            raise EdgemtlError(f"planned_rounds must be >= 0, got {self.planned_rounds}")
        if not 0 < self.keep_fraction <= 1:
            raise EdgemtlError(f"keep_fraction must lie in (0, 1], got {self.keep_fraction}")
        if self.distill_weight < 0:
            raise EdgemtlError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.guard not in GUARDS:
            raise EdgemtlError(f"unknown guard {self.guard!r}; choose {' or '.join(GUARDS)}")

    def finetuning(self, steps: int, seed: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=self.batch_size, lr=self.finetune_lr, warmup_steps=5, seed=seed,
                           distill_weight=self.distill_weight)

    def check(self, spec: ModelSpec) -> None:
        unknown = sorted(set(self.max_drop) - set(spec.task_names))
        if unknown:
            raise EdgemtlError(
                f"--max-drop names unknown task(s) {', '.join(unknown)}; this model has {', '.join(spec.task_names)}")

    check_tasks = check  # the name `edgemtl prune` calls it by


@dataclass
class LayerDecision:
    round: int
    group: str                 # root layer of the coupled channel group
    channels_before: int
    channels_removed: int
    ratio: float
    loss_ratios: dict[str, float]   # each task's loss after / before this group, on the oracle batch
    macs_removed: float
    removed: list[int] = field(default_factory=list)  # channel indices in the round's starting model
    kept_by_filter: bool = False


@dataclass
class PruneRecord:
    """What the pass did and what it cost, per task: written to the manifest and the checkpoint meta."""

    flops_target: float
    target_reached: bool
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    metrics_before: dict[str, dict[str, float]]
    metrics_after: dict[str, dict[str, float]]
    kept_ratios: dict[str, float]          # conv/linear layer (or custom unit) -> channels (heads) kept / original
    decisions: list[LayerDecision]
    rounds: int
    seconds: float
    oracle_samples: int
    # task -> channel groups whose pruning that task's allowance stopped in the last round (why a target was missed)
    stopped_by: dict[str, int] = field(default_factory=dict)
    data: str = ""                         # which splits fine-tuned and which judged (set by `run`)
    artifacts: dict[str, str] = field(default_factory=dict)  # bundle-relative files `run` wrote

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_manifest(self) -> dict[str, Any]:
        """The record without each removal's channel indices (the checkpoint's meta keeps them)."""
        summary = {k: v for k, v in self.to_dict().items() if k != "decisions"}
        return {**summary, "macs_provenance": prov("static", source="edgemtl analysis", detail="counted, batch 1"),
                "layers": [{k: v for k, v in asdict(d).items() if k != "removed"} for d in self.decisions]}


def threshold_schedule(budget: float, count: int, initial: float = 0.0) -> list[float]:
    """Per-layer thresholds t_i = t0 * lambda**i whose (1 + t_i) multiply to exactly 1 + budget."""
    if count <= 1:
        return [budget] * count
    t0 = initial or budget / (2 * count)
    target = math.log1p(budget)

    def total(lam: float) -> float:
        return sum(math.log1p(t0 * lam**i) for i in range(count))

    if total(1.0) >= target:  # t0 is already generous: a flat schedule that still compounds to the budget
        return [math.expm1(target / count)] * count
    low, high = 1.0, 2.0
    while total(high) < target:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if total(mid) < target else (low, mid)
    return [t0 * high**i for i in range(count)]


def allowances(start: dict[str, float], reference: dict[str, float], budgets: dict[str, float], count: int,
               guard: str, initial_threshold: float = 0.0) -> dict[str, list[float]]:
    """Each task's highest acceptable oracle loss after each of `count` groups of a round.

    The allowance grows along the visiting order by the compounding thresholds (`threshold_schedule`). "per-round":
    from the round's starting loss to (1 + budget) times it. "cumulative": from the round's starting loss to
    (1 + budget) times the ORIGINAL model's loss (`reference`); a task already at that limit allows no increase,
    so a round can only take what fine-tuning has won back."""
    result = {}
    for task, budget in budgets.items():
        limit = start[task] * (1 + budget) if guard == "per-round" else reference[task] * (1 + budget)
        headroom = limit / max(start[task], 1e-12) - 1
        if headroom <= 0:
            result[task] = [start[task]] * count
            continue
        steps = threshold_schedule(headroom, count, initial_threshold)
        result[task] = [start[task] * factor for factor in itertools.accumulate((1 + x for x in steps), operator.mul)]
    return result


class LossOracle:
    """Every task's loss on a fixed held-out batch: the performance oracle of the greedy search.

    With `calibration` images, each model's BatchNorm statistics are first re-estimated on them (adaptive
    BN, as in EagleEye, Li et al., ECCV 2020): removing channels shifts the inputs of every later layer, and
    judging a candidate with the stale statistics overstates its loss, which fine-tuning would largely undo.
    """

    def __init__(self, spec: ModelSpec, data: TaskData, samples: int, calibration: TaskData | None = None,
                 calibration_samples: int = 0) -> None:
        self.spec = spec
        count = min(samples, len(data))
        self.images = torch.from_numpy(data.normalise(data.images[:count]))
        self.targets = {name: torch.from_numpy(np.ascontiguousarray(t[:count])) for name, t in data.targets.items()}
        self.distilled = data.distilled
        self.calibration = None
        if calibration is not None and calibration_samples > 0:
            self.calibration = torch.from_numpy(calibration.normalise(calibration.images[:calibration_samples]))

    def allowance_base(self, losses: dict[str, float]) -> dict[str, float]:
        """What each task's budget multiplies: its loss, but at least DISTILLED_LOSS_FLOOR for a task judged by its
        distance to the unpruned model, which starts at 0 (a budget relative to 0 would refuse every channel)."""
        return {t: max(v, DISTILLED_LOSS_FLOOR) if t in self.distilled else v for t, v in losses.items()}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        if self.calibration is not None:
            recalibrate_batchnorm(model, self.calibration)
        model.eval()
        with torch.no_grad():
            outputs = model(self.images)
        return {t.name: float(supervised_loss(t, outputs[t.name], self.targets[t.name], t.name in self.distilled))
                for t in self.spec.tasks}


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> None:
    """Replace every BatchNorm's running statistics by their plain average over `images` (no gradients)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for chunk in images.split(batch_size):
            model(chunk)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def _macs(model: nn.Module, example: torch.Tensor) -> float:
    """Multiply-accumulates of one forward, counted at the operator level (convolutions, matmuls, attention), so
    attention and stacked experts count too (torch-pruning's layer hooks miss both)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:   # not under no_grad: its module tracker needs autograd
        model(example)
    model.train(was_training)
    return counter.get_total_flops() / 2


def _pruner(module: nn.Module) -> Callable:
    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


class Surgeon:
    """Removes channels with torch-pruning on copies of a model, keeping coupled channels consistent; attention heads
    and stacked experts' hidden channels, which torch-pruning has no pruner for, through `prune_units`."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.example = example_input(spec, batch=1)
        self.importance = tp.importance.GroupMagnitudeImportance(p=2)

    def graph(self, model: nn.Module) -> tp.DependencyGraph:
        model.eval()
        with torch.enable_grad(), warnings.catch_warnings():  # torch-pruning traces through autograd
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")  # left alone: see prunable_groups
            return tp.DependencyGraph().build_dependency(model, example_inputs=self.example)

    def prunable_groups(self, model: nn.Module) -> list[str]:
        """The units whose removal of one channel (head) leaves the model running with every task's output shape
        intact: torch-pruning's groups, by root layer, except those that would cut a bare parameter (torch-pruning
        guesses its axis) or the inside of a custom unit; then the custom units (`prune_units`)."""
        graph = self.graph(model)
        names = {module: name for name, module in model.named_modules()}
        customs = prune_units.custom_units(model)
        inside = tuple(prune_units.module_path(unit) + "." for unit in customs)
        roots = []
        for group in graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]):
            root = group[0].dep.target.module
            if root not in names or names[root].startswith(inside) or _out_channels(root) < 2:
                continue
            trial = self.remove(model, names[root], 1, idxs=[0])  # any one channel tells; no ranking needed
            if trial is not None and _bare_shapes(trial) == _bare_shapes(model) and self._shapes_intact(trial):
                roots.append(names[root])
        for unit in customs:
            if prune_units.width(model, unit) >= 2 and self._shapes_intact(self.remove(model, unit, 1, idxs=[0])):
                roots.append(unit)
        return roots

    def _shapes_intact(self, model: nn.Module) -> bool:
        try:
            with torch.no_grad():
                outputs = model(self.example)
        except (RuntimeError, IndexError, ValueError):   # a unit whose module cannot run narrower
            return False
        return all(list(outputs[t.name].shape[1:]) == t.output_shape for t in self.spec.tasks)

    def width(self, model: nn.Module, unit: str) -> int:
        """Channels (heads) the unit has now."""
        return prune_units.width(model, unit) if prune_units.is_custom(unit) else _out_channels(model.get_submodule(unit))

    def saliency_order(self, model: nn.Module, root_name: str) -> list[int]:
        """The group's channels from least to most salient (group L2 norm over all coupled layers)."""
        if prune_units.is_custom(root_name):
            return torch.argsort(prune_units.saliency(model, root_name)).tolist()
        graph = self.graph(model)
        root = model.get_submodule(root_name)
        group = graph.get_pruning_group(root, _pruner(root), idxs=list(range(_out_channels(root))))
        return torch.argsort(self.importance(group)).tolist()

    def remove(self, model: nn.Module, root_name: str, count: int, idxs: list[int] | None = None) -> nn.Module | None:
        """A copy of `model` without the channels `idxs` (default: the `count` least salient) of a group."""
        idxs = sorted(idxs if idxs is not None else self.saliency_order(model, root_name)[:count])
        if prune_units.is_custom(root_name):
            return prune_units.remove(model, root_name, idxs)
        trial = copy.deepcopy(model)
        graph = self.graph(trial)
        root = trial.get_submodule(root_name)
        group = graph.get_pruning_group(root, _pruner(root), idxs=idxs)
        if not graph.check_pruning_group(group):
            return None
        group.prune()
        return trial


def _bare_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters that belong to no conv, linear or norm layer (position embeddings, stacked experts)."""
    layers = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    return {f"{path}.{name}": tuple(parameter.shape) for path, module in model.named_modules()
            if not isinstance(module, layers) for name, parameter in module.named_parameters(recurse=False)}


def prune_pagcp(model: nn.Module, spec: ModelSpec, train_data: TaskData, val_data: TaskData,
                config: PAGCPConfig = PAGCPConfig(), show_progress: bool = True) -> tuple[nn.Module, ModelSpec, PruneRecord]:
    """Prune a copy of `model` to `config.flops_target` of its MACs; the input model is left untouched."""
    config.check(spec)
    start_time = time.perf_counter()
    original = copy.deepcopy(model).eval()
    # tasks the data does not label are guarded by their distance to the unpruned model's outputs
    train_data, val_data = (teach_missing(d, original, spec.task_names) for d in (train_data, val_data))
    surgeon = Surgeon(spec)
    oracle = LossOracle(spec, val_data, config.oracle_samples, train_data, config.bn_recalibration_samples)
    macs_original = _macs(original, surgeon.example)
    target_macs = config.flops_target * macs_original
    cost_before = model_cost(original, spec)
    metrics_before = evaluate(torch_predictor(original), spec.tasks, val_data)
    budgets = {t: config.max_drop.get(t, config.default_max_drop) for t in spec.task_names}
    teacher = copy.deepcopy(original) if config.distill_weight else None

    current, decisions, rounds = original, [], 0
    if config.sparsity_steps:   # the original stays the reference the guard and the metrics compare with
        current = copy.deepcopy(original)
        regulariser = group_sparsity_regulariser(current, spec, surgeon.prunable_groups(current), config.sparsity_strength)
        train(current, spec, train_data, config.finetuning(config.sparsity_steps, config.seed), show_progress=False,
              teacher=teacher, after_backward=regulariser)
    reference = oracle(original)
    original_widths = layer_widths(original) | prune_units.unit_widths(original)
    stopped_by: dict[str, int] = {}
    columns = (TextColumn("PAGCP round {task.fields[round]}"), BarColumn(), TextColumn("{task.completed}/{task.total} groups"),
               TextColumn("MACs {task.fields[macs]:.1%}"), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        bar = progress.add_task("prune", total=1, round=0, macs=1.0)
        while _macs(current, surgeon.example) > target_macs and rounds < config.max_rounds:
            rounds += 1
            stopped_by = {}
            round_decisions = _greedy_round(current, surgeon, oracle, budgets, config, target_macs, rounds,
                                            lambda done, total, macs: progress.update(
                                                bar, completed=done, total=total, round=rounds, macs=macs / macs_original),
                                            reference, stopped_by, original_widths)
            if not round_decisions:
                break  # nothing can go without breaking a task's budget: more fine-tuning will not change that
            quota = _macs(current, surgeon.example) - round_target(macs_original, rounds, config)
            current = _apply(current, surgeon, _filter(round_decisions, config.keep_fraction, quota))
            decisions += round_decisions
            train(current, spec, train_data, config.finetuning(config.finetune_steps, config.seed + rounds),
                  show_progress=False, teacher=teacher)
            progress.update(bar, macs=_macs(current, surgeon.example) / macs_original)
    if config.final_finetune_steps:
        train(current, spec, train_data, config.finetuning(config.final_finetune_steps, config.seed),
              show_progress=show_progress, teacher=teacher)
    current.eval()
    cost_after = model_cost(current, spec)
    widths_before, widths_after = original_widths, layer_widths(current) | prune_units.unit_widths(current)
    record = PruneRecord(
        flops_target=config.flops_target,
        target_reached=_macs(current, surgeon.example) <= target_macs * 1.0001,
        macs_before=cost_before.all_tasks.macs, macs_after=cost_after.all_tasks.macs,
        params_before=cost_before.total_params, params_after=cost_after.total_params,
        metrics_before=metrics_before, metrics_after=evaluate(torch_predictor(current), spec.tasks, val_data),
        kept_ratios={name: widths_after[name] / widths_before[name] for name in widths_before},
        decisions=decisions, rounds=rounds, seconds=time.perf_counter() - start_time,
        oracle_samples=len(oracle.images), stopped_by=stopped_by,
    )
    # a pruned model is not slimmable any more: its leading channels are no longer the ones slimmable training shared
    pruned_spec = spec.model_copy(update={"config": {**spec.config, "widths": layer_widths(current)}, "widths": None})
    return current, pruned_spec, record


def run(inputs: PassInput, config: PAGCPConfig) -> PassResult[nn.Module]:
    """The pass on a flow's model: fine-tuned on the train split, judged on val; the pruned checkpoint joins the
    bundle (later steps compile the pruned model)."""
    source = inputs.need_source("pruning")
    name = source.reference
    model, spec, record = prune_pagcp(inputs.model, inputs.spec, source.load("train"), source.load("val"), config,
                                      show_progress=False)
    record.data = f"{name}/train (fine-tuning), {name}/val (oracle, metrics)"
    if inputs.bundle is not None:
        record.artifacts = {"checkpoint": PRUNED_CHECKPOINT}
        save(model, spec, inputs.bundle / PRUNED_CHECKPOINT, meta={"pagcp": record.to_dict()})
    return PassResult(model, spec, record)


def _greedy_round(start: nn.Module, surgeon: Surgeon, oracle: LossOracle, budgets: dict[str, float],
                  config: PAGCPConfig, target_macs: float, round_no: int,
                  report: Callable[[int, int, float], None], reference: dict[str, float] | None = None,
                  stopped_by: dict[str, int] | None = None,
                  original_widths: dict[str, int] | None = None) -> list[LayerDecision]:
    """One sequential greedy pass over the groups, largest MAC saving first; returns what it removed. `reference`:
    the original model's oracle losses (the cumulative guard's base; default: this round's start). `stopped_by`, if
    given, counts per task the groups whose removal that task's allowance stopped."""
    macs_now = _macs(start, surgeon.example)
    savings = {}
    for root in surgeon.prunable_groups(start):
        width = surgeon.width(start, root)
        trial = surgeon.remove(start, root, max(1, int(config.trial_ratio * width)))
        if trial is not None:
            savings[root] = macs_now - _macs(trial, surgeon.example)
    order = sorted(savings, key=lambda r: -savings[r])
    steps = [round(config.ratio_step * i, 6) for i in range(1, int(config.max_ratio / config.ratio_step + 1e-9) + 1)]
    model, decisions = start, []
    previous = round_start = oracle(start)
    start_base = oracle.allowance_base(round_start)
    allowance = allowances(start_base, oracle.allowance_base(reference or round_start), budgets, len(order),
                           config.guard, config.initial_threshold)
    for index, root in enumerate(order):
        width = surgeon.width(model, root)
        ranking = surgeon.saliency_order(model, root)
        # bisection over the removal counts of the ratio grid: the largest count no task's allowance refuses (the
        # paper's linear sweep from the smallest finds the same count when the loss grows with the count removed)
        floor = math.ceil(config.min_share * (original_widths or {}).get(root, width))
        counts = sorted({count for count in (removable(width, ratio, config) for ratio in steps)
                         if 0 < count <= width - floor})
        accepted, removed, refused_by = None, 0, []
        low, high = 0, len(counts)   # counts[:low] accepted (largest tried so far), counts[high:] refused
        while low < high:
            middle = (low + high) // 2
            count = counts[middle]
            trial = surgeon.remove(model, root, count, idxs=ranking[:count])
            if trial is None:
                high = middle
                continue
            losses = oracle(trial)
            broken = [t for t in losses if losses[t] > allowance[t][index]]
            if broken:
                high, refused_by = middle, broken
                continue
            accepted, removed = (trial, losses, {t: losses[t] / max(previous[t], 1e-12) for t in losses}), count
            low = middle + 1
            if _macs(trial, surgeon.example) <= target_macs:
                break   # enough for the whole target: cut no more
        if refused_by and stopped_by is not None:
            for task in refused_by:
                stopped_by[task] = stopped_by.get(task, 0) + 1
        if accepted is not None:
            trial, losses, loss_ratios = accepted
            macs_after = _macs(trial, surgeon.example)
            decisions.append(LayerDecision(round_no, root, width, removed, removed / width, loss_ratios,
                                           macs_now - macs_after, sorted(ranking[:removed])))
            model, previous, macs_now = trial, losses, macs_after
        report(index + 1, len(order), macs_now)
        if macs_now <= target_macs:
            break
    return decisions


def removable(width: int, ratio: float, config: PAGCPConfig) -> int:
    """Channels to remove at `ratio`: rounded so that the kept width is a multiple of `channel_multiple`."""
    multiple = config.channel_multiple if width >= config.channel_multiple else 1  # so never below the multiple
    keep = max(width - int(ratio * width), config.min_channels)
    keep = math.ceil(keep / multiple) * multiple
    return max(0, width - keep)


def round_target(macs_original: float, round_no: int, config: PAGCPConfig) -> float:
    """The MACs the model may keep after `round_no` rounds: a geometric path to the target."""
    if not config.planned_rounds:
        return config.flops_target * macs_original
    return macs_original * config.flops_target ** min(1.0, round_no / config.planned_rounds)


def _filter(decisions: list[LayerDecision], keep_fraction: float, quota: float = math.inf) -> list[LayerDecision]:
    """Keep the removals with the smallest worst-task loss increase per MAC removed: at most `keep_fraction`
    of them, and no more than it takes to remove `quota` MACs (always at least one)."""
    def cost(d: LayerDecision) -> float:
        return max(max(d.loss_ratios.values()) - 1, 0.0) / max(d.macs_removed, 1.0)

    limit = max(1, math.ceil(keep_fraction * len(decisions)))
    chosen, removed = set(), 0.0
    for decision in sorted(decisions, key=cost)[:limit]:
        if chosen and removed >= quota:
            break
        chosen.add(id(decision))
        removed += decision.macs_removed
    for decision in decisions:
        decision.kept_by_filter = id(decision) in chosen
    return [d for d in decisions if d.kept_by_filter]


def _apply(start: nn.Module, surgeon: Surgeon, decisions: list[LayerDecision]) -> nn.Module:
    """Replay the kept removals, in greedy order, on the round's starting model."""
    model = start
    for decision in decisions:
        pruned = surgeon.remove(model, decision.group, len(decision.removed), idxs=decision.removed)
        if pruned is None:
            raise RuntimeError(f"torch-pruning refused to replay the removal in {decision.group}")
        model = pruned
    return model
