"""Tolerant reads of a manifest: it is JSON written by other tools and other edgemtl versions, so no key, type or
value is trusted; a missing or malformed part reads as "nothing", never as an exception in a report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def number(value: Any) -> float | None:
    """`value` as a finite float, or None (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def section(container: Any, key: str) -> Mapping[str, Any]:
    """`container[key]` when both are mappings, else {}."""
    value = container.get(key) if isinstance(container, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def pick(section: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The given keys of a mapping that have values, or None when there are none."""
    if not isinstance(section, Mapping):
        return None
    picked = {key: section[key] for key in keys if section.get(key) is not None}
    return picked or None


def strings(value: Any) -> list[str]:
    """The strings of a list (assumptions, hints), else []."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def task_entries(manifest: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The manifest's per-task sections by name, skipping anything that is not a section."""
    raw = manifest.get("tasks")
    if not isinstance(raw, Mapping):
        return {}
    return {str(name): entry for name, entry in raw.items() if isinstance(entry, Mapping)}


def all_tasks_entry(manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The whole-model (every head in one graph) section, the reference every task is compared with."""
    raw = manifest.get("all_tasks")
    return raw if isinstance(raw, Mapping) else None


def target_flow(manifest: Mapping[str, Any]) -> str:
    """The flow the bundle was compiled with ("" when the manifest does not say): what a section's `applies` reads."""
    flow = section(manifest, "target").get("flow")
    return flow if isinstance(flow, str) else ""
