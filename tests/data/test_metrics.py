"""Metric accumulators against hand-computed values on tiny tensors."""

import math

import pytest
import torch

from edgemtl.data.metrics import make_metric
from edgemtl.model.spec import METRIC_HIGHER_IS_BETTER, TaskSpec


def spec(kind: str, shape: list[int]) -> TaskSpec:
    return TaskSpec(name="t", kind=kind, output_shape=shape)


def one_hot_logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits whose argmax over dim 1 is `labels`."""
    return torch.nn.functional.one_hot(labels, classes).movedim(-1, 1).float() * 5.0


def test_accuracy_over_batches() -> None:
    metric = make_metric(spec("classification", [3]))
    target = torch.tensor([0, 1, 2, 2])
    metric.update(one_hot_logits(target[:2], 3), target[:2])
    metric.update(one_hot_logits(torch.tensor([2, 0]), 3), target[2:])
    assert metric.compute() == {"accuracy": 0.75}
    metric.reset()
    metric.update(one_hot_logits(target, 3), target)
    assert metric.compute()["accuracy"] == 1.0


def test_segmentation_perfect_and_hand_worked_confusion() -> None:
    metric = make_metric(spec("segmentation", [3, 2, 2]))
    target = torch.tensor([[[0, 0], [1, 2]]])
    metric.update(one_hot_logits(target, 3), target)
    assert metric.compute() == {"miou": 1.0, "pixel_accuracy": 1.0}

    metric.reset()
    # target 0 0 1 1 | pred 0 1 1 1 (class 2 never appears, so it is left out of the mean)
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    metric.update(one_hot_logits(pred, 3), target)
    result = metric.compute()
    # IoU(0) = 1 / (1 + 0 + 1) = 1/2, IoU(1) = 2 / (2 + 1 + 0) = 2/3
    assert result["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["pixel_accuracy"] == pytest.approx(3 / 4)


def test_depth_rmse_and_abs_rel() -> None:
    metric = make_metric(spec("depth", [1, 1, 2]))
    target = torch.tensor([[[[1.0, 2.0]]]])
    metric.update(target.clone(), target)
    assert metric.compute() == {"rmse": 0.0, "abs_rel": 0.0}
    metric.reset()
    metric.update(torch.tensor([[[[2.0, 2.0]]]]), target)
    metric.update(torch.tensor([[[[4.0, 1.0]]]]), torch.tensor([[[[2.0, 2.0]]]]))
    # errors 1, 0, 2, -1 -> rmse sqrt(6/4); relative 1, 0, 1, 0.5 -> 2.5/4
    result = metric.compute()
    assert result["rmse"] == pytest.approx(math.sqrt(1.5))
    assert result["abs_rel"] == pytest.approx(0.625)


def test_normals_angular_error_normalises_predictions() -> None:
    metric = make_metric(spec("normals", [3, 1, 2]))
    target = torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]]])  # (1, 3, 1, 2): +z and +y
    metric.update(target * 7.0, target)
    assert metric.compute()["angular_error"] == pytest.approx(0.0, abs=1e-6)
    metric.reset()
    pred = torch.tensor([[[[3.0, 0.0]], [[0.0, -2.0]], [[3.0, 0.0]]]])  # 45 deg off, then opposite: 180 deg
    metric.update(pred, target)
    assert metric.compute()["angular_error"] == pytest.approx((45.0 + 180.0) / 2)


def test_edge_f1_perfect_and_one_pixel_tolerance() -> None:
    metric = make_metric(spec("edges", [1, 5, 5]))
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, :, 2] = 1.0  # a vertical line of 5 pixels
    metric.update(torch.where(target > 0, 4.0, -4.0), target)
    assert metric.compute() == {"edge_f1": 1.0}

    metric.reset()
    shifted = torch.full((1, 1, 5, 5), -4.0)
    shifted[0, 0, :, 3] = 4.0  # one pixel off: still a perfect match
    metric.update(shifted, target)
    assert metric.compute()["edge_f1"] == 1.0

    metric.reset()
    pred = torch.full((1, 1, 5, 5), -4.0)
    pred[0, 0, :2, 3] = 4.0  # 2 pixels, 1 px away from the line: precision 2/2
    pred[0, 0, 0, 0] = 4.0  # 2 px away: a false positive -> precision 2/3
    # recall: target pixels within 1 px of a prediction are rows 0, 1, 2 -> 3/5
    metric.update(pred, target)
    precision, recall = 2 / 3, 3 / 5
    assert metric.compute()["edge_f1"] == pytest.approx(2 * precision * recall / (precision + recall))

    metric.reset()
    metric.update(torch.full((1, 1, 5, 5), -1.0), torch.zeros(1, 1, 5, 5))
    assert metric.compute()["edge_f1"] == 1.0  # nothing to find, nothing claimed


def test_regression_mae() -> None:
    metric = make_metric(spec("regression", [2]))
    metric.update(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, 0.0]]))
    assert metric.compute() == {"mae": pytest.approx(1.25)}


def test_metric_names_are_known_and_empty_compute_fails() -> None:
    shapes = {"classification": [2], "regression": [1], "segmentation": [2, 2, 2], "depth": [1, 2, 2],
              "normals": [3, 2, 2], "edges": [1, 2, 2]}
    for kind, shape in shapes.items():
        task = spec(kind, shape)
        metric = make_metric(task)
        with pytest.raises(ValueError, match="before any update"):
            metric.compute()
        target = {"classification": torch.tensor([1]), "regression": torch.zeros(1, 1),
                  "segmentation": torch.zeros(1, 2, 2, dtype=torch.long)}.get(kind, torch.ones(1, *shape))
        metric.update(torch.randn(1, *shape), target)
        names = set(metric.compute())
        assert task.metric in names and names <= set(METRIC_HIGHER_IS_BETTER)
