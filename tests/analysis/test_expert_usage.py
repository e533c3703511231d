"""Expert usage of a task-conditioned MoE: counts and mass add up, coverage sets are minimal and honest."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from edgemtl.analysis.expert_usage import ExpertUsage, LayerUsage, profile_expert_usage
from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError


@pytest.fixture(scope="module")
def profiled() -> tuple[ExpertUsage, int]:
    model, _ = tiny_model("m3vit")
    data = load_data("scenes", "val", n=5)
    usage = profile_expert_usage(model, torch.from_numpy(data.normalise(data.images)), list(model.task_index),
                                 batch_size=2)
    return usage, model.moe_layers()[0].top_k


def _usage(mass: list[float], selected: list[int]) -> ExpertUsage:
    return ExpertUsage(layers=["moe"], num_experts=[len(mass)], samples=1,
                       tasks={"t": [LayerUsage(layer="moe", tokens=10, selected=selected, mass=mass)]})


def test_profile_covers_every_task_and_layer(profiled: tuple[ExpertUsage, int]) -> None:
    usage, _ = profiled
    assert usage.samples == 5
    assert usage.layers == ["blocks.1.mlp"] and usage.num_experts == [4]
    assert set(usage.tasks) == {"segmentation", "depth", "normals", "edges", "scene"}
    tokens = 5 * (64 // 8) ** 2
    assert all(u.tokens == tokens for usages in usage.tasks.values() for u in usages)


def test_mass_sums_to_one_and_selection_to_k(profiled: tuple[ExpertUsage, int]) -> None:
    usage, k = profiled
    for task, usages in usage.tasks.items():
        for index, layer in enumerate(usages):
            assert sum(layer.mass) == pytest.approx(1.0, abs=1e-6)  # float32 softmax round-off
            assert sum(layer.selected) == k * layer.tokens
            assert sum(usage.selection_share(task, index)) == pytest.approx(k)


def test_full_coverage_is_exactly_the_used_experts(profiled: tuple[ExpertUsage, int]) -> None:
    usage, _ = profiled
    for task, usages in usage.tasks.items():
        assert usage.experts_covering(task, 0, 1.0) == [e for e, n in enumerate(usages[0].selected) if n > 0]
    # an unused expert whose float mass is tiny but whose share sum falls short of 1 is still never picked
    assert _usage([0.5, 0.0, 0.49999999], [5, 0, 5]).experts_covering("t", 0, 1.0) == [0, 2]


def test_partial_coverage_is_the_heaviest_subset(profiled: tuple[ExpertUsage, int]) -> None:
    usage, _ = profiled
    for task, usages in usage.tasks.items():
        mass = usages[0].mass
        full = usage.experts_covering(task, 0, 1.0)
        half = usage.experts_covering(task, 0, 0.5)
        assert half == sorted(half) and set(half) <= set(full)
        assert sum(mass[e] for e in half) >= 0.5
        assert min(mass[e] for e in half) >= max((mass[e] for e in full if e not in half), default=0.0)
    assert _usage([0.1, 0.6, 0.3, 0.0], [1, 6, 3, 0]).experts_covering("t", 0, 0.7) == [1, 2]
    assert _usage([0.1, 0.6, 0.3, 0.0], [1, 6, 3, 0]).experts_covering("t", 0, 0.6) == [1]


def test_to_dict_is_json(profiled: tuple[ExpertUsage, int]) -> None:
    usage, _ = profiled
    data = json.loads(json.dumps(usage.to_dict()))
    entry = data["tasks"]["depth"][0]
    assert data["samples"] == 5 and data["layers"] == ["blocks.1.mlp"]
    assert set(entry) == {"layer", "tokens", "selected", "selection_share", "mass", "experts_used"}
    assert entry["experts_used"] == len(usage.experts_covering("depth", 0, 1.0))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01])
def test_bad_fraction_is_a_user_error(profiled: tuple[ExpertUsage, int], fraction: float) -> None:
    with pytest.raises(EdgemtlError, match=r"\(0, 1\]"):
        profiled[0].experts_covering("depth", 0, fraction)


def test_unknown_task_lists_the_valid_ones(profiled: tuple[ExpertUsage, int]) -> None:
    with pytest.raises(EdgemtlError, match="unknown task 'nope'.*depth"):
        profiled[0].experts_covering("nope", 0, 0.5)
    model, _ = tiny_model("m3vit")
    with pytest.raises(EdgemtlError, match="unknown task 'nope'.*segmentation"):
        profile_expert_usage(model, torch.zeros(1, 3, 64, 64), ["nope"])


def test_model_without_experts_is_a_user_error() -> None:
    model, _ = tiny_model("mtl-cnn")
    with pytest.raises(EdgemtlError, match="no mixture-of-experts layer"):
        profile_expert_usage(model, torch.zeros(1, 3, 64, 64), ["depth"])


def test_profiling_restores_training_mode() -> None:
    model, _ = tiny_model("m3vit")
    model.train()
    profile_expert_usage(model, torch.zeros(1, 3, 64, 64), ["scene"])
    assert model.training
