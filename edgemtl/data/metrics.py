"""Set-level task metrics, accumulated batch by batch.

Averaging per-batch scores is wrong for mIoU, F-scores and RMSE (they are ratios or roots of sums), so
each accumulator keeps the sums it needs and `compute()` forms the metric over the whole set. `update`
takes the model's raw output for a batch: logits for classification / segmentation / edges, values for
depth and regression, unnormalised 3-vectors for normals. Metric names are the keys of
`spec.METRIC_HIGHER_IS_BETTER`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from edgemtl.model.spec import TaskSpec


class TaskMetric(ABC):
    """Accumulates one task's statistics over batches; `compute` gives the set-level metrics."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.reset()

    @abstractmethod
    def reset(self) -> None:
        """Forget every batch seen so far."""

    @abstractmethod
    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None: ...

    @abstractmethod
    def _compute(self) -> dict[str, float]: ...

    @property
    @abstractmethod
    def count(self) -> int:
        """Samples / pixels seen so far (what the metric averages over)."""

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: `pred` is the raw model output, `target` the data set's target tensor."""
        pred = pred.detach().to("cpu", torch.float64)
        target = target.detach().to("cpu")
        if pred.shape[0] != target.shape[0]:
            raise ValueError(
                f"task {self.task.name!r}: batch of {pred.shape[0]} predictions for {target.shape[0]} targets"
            )
        self._update(pred, target)

    def compute(self) -> dict[str, float]:
        """The metrics over everything seen since the last reset."""
        if self.count == 0:
            raise ValueError(f"task {self.task.name!r}: compute() called before any update()")
        return {k: float(v) for k, v in self._compute().items()}


class ClassificationMetric(TaskMetric):
    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    @property
    def count(self) -> int:
        return self.total

    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.correct += int((pred.argmax(dim=1) == target.reshape(-1)).sum())
        self.total += target.numel()

    def _compute(self) -> dict[str, float]:
        return {"accuracy": self.correct / self.total}


class SegmentationMetric(TaskMetric):
    """Confusion matrix over every pixel of the set; target values outside [0, classes) are ignored."""

    def reset(self) -> None:
        k = self.task.num_classes
        self.confusion = torch.zeros(k, k, dtype=torch.int64)  # rows: target, columns: prediction

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        k = self.task.num_classes
        labels = pred.argmax(dim=1).reshape(-1)
        target = target.reshape(-1).long()
        valid = (target >= 0) & (target < k)
        pairs = target[valid] * k + labels[valid]
        self.confusion += torch.bincount(pairs, minlength=k * k).reshape(k, k)

    def _compute(self) -> dict[str, float]:
        conf = self.confusion.double()
        hits = conf.diag()
        union = conf.sum(0) + conf.sum(1) - hits
        present = union > 0  # classes in the target or the prediction; absent ones would be 0/0
        return {
            "miou": float((hits[present] / union[present]).mean()),
            "pixel_accuracy": float(hits.sum() / conf.sum()),
        }


class DepthMetric(TaskMetric):
    """RMSE and mean absolute relative error over pixels with a positive target depth."""

    def reset(self) -> None:
        self.squared = 0.0
        self.relative = 0.0
        self.pixels = 0

    @property
    def count(self) -> int:
        return self.pixels

    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        target = target.double().reshape(pred.shape)
        valid = target > 0
        err = (pred - target)[valid]
        self.squared += float((err * err).sum())
        self.relative += float((err.abs() / target[valid]).sum())
        self.pixels += int(valid.sum())

    def _compute(self) -> dict[str, float]:
        return {"rmse": math.sqrt(self.squared / self.pixels), "abs_rel": self.relative / self.pixels}


class NormalsMetric(TaskMetric):
    """Mean angle in degrees between normalised prediction and target, over pixels with a target normal."""

    def reset(self) -> None:
        self.degrees = 0.0
        self.pixels = 0

    @property
    def count(self) -> int:
        return self.pixels

    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        target = target.double().reshape(pred.shape)
        valid = target.norm(dim=1) > 0
        cosine = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(1)
        angles = torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))
        self.degrees += float(angles[valid].sum())
        self.pixels += int(valid.sum())

    def _compute(self) -> dict[str, float]:
        return {"angular_error": self.degrees / self.pixels}


