"""The widths section reads an untrusted manifest: a malformed slice_widths record or front renders what it can,
never raises, and draws no plot from nothing."""

from __future__ import annotations

from typing import Any

import pytest

from edgemtl.report.html import render_html, summarize
from edgemtl.report.sections import widths
from edgemtl.report.width_plots import relative, width_front_plot

RECORD = {"widths": {"encoder": {"stage0": 0.5}, "decoders": {"scene": 1.0}}, "source": "width configuration c.json",
          "macs_before": 2000, "macs_after": 800, "part_channels": {"encoder": {"stage0": [8, 4]},
                                                                    "decoders": {"scene": [0, 0]}}}


@pytest.mark.parametrize("front", [
    {"points": "many", "reference": None},
    {"points": [{"cost": "x"}, None, {"cost": 1, "metrics": {"depth": float("nan")}}], "tasks": {"depth": {}},
     "reference": {"cost": 2, "metrics": {"depth": 1.0}}},
    {"points": [{"cost": 1, "metrics": {"depth": 0.5}}], "tasks": {"depth": {"higher_is_better": False}},
     "reference": {"cost": 2, "metrics": {"depth": 0.0}}, "cost_limit": "1", "budget": 3},
])
def test_a_malformed_front_renders_without_raising(front: dict[str, Any]) -> None:
    manifest = {"passes": {"slice_widths": {**RECORD, "front": front, "channels": {"x": "y"}, "warnings": [1, "w"]}}}
    assert widths.applies(manifest)
    page = render_html(manifest)
    assert "<h2>Width configuration</h2>" in page and "Where it sits on the search front" in page and "w</p>" in page
    assert widths.summary(manifest)["widths"]["macs_after"] == 800


def test_the_plot_draws_only_from_a_usable_front() -> None:
    assert width_front_plot({"passes": {"slice_widths": {**RECORD, "front": {"points": []}}}}) is None
    front = {"points": [{"cost": 1, "metrics": {"depth": 0.5}, "source": "predicted"}],
             "tasks": {"depth": {"higher_is_better": False, "metric": "rmse"}},
             "reference": {"cost": 2, "metrics": {"depth": 0.4}}, "compiled": {"cost": 1, "metrics": {}}}
    assert width_front_plot({"passes": {"slice_widths": {**RECORD, "front": front}}}).startswith(b"\x89PNG")


def test_relative_metrics_read_as_the_search_scores_them() -> None:
    assert relative(0.5, 0.4, higher_is_better=False) == 0.8 and relative(0.6, 0.8, higher_is_better=True) == pytest.approx(0.75)
    assert relative(0.0, 0.4, higher_is_better=False) is None and relative(0.6, 0.0, higher_is_better=True) is None


def test_no_record_no_section() -> None:
    assert not widths.applies({"passes": {"slice_widths": {"skipped": "why"}}}) and not widths.applies({})
    assert "widths" not in summarize({"passes": {"prune_pagcp": {}}})


def test_the_folded_private_affines_are_shown_when_there_are_some() -> None:
    assert "Private per-width affines folded</dt><dd>7" in widths.render(
        {"passes": {"slice_widths": {**RECORD, "affines_folded": 7}}}, None).replace("\n", "")
    assert "Private per-width affines" not in widths.render({"passes": {"slice_widths": RECORD}}, None)
