"""What the command line's option strings mean: each parser turns one option's text into typed values, or says in
one line what is wrong with it (EdgemtlError: exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgemtl.errors import EdgemtlError


def parse_holdout(text: str | None) -> tuple[float, float]:
    from edgemtl.data.sources import DEFAULT_HOLDOUT

    if text is None:
        return DEFAULT_HOLDOUT
    try:
        val, test = (float(v) for v in text.split(","))
    except ValueError:
        raise EdgemtlError(f"--holdout takes VAL,TEST fractions such as 0.15,0.15, got {text!r}") from None
    return val, test


def split_tasks(tasks: str | None) -> list[str] | None:
    if tasks is None:
        return None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise EdgemtlError("--tasks is empty: name one or more tasks, comma-separated, or leave it out for all")
    return names


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values parsed as JSON when they can be (numbers, lists, null)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgemtlError(f"--config takes key=value, got {item!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def parse_task_values(items: list[str], option: str, example: str, every_task: bool = False) -> dict[str, float]:
    """`task=value` pairs (with `every_task`, a bare value sets every task, under the key "*")."""
    values: dict[str, float] = {}
    for item in items:
        task, sep, value = item.rpartition("=") if "=" in item else ("*" if every_task else "", "=", item)
        try:
            values[task] = float(value)
        except ValueError:
            sep = ""
        if not sep or not task:
            raise EdgemtlError(f"{option} takes task=value ({example}), got {item!r}")
    return values


def parse_layer_bits(items: list[str]) -> tuple[dict[str, tuple[int, int]], Path | None]:
    """--layer-bits: `LAYER=W,A` pairs for every task, or one FILE.json of per-task bit widths (a bundle's
    layer_bits.json, read against the model later)."""
    files = [Path(item) for item in items if "=" not in item and item.endswith(".json")]
    if files and (len(files) > 1 or len(items) > 1):
        raise EdgemtlError("--layer-bits takes either one FILE.json or LAYER=W,A pairs, not both or several files")
    if files:
        if not files[0].is_file():
            raise EdgemtlError(f"--layer-bits file {files[0]} does not exist")
        return {}, files[0]
    bits = {}
    for item in items:
        layer, _, value = item.partition("=")
        try:
            weight, act = (int(v) for v in value.split(","))
        except ValueError:
            raise EdgemtlError(f"--layer-bits takes LAYER=W,A (e.g. first=8,8 or heads.depth.predict=8,8) or a "
                               f"FILE.json, got {item!r}") from None
        bits[layer] = (weight, act)
    return bits, None
