"""Slimmable multi-task training (Aich et al., ICCV 2023, "Efficient Controllable Multi-Task Architectures"; the
sandwich rule and in-place distillation of Yu & Huang's slimmable / universally slimmable networks).

One model, every width configuration of its spec's width space (docs/widths.md). Each step trains, on one batch:
the widest configuration, the narrowest, and `random_configs` drawn uniformly from the space (the sandwich rule);
their gradients accumulate and one optimiser step follows. The configurations run on the full model through
`edgemtl.model.width_masks.WidthMasks` (trailing channels silenced, exactly what slicing computes), never rebuilt.

Configuration-invariant knowledge distillation: the widest configuration's ENCODER FEATURES (each encoder stage's
output: the last module its `modules` name, detached) teach every narrower configuration's encoder features, by the
mean squared error over the leading channels the two share (`channels_at(stage channels, multiplier)`), divided by
the teacher's variance (`edgemtl.model.losses.distillation_loss`), averaged over the stages, times `distill_weight`.
Where a stage's output does not carry its declared channels (a space of your own whose last module is not the
stage's output), the task outputs are distilled instead (the same loss per task, weighted by the spec). It is
exactly zero at the widest configuration. The task losses use the labels at every configuration.

BatchNorm statistics per width: "recalibrate" (post-hoc, `recalibrate_batchnorm`) or "switchable" (separate running
statistics per BatchNorm width, kept in the masks); docs/widths.md records which measured better.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from edgemtl.data import TaskData
from edgemtl.errors import EdgemtlError
from edgemtl.model.losses import distillation_loss, supervised_loss
from edgemtl.model.spec import ModelSpec
from edgemtl.model.width_affine import set_width_affines
from edgemtl.model.width_masks import WidthMasks
from edgemtl.model.widths import WidthConfig, channels_at
from edgemtl.training import TrainConfig, _batches_forever, _optimiser

LABELS = ("widest", "narrowest", "random")
Observer = Callable[[int, str, WidthConfig, dict[str, float]], None]   # step, label, configuration, its losses


@dataclass(frozen=True)
class SlimmableConfig:
    random_configs: int = 2         # the sandwich rule's random members per step
    distill_weight: float = 0.1     # weight of the feature distillation (1.0 cost the widest 5-30%: docs/widths.md)
    bn: str = "recalibrate"         # per-width BatchNorm statistics: "recalibrate" | "switchable"
    private_affine: bool = True     # a private affine per narrower width (edgemtl.model.width_affine; docs/widths.md)


@dataclass
class SlimmableResult:
    steps: int
    seconds: float
    # "widest" | "narrowest" | "random" -> {task: loss, "distill": loss, "total": loss}, means over the last 10% of steps
    configuration_losses: dict[str, dict[str, float]] = field(default_factory=dict)

    slim: SlimmableConfig = SlimmableConfig()

    def record(self, val_metrics_narrowest: dict[str, dict[str, float]] | None = None) -> dict:
        """What a slimmable checkpoint's meta keeps of its training (`train.slimmable`): the settings, the losses per
        configuration and, if given, the held-out metrics at the narrowest configuration."""
        return {**asdict(self.slim), "configuration_losses": self.configuration_losses,
                **({"val_metrics_narrowest": val_metrics_narrowest} if val_metrics_narrowest is not None else {})}

    def summary(self) -> str:
        """One line per configuration of the sandwich: its closing task, distillation and total losses."""
        return "\n".join(f"{label}: " + ", ".join(f"{key} {value:.4f}" for key, value in losses.items())
                         for label, losses in self.configuration_losses.items())

    @property
    def final_losses(self) -> dict[str, float]:
        """The widest configuration's task losses (what `train` reports for a fixed-width model)."""
        return {k: v for k, v in self.configuration_losses.get("widest", {}).items() if k not in ("distill", "total")}


