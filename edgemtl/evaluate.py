"""Per-task metrics of any predictor (a PyTorch model, an ONNX Runtime session) over a data set."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgemtl.data import TaskData
from edgemtl.data.metrics import agreement_metric, make_metric
from edgemtl.model.spec import TaskSpec

Predictor = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def evaluate(predict: Predictor, tasks: list[TaskSpec], data: TaskData, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Metrics per task accumulated over the whole set (not averaged per batch).

    A task with labels gets its spec's metric; a task whose targets are the float model's outputs (`data.distilled`)
    gets its agreement with them (SQNR, cosine), never a made-up score; a task with neither, or whose metric is
    "none" (raw heads), is left out."""
    metrics = {t.name: (agreement_metric(t) if t.name in data.distilled else make_metric(t)) for t in tasks
               if t.name in data.targets and (t.metric != "none" or t.name in data.distilled)}
    for images, targets in data.batches(batch_size, shuffle=False):
        outputs = predict(images)
        for name, metric in metrics.items():
            metric.update(outputs[name].float(), targets[name])
    return {name: metric.compute() for name, metric in metrics.items()}


def torch_predictor(model: nn.Module) -> Predictor:
    """Run a contract model in eval mode without autograd."""

    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        model.eval()
        with torch.no_grad():
            return model(images)

    return predict
