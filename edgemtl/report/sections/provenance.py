"""The page's last word on its numbers: what measured, simulated, estimated and static mean, and one numbered note per
latency context the tasks table cites (provenance, runtime, device, threads, runs, batch)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.report.fmt import e
from edgemtl.report.sections import Figures, TaskInput
from edgemtl.report.sections.tasks import latency_notes

_INTRO = (
    "<p>Every latency number is labelled with its provenance: <strong>measured</strong> (timed on the "
    "device named), <strong>simulated</strong> (from a cycle or instruction simulator) or "
    "<strong>estimated</strong> (from an analytic model, not run at all), with the runtime, device, "
    "threads and number of runs behind it. Medians and p90 are over those runs. Memory sizes fixed by a "
    "compiler's static allocation are labelled <strong>static</strong>.</p>"
)


def applies(manifest: Mapping[str, Any]) -> bool:
    return True


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    notes = latency_notes(manifest)
    if not notes.records:
        return f"<h2>Provenance</h2>\n{_INTRO}\n<p class=\"dim\">The tasks table has no latency numbers.</p>"
    items = "".join(f"<li>{e(notes.describe(index))}</li>" for index in range(1, len(notes.records) + 1))
    return f"<h2>Provenance</h2>\n{_INTRO}\n<ol>{items}</ol>"


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def compare_figures(task: TaskInput) -> Figures:
    return {}
