"""The tasks table: per task (and the all-task graph) its cost, the export's error against PyTorch, both latencies
with their provenance, the speed-up and the metrics. Every latency cell cites a numbered note (see `latency_notes`;
the provenance section lists them), because a simulated or estimated figure read as a measurement misleads a hardware
decision."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.manifest import provenance_kind, provenance_text
from edgemtl.report.fmt import (DASH, e, human_bytes, human_count, human_error, human_ms, number_cell, plain_text,
                                table)
from edgemtl.report.plots import ALL_TASKS_LABEL, RUNTIME_LABELS
from edgemtl.report.read import all_tasks_entry, number, pick, section, task_entries
from edgemtl.report.sections import Figures, TaskInput

COUNTED = "static (counted from the traced graph)"
LIVENESS = "estimated (liveness of the traced graph's tensors, not a measured allocation)"
LATENCY_KEYS = ("median", "p90", "provenance", "runtime", "device", "threads", "runs", "batch")
_NOTE_KEYS = LATENCY_KEYS[2:]


class LatencyNotes:
    """Numbered notes, one per distinct latency context (provenance, runtime, device, threads, runs, batch)."""

    def __init__(self) -> None:
        self.records: list[tuple[tuple[str, str], ...]] = []

    def cite(self, latency: Mapping[str, Any]) -> int:
        record = tuple((key, provenance_text(latency.get(key)) if key == "provenance" else plain_text(latency.get(key)))
                       for key in _NOTE_KEYS)
        if record not in self.records:
            self.records.append(record)
        return self.records.index(record) + 1

    def describe(self, number_: int) -> str:
        fields = dict(self.records[number_ - 1])
        parts = [fields["provenance"] or "unlabelled", fields["runtime"] or "unnamed runtime",
                 fields["device"] or "unnamed device"]
        for key, unit in (("threads", "threads"), ("runs", "runs"), ("batch", "batch")):
            if fields[key]:
                parts.append(f"{unit} {fields[key]}" if key == "batch" else f"{fields[key]} {unit}")
        return " · ".join(parts)


def latency_notes(manifest: Mapping[str, Any]) -> LatencyNotes:
    """The notes of the tasks table, numbered in the order its cells cite them."""
    notes = LatencyNotes()
    for _, entry, _ in _rows(manifest):
        for key in ("latency_ms", "latency_ms_pytorch"):
            latency = entry.get(key)
            if isinstance(latency, Mapping) and number(latency.get("median")) is not None:
                notes.cite(latency)
    return notes


def applies(manifest: Mapping[str, Any]) -> bool:
    return True


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    rows = _rows(manifest)
    if not rows:
        return "<h2>Tasks</h2>\n<p class=\"dim\">The manifest lists no tasks.</p>"
    notes = latency_notes(manifest)
    headers = ("Task", "Kind", "Params", "MACs", "Shared", "Peak activation", "Max abs error vs PyTorch",
               f"{RUNTIME_LABELS['latency_ms']} latency", f"{RUNTIME_LABELS['latency_ms_pytorch']} latency",
               "Speed-up", "Metrics")
    body = []
    for name, entry, is_reference in rows:
        cells = (
            f"<td>{e(name)}</td>",
            f"<td>{e(entry.get('kind') or DASH)}</td>",
            number_cell(entry.get("params"), human_count, entry.get("cost_provenance") or COUNTED),
            number_cell(entry.get("macs"), human_count, entry.get("cost_provenance") or COUNTED),
            number_cell(_shared_fraction(entry), lambda v: f"{v:.0%}"),
            number_cell(entry.get("peak_activation_bytes"), human_bytes,
                        entry.get("activation_provenance") or LIVENESS),
            _error_cell(entry),
            _latency_cell(entry.get("latency_ms"), notes),
            _latency_cell(entry.get("latency_ms_pytorch"), notes),
            number_cell(_speedup(entry), lambda v: f"{v:.2g}×" if v < 10 else f"{v:.0f}×",
                        warning=plain_text(entry.get("speedup_vs_pytorch_warning")) or None),
            f"<td>{_metrics(entry)}</td>",
        )
        row_class = ' class="ref"' if is_reference else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return table("Tasks", headers, body)


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {"tasks": {name: _task_summary(entry) for name, entry in task_entries(manifest).items()}}
    reference = all_tasks_entry(manifest)
    if reference is not None:
        found["all_tasks"] = _task_summary(reference)
    return found


def compare_figures(task: TaskInput) -> Figures:
    return {}


def _rows(manifest: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], bool]]:
    """(label, entry, is the all-task graph) per table row, tasks first."""
    rows = [(name, entry, False) for name, entry in task_entries(manifest).items()]
    reference = all_tasks_entry(manifest)
    if reference is not None:
        rows.append((f"{ALL_TASKS_LABEL} (one graph)", reference, True))
    return rows


def _latency_cell(latency: Any, notes: LatencyNotes) -> str:
    median = number(latency.get("median")) if isinstance(latency, Mapping) else None
    if median is None:
        return f"<td class=\"n\">{DASH}</td>"
    p90 = number(latency.get("p90"))
    note = notes.cite(latency)
    kind = provenance_kind(latency.get("provenance"))
    spread = f" <span class=\"dim\">p90 {human_ms(p90)}</span>" if p90 is not None else ""
    warnings = [str(w) for w in latency.get("warnings", []) if w] if isinstance(latency.get("warnings"), list) else []
    flag = (f" <span class=\"fail\" title=\"{e('; '.join(warnings))}\">⚠ {e(warnings[0].split(':')[0])}</span>"
            if warnings else "")
    return (f"<td class=\"n\">{human_ms(median)}{spread} <span class=\"prov prov-{e(kind)}\" "
            f"title=\"{e(notes.describe(note))}\">{e(kind)} [{note}]</span>{flag}</td>")


def _error_cell(entry: Mapping[str, Any]) -> str:
    verification = section(entry, "verification")
    error = _max_abs_error(entry)
    if error is None:
        return f"<td class=\"n\">{DASH}</td>"
    passed = verification.get("passed")
    mark = ""
    if isinstance(passed, bool):
        detail = ", ".join(f"{label} {plain_text(verification[key])}"
                           for key, label in (("tolerance", "tolerance"), ("samples", "samples"), ("data", "data"))
                           if verification.get(key) is not None)
        mark = (f" <span class=\"{'ok' if passed else 'fail'}\" title=\"{e(detail)}\">"
                f"{'✓' if passed else '✗ over tolerance'}</span>")
    return f"<td class=\"n\">{human_error(error)}{mark}</td>"


def _metrics(entry: Mapping[str, Any]) -> str:
    metrics = entry.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        return DASH
    primary, higher = entry.get("primary_metric"), entry.get("higher_is_better")
    parts = []
    for name, value in metrics.items():
        shown = f"{e(name)} {e(f'{v:.3g}' if (v := number(value)) is not None else plain_text(value))}"
        if name == primary:
            arrow = " ↑" if higher is True else " ↓" if higher is False else ""
            shown = f"<strong title=\"primary metric\">{shown}{arrow}</strong>"
        parts.append(shown)
    return "<br>".join(parts)


def _task_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    found = {
        "kind": entry.get("kind"),
        "params": entry.get("params"),
        "macs": entry.get("macs"),
        "shared_fraction": _shared_fraction(entry),
        "peak_activation_bytes": entry.get("peak_activation_bytes"),
        "max_abs_error": _max_abs_error(entry),
        "latency_ms": pick(entry.get("latency_ms"), LATENCY_KEYS),
        "latency_ms_pytorch": pick(entry.get("latency_ms_pytorch"), LATENCY_KEYS),
        "speedup_vs_pytorch": _speedup(entry),
        "metrics": entry.get("metrics") if isinstance(entry.get("metrics"), Mapping) else None,
        "primary_metric": entry.get("primary_metric"),
        "higher_is_better": entry.get("higher_is_better"),
        **_int8_summary(entry),
    }
    return {key: value for key, value in found.items() if value not in (None, {})}


def _int8_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The int8 model's headline metric (float and int8) or why there is none (the gap9 and arm64 flows write one)."""
    int8 = section(entry, "int8")
    name = int8.get("metric")
    if isinstance(name, str):
        return {"int8": {"metric": name, "float": number(section(int8, "metric_float").get(name)),
                         "int8": number(section(int8, "metric_int8").get(name)),
                         "relative_change": number(int8.get("relative_change"))}}
    if int8.get("ok") is False:
        return {"int8": {"ok": False, "error": plain_text(int8.get("error"))}}
    return {}


def _max_abs_error(entry: Mapping[str, Any]) -> float | None:
    error = number(entry.get("max_abs_error"))
    return error if error is not None else number(section(entry, "verification").get("max_abs_error"))


def _shared_fraction(entry: Mapping[str, Any]) -> float | None:
    fraction = number(entry.get("shared_fraction"))
    if fraction is not None:
        return fraction
    shared, params = number(entry.get("shared_params")), number(entry.get("params"))
    return shared / params if shared is not None and params else None


def _speedup(entry: Mapping[str, Any]) -> float | None:
    """The manifest's speed-up, else the ratio of medians when both are of one kind (never across kinds)."""
    given = number(entry.get("speedup_vs_pytorch"))
    if given is not None:
        return given
    ort, torch = entry.get("latency_ms"), entry.get("latency_ms_pytorch")
    if not (isinstance(ort, Mapping) and isinstance(torch, Mapping)):
        return None
    if provenance_kind(ort.get("provenance")) != provenance_kind(torch.get("provenance")):
        return None
    fast, slow = number(ort.get("median")), number(torch.get("median"))
    return slow / fast if fast and slow is not None else None
