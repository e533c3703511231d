"""The expert-usage heat map: drawn from a real profile, absent (None) for a missing or malformed section."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import tiny_model

from edgemtl.analysis.expert_usage import profile_expert_usage
from edgemtl.report.expert_plots import expert_usage_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def usage() -> dict[str, Any]:
    model, _ = tiny_model("m3vit")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return profile_expert_usage(model, images, ["segmentation", "depth", "scene"]).to_dict()


def test_heatmap_of_a_real_profile_is_a_png(usage: dict[str, Any]) -> None:
    png = expert_usage_heatmap({"moe": {"expert_usage": usage}})
    assert png is not None and png.startswith(PNG_MAGIC)


def test_heatmap_skips_malformed_tasks(usage: dict[str, Any]) -> None:
    tasks = {"bad": [{"layer": "x", "mass": ["a", None]}], "$odd$": usage["tasks"]["depth"]}
    png = expert_usage_heatmap({"moe": {"expert_usage": {"samples": "many", "tasks": tasks}}})
    assert png is not None and png.startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    "manifest",
    [
        {},
        {"moe": None},
        {"moe": {}},
        {"moe": {"expert_usage": []}},
        {"moe": {"expert_usage": {"tasks": []}}},
        {"moe": {"expert_usage": {"tasks": {"t": [{"layer": "x", "mass": [0.5, float("nan")]}]}}}},
        {"moe": {"expert_usage": {"tasks": {"t": [{"layer": "x", "mass": []}]}}}},
        {"moe": {"expert_usage": {"tasks": {"t": ["not an entry"]}}}},
    ],
)
def test_heatmap_without_a_usable_section_is_none(manifest: dict[str, Any]) -> None:
    assert expert_usage_heatmap(manifest) is None


def test_the_experts_section_names_each_tasks_kept_experts_and_what_they_save() -> None:
    from edgemtl.report.sections import experts

    task = {"experts_kept": [[0, 2, 5], [4]], "experts_kept_count": [3, 1], "params_before": 400_000,
            "params_after": 220_000, "macs_after": 15e6, "metric": "rmse", "metric_before": 0.5, "metric_after": 0.501}
    html = experts.render({"passes": {"partition_experts": {"coverage": 0.95, "tasks": {"depth": task}}}}, None)
    assert "coverage 95%" in html and "3 / 1 <span class=\"dim\">(0 2 5 | 4)</span>" in html
    assert "180 k (45.0%)" in html   # params saved against the task's path through every expert


def test_the_experts_section_says_why_a_task_keeps_every_expert_it_uses() -> None:
    from edgemtl.report.sections import experts

    task = {"experts_kept": [[0, 1, 2, 3]], "experts_kept_count": [4], "params_before": 400_000, "params_after": 400_000,
            "coverage": 1.0, "fallback": "at coverage 0.95 the path lost 2.10% (rmse), more than 1%"}
    html = experts.render({"passes": {"partition_experts": {"coverage": 0.95, "tasks": {"depth": task}}}}, None)
    assert "every expert it uses: at coverage 0.95 the path lost 2.10% (rmse), more than 1%" in html
