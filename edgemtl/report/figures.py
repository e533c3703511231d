"""Builders for the comparison's figures, shared by report/compare.py and the sections' `compare_figures` hooks.

Every figure is edgemtl.manifest's shape (`figure`: value, unit, provenance object), every latency a median with its
runtime and provenance; where a bundle gives a provenance in either shape it is read through `provenance_of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgemtl.manifest import ProvenanceKind, figure, provenance_of
from edgemtl.report.read import number, section

TOP_LAYERS = 10  # per-layer tables list the most expensive layers only


def text(value: Any) -> str:
    """A manifest value (never a provenance: see `kind_of`) as text, "" for None."""
    return "" if value is None else str(value)


def kind_of(raw: Any) -> ProvenanceKind:
    """The kind of a provenance in either shape; a latency the bundle did not label reads as "estimated", the most
    careful reading (as edgemtl.manifest reads an unknown word)."""
    found = provenance_of(raw, default="estimated")
    return found.kind if found else "estimated"


def held_out(manifest: Mapping[str, Any]) -> str:
    """The data every metric of the bundle was evaluated on, as the manifest names it."""
    return text(section(manifest, "model").get("verification_data")) or "the bundle's evaluation data"


def metric_name(entry: Mapping[str, Any]) -> tuple[str | None, bool | None]:
    """The task's primary metric and its direction (the int8 record's, where it names one)."""
    int8 = section(entry, "int8")
    name = entry.get("primary_metric") if isinstance(entry.get("primary_metric"), str) else None
    if isinstance(int8.get("metric"), str):
        name = int8["metric"]
    higher = entry.get("higher_is_better")
    if isinstance(int8.get("higher_is_better"), bool):
        higher = int8["higher_is_better"]
    return name, higher if isinstance(higher, bool) else None


def metric_figure(value: Any, runtime: str, data: str, source: str) -> dict[str, Any] | None:
    """A metric value evaluated by `runtime` on `data`, or None when the bundle has no number."""
    parsed = number(value)
    return None if parsed is None else figure(parsed, "", "evaluated", source=source, detail=data, device=runtime)


def metric(name: str | None, higher: bool | None, float_value: dict[str, Any] | None,
           deployed: dict[str, Any] | None, precision: str) -> dict[str, Any] | None:
    """The primary metric in float and in the deployed precision, with the relative change between them."""
    if name is None or (float_value is None and deployed is None):
        return None
    result: dict[str, Any] = {"name": name, "higher_is_better": higher, "float": float_value, "deployed": deployed,
                              "deployed_precision": precision}
    if float_value and deployed and float_value["value"]:
        result["relative_change"] = (deployed["value"] - float_value["value"]) / abs(float_value["value"])
    return result


def latency(median: float, p90: float | None, runtime: str, provenance: dict[str, Any], on_target: bool = False,
            **extra: Any) -> dict[str, Any]:
    """One latency of a task; `shipped` (whether it is the shipped runtime's) is set by the comparison."""
    return {"median": median, "p90": p90, "unit": "ms", "runtime": runtime, "shipped": False, "on_target": on_target,
            **{key: value for key, value in extra.items() if value is not None}, "provenance": provenance}


def compile_arch(manifest: Mapping[str, Any]) -> str:
    """The compiling machine's CPU architecture from the manifest's host platform ("unknown" when it does not say)."""
    platform_text = text(section(manifest, "host").get("platform"))
    for arch in ("x86_64", "aarch64", "arm64"):
        if arch in platform_text:
            return "aarch64" if arch == "arm64" else arch
    return "unknown"


def runs_text(timing: Mapping[str, Any]) -> str:
    """'median of 100 runs, 1 thread, batch 1': how a median came about."""
    runs, threads, batch = (number(timing.get(k)) for k in ("runs", "threads", "batch"))
    parts = [f"median of {runs:.0f} runs" if runs is not None else "median (runs not recorded)"]
    if threads is not None:
        parts.append(f"{threads:.0f} thread{'s' if threads != 1 else ''}")
    if batch is not None:
        parts.append(f"batch {batch:.0f}")
    return ", ".join(parts)
