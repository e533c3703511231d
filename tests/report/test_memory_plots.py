"""The MoE memory figure: a PNG for a real plan (one, or one per task), None when the section is unusable."""

from __future__ import annotations

import pytest

from edgemtl.analysis.memory_plan import plan_moe_model
from edgemtl.report.memory_plots import moe_memory_plot
from tests.conftest import tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plan() -> dict:
    model, _ = tiny_model("m3vit")
    return plan_moe_model(model, 64, on_chip_bytes=4000, weight_bytes=1, activation_bytes=1).to_dict()


def test_plot_of_one_plan_and_of_plans_per_task(plan):
    assert plan["totals"]["token_major"]["reloads_per_token"]  # the capacity line and hatching are drawn
    assert moe_memory_plot({"moe": {"memory_plan": plan}}).startswith(PNG_MAGIC)
    per_task = {"semseg": plan, "depth": {**plan, "on_chip_bytes": 0}, "junk": "not a plan"}
    assert moe_memory_plot({"moe": {"memory_plan": per_task}}).startswith(PNG_MAGIC)


@pytest.mark.parametrize("manifest", [
    {},
    {"moe": {"expert_usage": {}}},
    {"moe": {"memory_plan": []}},
    {"moe": {"memory_plan": {"totals": {"token_major": {"peak_on_chip_bytes": "big"}}}}},
    {"moe": {"memory_plan": {"t": {"totals": {"token_major": {"peak_on_chip_bytes": 1, "weight_traffic_bytes": 1},
                                              "expert_major": {"peak_on_chip_bytes": 0, "weight_traffic_bytes": 1}}}}}},
])
def test_no_plot_without_a_usable_section(manifest):
    assert moe_memory_plot(manifest) is None
