"""The figures every bundle can have (cost, latency, peak memory per task), embedded as PNG data URIs; a target's own
figures sit in its own section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.report.fmt import figures_html
from edgemtl.report.plots import cost_plot, latency_plot, memory_plot
from edgemtl.report.sections import Figures, TaskInput

PLOTS = (
    ("Compute and parameters per task", cost_plot),
    ("Latency per task", latency_plot),
    ("Peak activation memory per task", memory_plot),
)


def applies(manifest: Mapping[str, Any]) -> bool:
    return True


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    figures = "\n".join(figures_html(PLOTS, manifest))
    return "<h2>Plots</h2>\n" + (figures or "<p class=\"dim\">The manifest has no cost, latency or memory data to "
                                           "plot.</p>")


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def compare_figures(task: TaskInput) -> Figures:
    return {}
