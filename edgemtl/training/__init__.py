"""Multi-task training: every task's loss, weighted by its spec, on one shared optimiser.

Used by `edgemtl train` (and by later passes to fine-tune after pruning or quantization); `edgemtl train
--slimmable` trains every width of a slimmable model (`edgemtl.training.slimmable`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from edgemtl.data import TaskData
from edgemtl.model.losses import distillation_loss, supervised_loss
from edgemtl.model.spec import ModelSpec


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    seed: int = 0
    distill_weight: float = 1.0   # weight of the distillation term per task, used only when train() gets a teacher


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_losses: dict[str, float] = field(default_factory=dict)  # mean of each task's loss over the last 10% of steps
    # a mixture-of-experts model's routing over the last 10% of steps: MoE layer -> task -> share of tokens per expert
    expert_usage: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def _batches_forever(data: TaskData, batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from data.batches(batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


def _optimiser(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a linear warm-up and a cosine decay over `config.steps`."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)


def train(model: nn.Module, spec: ModelSpec, data: TaskData, config: TrainConfig = TrainConfig(),
          show_progress: bool = True, teacher: nn.Module | None = None,
          after_backward: Callable[[nn.Module], None] | None = None) -> TrainResult:
    """Train in place with AdamW and a warm-up + cosine schedule; returns the closing per-task losses.

    With a `teacher` (e.g. the unpruned model while a pruned one is fine-tuned), every task's loss also gets
    `distill_weight` times the distillation loss to the teacher's output for that task. `after_backward(model)` runs
    between the backward pass and the optimiser step (a regulariser that edits the gradients, as pruning's
    sparsity phase does)."""
    if teacher is not None:
        teacher.eval()
    torch.manual_seed(config.seed)
    model.train()
    optimiser, schedule = _optimiser(model, config)
    tail = max(1, config.steps // 10)
    sums = {t.name: 0.0 for t in spec.tasks}
    batches = _batches_forever(data, config.batch_size, config.seed)
    usage = getattr(model, "expert_usage", None)
    usage = usage if callable(usage) else (lambda reset: {})
    usage(reset=True)   # nothing from before this training
    start = time.perf_counter()
    columns = (TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        bar = progress.add_task("train", total=config.steps, loss=float("nan"))
        for step in range(config.steps):
            images, targets = next(batches)
            outputs = model(images)
            losses = {t.name: supervised_loss(t, outputs[t.name], targets[t.name], t.name in data.distilled) for t in spec.tasks}
            total = sum(t.loss_weight * losses[t.name] for t in spec.tasks)
            if teacher is not None:
                with torch.no_grad():
                    taught = teacher(images)
                total = total + config.distill_weight * sum(
                    t.loss_weight * distillation_loss(outputs[t.name], taught[t.name]) for t in spec.tasks)
            auxiliary = getattr(model, "auxiliary_loss", None)
            if callable(auxiliary):
                total = total + auxiliary()
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            if after_backward is not None:
                after_backward(model)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            schedule.step()
            if step == config.steps - tail - 1:
                usage(reset=True)   # the record covers the same closing steps as the losses
            if step >= config.steps - tail:
                for name, value in losses.items():
                    sums[name] += value.item()
            progress.update(bar, advance=1, loss=total.item())
    model.eval()
    return TrainResult(config.steps, time.perf_counter() - start, {k: v / tail for k, v in sums.items()},
                       usage(reset=True))