def train_slimmable(model: nn.Module, spec: ModelSpec, data: TaskData, config: TrainConfig = TrainConfig(),
                    slim: SlimmableConfig = SlimmableConfig(), show_progress: bool = True,
                    masks: WidthMasks | None = None, observe: Observer | None = None) -> tuple[SlimmableResult, WidthMasks]:
    """Train `model` in place at every width of `spec.widths` (sandwich rule + feature distillation); returns the
    per-configuration losses and the masks (which hold switchable statistics, and run the model at any width)."""
    if slim.random_configs < 0:
        raise EdgemtlError(f"the number of random configurations per step must be 0 or more, got {slim.random_configs}")
    masks = masks or WidthMasks(model, spec, bn=slim.bn)
    space = masks.space
    features = _FeatureTap(model, space)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    model.train()
    trained = nn.ModuleList([model, masks.enable_affine()] if slim.private_affine else [model])
    optimiser, schedule = _optimiser(trained, config)
    tail = max(1, config.steps // 10)
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    batches = _batches_forever(data, config.batch_size, config.seed)
    start = time.perf_counter()
    columns = (TextColumn("slimmable training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("widest {task.fields[wide]:.3f} narrowest {task.fields[narrow]:.3f}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not show_progress, transient=False) as progress:
            bar = progress.add_task("train", total=config.steps, wide=float("nan"), narrow=float("nan"))
            for step in range(config.steps):
                images, targets = next(batches)
                members = [("widest", space.widest()), ("narrowest", space.narrowest())]
                members += [("random", space.sample(rng)) for _ in range(slim.random_configs)]
                optimiser.zero_grad(set_to_none=True)
                teacher: dict[str, torch.Tensor] = {}
                totals = {}
                for label, widths in members:
                    with masks.at(widths):
                        outputs = model(images)
                    losses = {t.name: supervised_loss(t, outputs[t.name], targets[t.name], t.name in data.distilled)
                              for t in spec.tasks}
                    total = sum(t.loss_weight * losses[t.name] for t in spec.tasks)
                    if label == "widest":
                        teacher = {**features.detached(), **{f"task:{k}": v.detach() for k, v in outputs.items()}}
                    distill = features.distillation(widths, teacher, outputs, spec)
                    total = total + slim.distill_weight * distill
                    auxiliary = getattr(model, "auxiliary_loss", None)
                    if callable(auxiliary):
                        total = total + auxiliary()
                    total.backward()
                    values = {**{k: v.item() for k, v in losses.items()}, "distill": distill.item(), "total": total.item()}
                    totals.setdefault(label, values["total"])
                    if observe is not None:
                        observe(step, label, widths, values)
                    if step >= config.steps - tail:
                        bucket = sums.setdefault(label, {})
                        for key, value in values.items():
                            bucket[key] = bucket.get(key, 0.0) + value
                        counts[label] = counts.get(label, 0) + 1
                torch.nn.utils.clip_grad_norm_(trained.parameters(), 5.0)
                optimiser.step()
                schedule.step()
                progress.update(bar, advance=1, wide=totals["widest"], narrow=totals["narrowest"])
    finally:
        features.remove()
    if masks.affine is not None:
        set_width_affines(model, masks.affine.tensors())
    model.eval()
    losses = {label: {k: v / counts[label] for k, v in bucket.items()} for label, bucket in sums.items()}
    return SlimmableResult(config.steps, time.perf_counter() - start, losses, slim), masks


class _FeatureTap:
    """Each encoder stage's output (the last module its `modules` name), captured on every forward."""

    def __init__(self, model: nn.Module, space) -> None:
        self.space = space
        self.captured: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, options in space.stages.items():
            if options.modules:
                module = model.get_submodule(options.modules[-1])
                self.handles.append(module.register_forward_hook(self._capture(name)))

    def _capture(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            if isinstance(output, torch.Tensor):
                self.captured[name] = output
        return hook

    def detached(self) -> dict[str, torch.Tensor]:
        return {name: value.detach() for name, value in self.captured.items()}

    def aligned(self) -> bool:
        """Whether every stage's captured output carries the stage's declared channels (else: distil task outputs)."""
        return bool(self.captured) and all(
            name in self.captured and self.captured[name].dim() >= 2
            and self.captured[name].shape[1] == options.channels for name, options in self.space.stages.items())

    def distillation(self, widths: WidthConfig, teacher: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor],
                     spec: ModelSpec) -> torch.Tensor:
        if self.aligned():
            terms = []
            for name, options in self.space.stages.items():
                keep = channels_at(options.channels, widths.encoder[name])
                terms.append(distillation_loss(self.captured[name][:, :keep], teacher[name][:, :keep]))
            return torch.stack(terms).mean()
        return sum(t.loss_weight * distillation_loss(outputs[t.name], teacher[f"task:{t.name}"]) for t in spec.tasks)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def recalibrate_batchnorm(model: nn.Module, data: TaskData, batches: int = 8, batch_size: int = 32, seed: int = 0,
                          masks: WidthMasks | None = None, widths: WidthConfig | None = None) -> int:
    """Post-hoc BatchNorm recalibration: reset every BatchNorm's running statistics and re-estimate them (a cumulative
    average) from `batches` batches of `data` with only the BatchNorms in train mode; nothing else changes. On a
    narrow model (slice_widths) directly, or on the full model at `widths` through `masks` (the silenced channels keep
    their statistics, but the kept ones are overwritten: restore a state_dict to go back). Returns the images seen."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [norm.momentum for norm in norms]
    was_training = model.training
    model.eval()
    seen = 0
    context = contextlib.ExitStack()
    if masks is not None and widths is not None:
        context.enter_context(masks.at(widths))
        context.enter_context(masks.recalibrating())
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        with context, torch.no_grad():
            for index, (images, _) in enumerate(data.batches(batch_size, shuffle=True, seed=seed)):
                if index >= batches:
                    break
                model(images)
                seen += len(images)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return seen


@contextlib.contextmanager
def configured(model: nn.Module, masks: WidthMasks, widths: WidthConfig, data: TaskData, batches: int = 16,
               batch_size: int = 32) -> Iterator[None]:
    """Inside: `model` runs at `widths` with that configuration's own BatchNorm statistics (switchable: its set;
    recalibrate: re-estimated from `batches` batches of `data`); afterwards every weight and statistic is as before."""
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    try:
        if masks.bn == "recalibrate" and widths != masks.space.widest():
            recalibrate_batchnorm(model, data, batches, batch_size, masks=masks, widths=widths)
        with masks.at(widths):
            yield
    finally:
        model.load_state_dict(saved)