class EdgesMetric(TaskMetric):
    """Edge F-score with a 1-pixel tolerance, since a boundary one pixel off is still the right boundary.

    A pixel is a predicted edge where sigmoid(pred) > 0.5. Precision is the share of predicted edge pixels
    within 1 px (the 3x3 neighbourhood) of a target edge; recall is the share of target edge pixels within
    1 px of a predicted edge; edge_f1 is their harmonic mean, from counts over the whole set. With no edges
    predicted and none in the target the prediction is perfect (1.0).
    """

    def reset(self) -> None:
        self.pred_edges = 0
        self.true_edges = 0
        self.pred_matched = 0
        self.true_matched = 0
        self.pixels = 0

    @property
    def count(self) -> int:
        return self.pixels

    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        predicted = (pred > 0).reshape(-1, 1, *pred.shape[-2:])  # sigmoid(x) > 0.5 <=> x > 0
        truth = target.reshape(predicted.shape) > 0.5
        near_truth = F.max_pool2d(truth.float(), 3, stride=1, padding=1) > 0
        near_pred = F.max_pool2d(predicted.float(), 3, stride=1, padding=1) > 0
        self.pred_edges += int(predicted.sum())
        self.true_edges += int(truth.sum())
        self.pred_matched += int((predicted & near_truth).sum())
        self.true_matched += int((truth & near_pred).sum())
        self.pixels += truth.numel()

    def _compute(self) -> dict[str, float]:
        if self.pred_edges == 0 and self.true_edges == 0:
            return {"edge_f1": 1.0}
        precision = self.pred_matched / self.pred_edges if self.pred_edges else 0.0
        recall = self.true_matched / self.true_edges if self.true_edges else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return {"edge_f1": f1}


class RegressionMetric(TaskMetric):
    """Mean absolute error over every output value."""

    def reset(self) -> None:
        self.absolute = 0.0
        self.values = 0

    @property
    def count(self) -> int:
        return self.values

    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        err = pred - target.double().reshape(pred.shape)
        self.absolute += float(err.abs().sum())
        self.values += err.numel()

    def _compute(self) -> dict[str, float]:
        return {"mae": self.absolute / self.values}


class AgreementMetric(TaskMetric):
    """How close outputs are to the float model's (a task without labels, or a raw head): SQNR in dB, capped at
    200 dB for identical outputs, and the cosine similarity of the flattened outputs."""

    def reset(self) -> None:
        self.signal = self.noise = self.dot = self.pred_norm = 0.0
        self.samples = 0

    @property
    def count(self) -> int:
        return self.samples

    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        target = target.double().reshape(pred.shape)
        self.signal += float((target ** 2).sum())
        self.noise += float(((pred - target) ** 2).sum())
        self.dot += float((pred * target).sum())
        self.pred_norm += float((pred ** 2).sum())
        self.samples += pred.shape[0]

    def _compute(self) -> dict[str, float]:
        sqnr = 200.0 if self.noise == 0 else min(200.0, 10 * math.log10(max(self.signal, 1e-300) / self.noise))
        denominator = math.sqrt(self.signal * self.pred_norm)
        return {"sqnr_db_vs_float": sqnr, "cosine_vs_float": self.dot / denominator if denominator else 1.0}


class UserMetric(TaskMetric):
    """A metric the spec names as `package.module:function`, `(pred, target) -> float` over the whole set."""

    def reset(self) -> None:
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    @property
    def count(self) -> int:
        return sum(len(p) for p in self.preds)

    def _update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.preds.append(pred)
        self.targets.append(target)

    def _compute(self) -> dict[str, float]:
        from edgemtl.errors import EdgemtlError
        from edgemtl.user_code import call_user, import_callable

        function = import_callable(self.task.metric, f"the metric of task {self.task.name!r}")
        value = call_user(function, self.task.metric, f"the metric of task {self.task.name!r}",
                          torch.cat(self.preds), torch.cat(self.targets))
        try:
            return {self.task.metric: float(value)}
        except (TypeError, ValueError):
            raise EdgemtlError(f"the metric {self.task.metric!r} of task {self.task.name!r} returned "
                               f"{type(value).__name__}, not a number") from None


_METRICS: dict[str, type[TaskMetric]] = {
    "classification": ClassificationMetric,
    "segmentation": SegmentationMetric,
    "depth": DepthMetric,
    "normals": NormalsMetric,
    "edges": EdgesMetric,
    "regression": RegressionMetric,
    "raw": RegressionMetric,  # only when the spec asks for mae; a raw head's default metric is "none"
}


def make_metric(task: TaskSpec) -> TaskMetric:
    """The accumulator for a task: the user's own metric when the spec names one, else its kind's."""
    return UserMetric(task) if ":" in task.metric else _METRICS[task.kind](task)


def agreement_metric(task: TaskSpec) -> TaskMetric:
    """The accumulator comparing a task's outputs with the float model's (no labels needed)."""
    return AgreementMetric(task)
