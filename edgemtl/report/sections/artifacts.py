"""Every file the bundle holds for its tasks and the all-task graph (nested builds too), linked relative to the page
and flagged when missing, and the runtime each task ships."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.report.fmt import artifact_link, e, plain_text, table
from edgemtl.report.plots import ALL_TASKS_LABEL
from edgemtl.report.read import all_tasks_entry, task_entries
from edgemtl.report.sections import Figures, TaskInput

REPORT_JSON = "report.json"  # the summary report/html.py writes beside the page


def applies(manifest: Mapping[str, Any]) -> bool:
    return True


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    items = [("bundle", "manifest", "manifest.json"), ("bundle", "summary", REPORT_JSON)]
    owners = list(task_entries(manifest).items())
    if (reference := all_tasks_entry(manifest)) is not None:
        owners.append((ALL_TASKS_LABEL, reference))
    owners.append(("bundle", manifest))
    for owner, entry in owners:
        artifacts = entry.get("artifacts")
        if isinstance(artifacts, Mapping):
            items += [(owner, kind, path) for kind, path in _paths(artifacts)]
    rows = [f"<tr><td>{e(owner)}</td><td>{e(kind)}</td><td>{artifact_link(path, bundle_dir)}</td></tr>"
            for owner, kind, path in items]
    shipped = [f"<tr><td>{e(name)}</td><td>shipped runtime</td><td>{e(entry['runtime'])}"
               + (f" <span class=\"dim\">({e(plain_text(entry.get('runtime_reason')))})</span>"
                  if entry.get("runtime_reason") else "") + "</td></tr>"
               for name, entry in task_entries(manifest).items() if isinstance(entry.get("runtime"), str)]
    return table("Artifacts", ("Owner", "Kind", "Path"), rows + shipped)


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def compare_figures(task: TaskInput) -> Figures:
    return {}


def _paths(artifacts: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(kind, path) of every artifact, nested ones too (TVM builds per architecture: `tvm/aarch64`)."""
    found = []
    for kind, value in artifacts.items():
        if isinstance(value, str):
            found.append((f"{prefix}{kind}", value))
        elif isinstance(value, Mapping):
            found += _paths(value, f"{prefix}{kind}/")
    return found
