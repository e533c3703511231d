"""The compile's steps in order, each with its time and status (and why a skipped one had nothing to do)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.report.fmt import DASH, e, human_seconds, plain_text, table
from edgemtl.report.read import number, pick
from edgemtl.report.sections import Figures, TaskInput


def applies(manifest: Mapping[str, Any]) -> bool:
    return True


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    steps = _steps(manifest)
    if not steps:
        return "<h2>Steps</h2>\n<p class=\"dim\">No steps recorded.</p>"
    rows = []
    for step in steps:
        seconds = number(step.get("seconds"))
        status = plain_text(step.get("status")) or DASH
        css = "ok" if status == "ok" else "fail" if status in ("failed", "error") else "dim"
        rows.append(
            f"<tr><td>{e(step.get('name') or DASH)}</td>"
            f"<td class=\"n\">{human_seconds(seconds) if seconds is not None else DASH}</td>"
            f"<td class=\"{css}\">{e(status)}"
            + (f" <span class=\"dim\">{e(plain_text(step.get('reason')))}</span>" if step.get("reason") else "")
            + "</td></tr>"
        )
    total = sum(value for step in steps if (value := number(step.get("seconds"))) is not None)
    rows.append(f"<tr><th>total</th><th class=\"n\">{human_seconds(total)}</th><th></th></tr>")
    return table("Steps", ("Step", "Time", "Status"), rows)


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {"steps": [pick(step, ("name", "seconds", "status")) for step in _steps(manifest)]}


def compare_figures(task: TaskInput) -> Figures:
    return {}


def _steps(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    steps = manifest.get("steps")
    return [step for step in steps if isinstance(step, Mapping)] if isinstance(steps, list) else []
