"""The PAGCP benchmark's baselines prune what they claim to (a baseline that removes nothing makes the
comparison meaningless)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from edgemtl.data import data_spec, load_data
from edgemtl.model.zoo import build_model, zoo_spec
from edgemtl.passes.prune_pagcp import Surgeon, _macs


def _benchmark():
    folder = Path(__file__).parents[2] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # as when the script runs: its helpers live beside it
    spec = importlib.util.spec_from_file_location("pagcp_benchmark", folder / "pagcp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_and_spec():
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec("mtl-cnn", input_spec, tasks, {"width": 16, "blocks": [1, 1, 1], "head_width": 16}, data="scenes")
    torch.manual_seed(0)
    return build_model(spec).eval(), spec


def test_single_task_taylor_removes_channels_and_keeps_the_classifier_path(model_and_spec):
    """Regression: torch-pruning's mean-normalised Taylor score is 0/0 = NaN in the dense heads (no gradient
    from the classification loss), every comparison with NaN is false, and nothing was pruned at any ratio."""
    model, spec = model_and_spec
    bench, example = _benchmark(), Surgeon(spec).example
    before = _macs(model, example)
    pruned = bench.single_task_taylor(model, spec, load_data("scenes", "train", n=64), 0.5)
    assert _macs(pruned, example) < 0.9 * before
    assert _macs(model, example) == before  # the input model is untouched
    with torch.no_grad():
        outputs = pruned(example)
    assert all(list(outputs[t.name].shape[1:]) == t.output_shape for t in spec.tasks)


def test_uniform_l1_removes_channels(model_and_spec):
    model, spec = model_and_spec
    bench, example = _benchmark(), Surgeon(spec).example
    assert _macs(bench.uniform_l1(model, spec, 0.5), example) < 0.6 * _macs(model, example)


def test_match_macs_finds_the_grid_ratio_closest_to_the_target_in_few_prunings():
    """A linear layer whose width shrinks with the ratio: MACs = 8 x width, a step function of the ratio."""
    calls = []

    def prune_at(ratio: float) -> torch.nn.Module:
        calls.append(ratio)
        return torch.nn.Linear(8, max(1, 64 - int(ratio * 64) // 8 * 8))

    ratio, model = _benchmark().match_macs(prune_at, target_macs=8 * 30, example=torch.zeros(1, 8))
    assert model.out_features in (24, 32)      # 30 channels lie between the 24 and 32 the grid can give
    assert abs(8 * model.out_features - 240) == min(abs(8 * w - 240) for w in (24, 32))
    assert len(set(calls)) <= 8 and 0.45 <= ratio <= 0.65    # bisected, not the 39-point sweep


def test_a_baseline_takes_finer_widths_when_multiples_of_8_cannot_match_pagcps_macs():
    """The 2026-12-05 run: uniform L1 on 32-wide layers could only reach 56% of the MACs where PAGCP kept 60%, so the
    'matched within 3 points' comparison failed. Widths in multiples of 1 then take over; multiples of 8 stay where
    they match (they are what runs fast)."""
    def prune_at(ratio: float, multiple: int) -> torch.nn.Module:
        keep = 32 - int(ratio * 32)
        return torch.nn.Linear(8, -(-keep // multiple) * multiple)

    bench, example = _benchmark(), torch.zeros(1, 8)
    base = 8 * 32
    _, model, multiple = bench.matched(prune_at, target_macs=0.6 * base, base_macs=base, example=example)
    assert multiple == 1 and abs(8 * model.out_features - 0.6 * base) <= 0.03 * base
    _, model, multiple = bench.matched(prune_at, target_macs=0.75 * base, base_macs=base, example=example)
    assert multiple == 8 and model.out_features == 24
