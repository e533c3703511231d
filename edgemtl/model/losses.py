"""Training losses by name (the `loss` field of a TaskSpec)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgemtl.model.spec import TaskSpec


def _cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(pred, target, dim=1, eps=1e-6)).mean()


def _bce_edges(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Edges are sparse: weight positives by the batch's negative/positive ratio (capped at 20)."""
    positive = target.mean().clamp(min=1e-4)
    pos_weight = ((1 - positive) / positive).clamp(max=20.0).detach()
    return F.binary_cross_entropy_with_logits(pred, target, pos_weight=pos_weight)


def task_loss(task: TaskSpec, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The spec's loss of one task's raw output against its target."""
    if task.loss == "cross_entropy":
        return F.cross_entropy(pred, target.long())
    if task.loss == "l1":
        return F.l1_loss(pred, target)
    if task.loss == "mse":
        return F.mse_loss(pred, target)
    if task.loss == "cosine":
        return _cosine(pred, target)
    if task.loss == "bce_edges":
        return _bce_edges(pred, target)
    raise ValueError(f"unknown loss {task.loss!r}")  # TaskSpec validation makes this unreachable


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error to a teacher's raw output, divided by that output's variance so that one weight
    suits logits, depths and normals alike (pruning's fine-tuning uses it to stay close to the unpruned
    model, against which the pruned one is judged)."""
    return torch.mean((student - teacher) ** 2) / (teacher.var() + 1e-8)


def supervised_loss(task: TaskSpec, pred: torch.Tensor, target: torch.Tensor, distilled: bool) -> torch.Tensor:
    """The task's own loss against labels, or the distillation loss when the target is the float model's output
    (a task the user's data does not label; see `edgemtl.data.teacher`)."""
    return distillation_loss(pred, target) if distilled else task_loss(task, pred, target)
