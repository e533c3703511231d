"""The "Profile" section: what `edgemtl profile` measured for this bundle, per device, task and runtime.

Written into the bundle's report by `edgemtl profile` itself (the report is regenerated after the manifest), so the
page a hardware team opens shows the timings, their spread, the output check and which runtime ships. The
comparison reads the same timings itself (any target's bundle can be profiled), so this section adds none there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.manifest import provenance_text
from edgemtl.report.fmt import e
from edgemtl.report.read import task_entries
from edgemtl.report.sections import Figures, TaskInput

_HEADERS = ("Task", "Runtime", "Median", "p90 / median", "Runs", "Output check", "Provenance", "Chosen")


def applies(manifest: Mapping[str, Any]) -> bool:
    return bool(manifest.get("profiles"))


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    parts = ["<h2>Profile</h2>"]
    for slug, device in manifest["profiles"].items():
        device = device if isinstance(device, Mapping) else {}
        parts.append(f"<h3>{e(device.get('device', slug))}</h3>")
        parts.append(f"<p class=\"dim\">{e(device.get('description', ''))}; "
                     f"{e(provenance_text(device.get('provenance'), '?'))}, {e(device.get('timestamp', ''))}; "
                     f"file {e(device.get('file', ''))}</p>")
        rows = []
        for task, entry in task_entries(manifest).items():
            profile = (entry.get("profile") or {}).get(slug)
            if not isinstance(profile, Mapping):
                continue
            for runtime, result in (profile.get("runtimes") or {}).items():
                rows.append(_row(task, runtime, result, shipped=entry.get("runtime") == runtime,
                                 fastest=profile.get("fastest_passed") == runtime))
        head = "".join(f"<th>{h}</th>" for h in _HEADERS)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>\n{''.join(rows)}\n</tbody></table>")
    return "\n".join(parts)


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Each device's profile with its results per task."""
    return {"profiles": {slug: {**device, "tasks": {
        name: entry["profile"][slug] for name, entry in task_entries(manifest).items()
        if slug in (entry.get("profile") or {})}} for slug, device in manifest["profiles"].items()}}


def compare_figures(task: TaskInput) -> Figures:
    return {}


def _row(task: str, runtime: str, result: Mapping[str, Any], shipped: bool, fastest: bool) -> str:
    if "median_ms" not in result:
        skipped = e(result.get("skipped") or "not measured")
        return f"<tr><td>{e(task)}</td><td>{e(runtime)}</td><td colspan=\"6\" class=\"dim\">{skipped}</td></tr>"
    median, p90 = float(result["median_ms"]), float(result["p90_ms"])
    spread = p90 / median if median > 0 else float("nan")
    flag = " class=\"fail\" title=\"p90 more than twice the median: a noisy measurement\"" if spread > 2 else ""
    check = {True: "<span class=\"ok\">passed</span>", False: "<span class=\"fail\">FAILED</span>"}.get(
        result.get("check_passed"), "-")
    if result.get("max_abs_diff") is not None:
        check += f" (max |diff| {float(result['max_abs_diff']):.3g})"
    chosen = "shipped" if shipped else "fastest passing" if fastest else ""
    return (f"<tr><td>{e(task)}</td><td>{e(runtime)}</td><td class=\"n\">{median:.3f} ms</td>"
            f"<td class=\"n\"{flag}>{spread:.2f}</td><td class=\"n\">{int(result.get('runs', 0))}</td><td>{check}</td>"
            f"<td>{e(provenance_text(result.get('provenance'), '?'))}</td><td>{chosen}</td></tr>")
