"""Distillation: the loss's scale invariance, and training with a teacher pulls the student towards it."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_model
from edgemtl.data import load_data
from edgemtl.model.losses import distillation_loss
from edgemtl.training import TrainConfig, train


def test_distillation_loss_is_zero_at_the_teacher_and_scale_invariant():
    teacher = torch.randn(4, 3, 8, 8)
    student = teacher + 0.1 * torch.randn_like(teacher)
    assert float(distillation_loss(teacher, teacher)) == 0.0
    assert float(distillation_loss(1000 * student, 1000 * teacher)) == pytest.approx(float(distillation_loss(student, teacher)), rel=1e-4)


def test_training_with_a_teacher_ends_closer_to_the_teacher():
    teacher, spec = tiny_model("mtl-cnn", seed=1)
    student, _ = tiny_model("mtl-cnn", seed=2)
    data = load_data("scenes", "train", n=64)
    config = TrainConfig(steps=15, batch_size=16, lr=3e-3, warmup_steps=1, distill_weight=10.0)
    plain, taught = copy.deepcopy(student), copy.deepcopy(student)
    train(plain, spec, data, config, show_progress=False)
    train(taught, spec, data, config, show_progress=False, teacher=teacher)
    images = torch.from_numpy(data.normalise(data.images[:16]))
    with torch.no_grad():
        reference, outputs = teacher(images), {"plain": plain(images), "taught": taught(images)}
    gap = {name: sum(float(distillation_loss(out[t.name], reference[t.name])) for t in spec.tasks) for name, out in outputs.items()}
    assert gap["taught"] < 0.8 * gap["plain"]
