"""One width configuration evaluated for real: each task's metric on held-out data and the target's cost.

The metrics come from the slimmable model itself at that configuration (`WidthMasks`, which computes exactly what the
sliced model computes) with that configuration's own BatchNorm statistics recalibrated from training batches, as
`compile --widths` does; the cost from the sliced model (`slice_model`), as the compiled bundle would have it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from edgemtl.data import TaskData
from edgemtl.evaluate import evaluate, torch_predictor
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov
from edgemtl.model.spec import ModelSpec
from edgemtl.model.width_masks import WidthMasks
from edgemtl.model.widths import WidthConfig
from edgemtl.passes.slice_widths import RECALIBRATION_BATCH_SIZE, slice_model, slimmable_space
from edgemtl.search.objectives import CostMeter
from edgemtl.training.slimmable import configured


@dataclass(frozen=True)
class Evaluation:
    """A configuration's objectives: `metrics` (task -> its spec metric) and `cost`, with where each came from."""

    widths: WidthConfig
    metrics: dict[str, float]
    cost: float
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)   # "metrics", "cost"


class ConfigEvaluator:
    """Evaluates configurations of one slimmable model on one held-out set, with one cost meter."""

    def __init__(self, model: nn.Module, spec: ModelSpec, train: TaskData, held_out: TaskData, meter: CostMeter,
                 recalibration_batches: int = 8) -> None:
        self.space = slimmable_space(spec, "tune")
        self.tasks = [task for task in spec.tasks if task.name in held_out.targets and task.metric != "none"]
        if not self.tasks:
            raise EdgemtlError("tune needs held-out labels for at least one task: the data labels none of "
                               f"{', '.join(spec.task_names)}")
        self.model, self.spec, self.train, self.held_out, self.meter = model.eval(), spec, train, held_out, meter
        self.batches = recalibration_batches
        self.masks = WidthMasks(model, spec)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def higher_is_better(self) -> dict[str, bool]:
        return {task.name: bool(task.higher_is_better) for task in self.tasks}

    def metrics(self, widths: WidthConfig) -> dict[str, float]:
        with configured(self.model, self.masks, widths, self.train, self.batches, RECALIBRATION_BATCH_SIZE):
            scores = evaluate(torch_predictor(self.model), self.tasks, self.held_out)
        return {task.name: float(scores[task.name][task.metric]) for task in self.tasks}

    def cost(self, widths: WidthConfig) -> tuple[float, dict[str, Any]]:
        narrow, narrow_spec = slice_model(self.model, self.spec, widths)
        return self.meter(narrow, narrow_spec)

    def __call__(self, widths: WidthConfig) -> Evaluation:
        widths = self.space.check(widths, "tune")
        cost, cost_provenance = self.cost(widths)
        metrics_provenance = prov("evaluated", source="edgemtl evaluate",
                                  detail=f"{len(self.held_out)} held-out samples, BatchNorm recalibrated from "
                                         f"{self.batches} training batches")
        return Evaluation(widths, self.metrics(widths), cost, {"metrics": metrics_provenance, "cost": cost_provenance})
