"""Targets for tasks without labels: the float model's own outputs, so pruning and QAT still guard them.

A user's data set often labels some tasks or none; every pass that trains or judges by loss then distils those
tasks from the model being compiled (its outputs before any pass changed it), as `losses.distillation_loss` does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from edgemtl.data import TaskData


def teach_missing(data: TaskData, model: nn.Module, tasks: list[str], batch_size: int = 64) -> TaskData:
    """`data` with the float model's outputs as targets for each of `tasks` that has no labels."""
    missing = [t for t in tasks if t not in data.targets]
    if not missing:
        return data
    outputs: dict[str, list[np.ndarray]] = {t: [] for t in missing}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            images = torch.from_numpy(data.normalise(data.images[start:start + batch_size]))
            predicted = model(images)
            for task in missing:
                outputs[task].append(predicted[task].float().numpy())
    taught = {t: np.concatenate(v) for t, v in outputs.items()}
    return replace(data, targets={**data.targets, **taught}, distilled=data.distilled | frozenset(missing))
