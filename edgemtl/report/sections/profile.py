"""The "Profile" section: what `edgemtl profile` measured for this bundle, per device, task and runtime.

Written into the bundle's report by `edgemtl profile` itself (the report is regenerated after the manifest), so the
page a hardware team opens shows the timings, their spread, the output check and which runtime ships.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any


def applies(manifest: Mapping[str, Any]) -> bool:
    return bool(manifest.get("profiles"))


def render(manifest: Mapping[str, Any]) -> str:
    parts = ["<h2>Profile</h2>"]
    for slug, device in manifest["profiles"].items():
        parts.append(f"<h3>{escape(str(device.get('device', slug)))}</h3>")
        parts.append(f"<p class=\"dim\">{escape(str(device.get('description', '')))}; "
                     f"{escape(str(device.get('provenance', '?')))}, {escape(str(device.get('timestamp', '')))}; "
                     f"file {escape(str(device.get('file', '')))}</p>")
        rows = []
        for task, entry in manifest.get("tasks", {}).items():
            profile = (entry.get("profile") or {}).get(slug)
            if not profile:
                continue
            for runtime, result in profile.get("runtimes", {}).items():
                rows.append(_row(task, runtime, result, shipped=entry.get("runtime") == runtime,
                                 fastest=profile.get("fastest_passed") == runtime))
        head = "".join(f"<th>{h}</th>" for h in ("Task", "Runtime", "Median", "p90 / median", "Runs", "Output check",
                                                   "Provenance", "Chosen"))
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>\n{''.join(rows)}\n</tbody></table>")
    return "\n".join(parts)


def _row(task: str, runtime: str, result: Mapping[str, Any], shipped: bool, fastest: bool) -> str:
    if "median_ms" not in result:
        skipped = escape(str(result.get("skipped") or "not measured"))
        return f"<tr><td>{escape(task)}</td><td>{escape(runtime)}</td><td colspan=\"6\" class=\"dim\">{skipped}</td></tr>"
    median, p90 = float(result["median_ms"]), float(result["p90_ms"])
    spread = p90 / median if median > 0 else float("nan")
    flag = " class=\"fail\" title=\"p90 more than twice the median: a noisy measurement\"" if spread > 2 else ""
    check = {True: "<span class=\"ok\">passed</span>", False: "<span class=\"fail\">FAILED</span>"}.get(
        result.get("check_passed"), "-")
    if result.get("max_abs_diff") is not None:
        check += f" (max |diff| {float(result['max_abs_diff']):.3g})"
    chosen = "shipped" if shipped else "fastest passing" if fastest else ""
    return (f"<tr><td>{escape(task)}</td><td>{escape(runtime)}</td><td class=\"n\">{median:.3f} ms</td>"
            f"<td class=\"n\"{flag}>{spread:.2f}</td><td class=\"n\">{int(result.get('runs', 0))}</td><td>{check}</td>"
            f"<td>{escape(str(result.get('provenance', '?')))}</td><td>{chosen}</td></tr>")
