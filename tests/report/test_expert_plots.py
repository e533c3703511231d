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
