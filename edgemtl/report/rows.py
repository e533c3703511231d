"""Flat rows of a bundle's manifest and of a comparison document (report/compare.py): one dict of plain values per
row, every number beside the kind of number it is, for notebooks (notebooks/reading_a_profile.ipynb) and scripts
that tabulate or plot a bundle without walking its JSON. `html_table` renders rows for Jupyter.

Nothing here computes a number: each value is read as the manifest or the comparison holds it (tolerantly, through
report/read.py), so a notebook shows exactly what `edgemtl report` shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgemtl.manifest import provenance_kind, provenance_of, provenance_text
from edgemtl.report.figures import text
from edgemtl.report.fmt import DASH, e, human_bytes, human_count, human_ms
from edgemtl.report.read import all_tasks_entry, number, section, task_entries
from edgemtl.report.sections.tasks import COUNTED, LIVENESS

Row = dict[str, Any]
ALL_TASKS = "all tasks (one graph)"


def task_rows(manifest: Mapping[str, Any]) -> list[Row]:
    """Per task of one bundle (the all-task graph last): its cost as the compile's analysis counted it (params, MACs:
    static; peak activation memory: estimated) and the compile's ONNX Runtime latency with its provenance (None where
    the flow measures none, e.g. arm64: `edgemtl profile` times those, see `latency_rows`)."""
    entries = list(task_entries(manifest).items())
    if (reference := all_tasks_entry(manifest)) is not None:
        entries.append((ALL_TASKS, reference))
    rows = []
    for name, entry in entries:
        timing = section(entry, "latency_ms")
        rows.append({
            "task": name, "kind": entry.get("kind"), "params": number(entry.get("params")),
            "macs": number(entry.get("macs")), "shared_fraction": number(entry.get("shared_fraction")),
            "cost_provenance": provenance_text(entry.get("cost_provenance"), COUNTED),
            "peak_activation_bytes": number(entry.get("peak_activation_bytes")),
            "activation_provenance": provenance_text(entry.get("activation_provenance"), LIVENESS),
            "latency_ms": number(timing.get("median")), "latency_p90_ms": number(timing.get("p90")),
            "latency_runtime": text(timing.get("runtime")) or None,
            "latency_kind": provenance_kind(timing.get("provenance")) if timing else None,
            "latency_provenance": provenance_text(timing.get("provenance")) or None,
        })
    return rows


def bundle_rows(document: Mapping[str, Any]) -> list[Row]:
    """Per bundle of a comparison: its column label, target, flow, model checkpoint and where it was compiled."""
    rows = []
    for bundle in document.get("bundles", []):
        model, host = section(bundle, "model"), section(bundle, "compiled_on")
        rows.append({"bundle": bundle.get("label"), "target": bundle.get("target"), "flow": bundle.get("flow"),
                     "model": model.get("arch"), "model_sha256": text(model.get("sha256"))[:12] or None,
                     "compiled_on": text(host.get("cpu")) or None, "created": bundle.get("created"),
                     "profiled_on": ", ".join(sorted(section(bundle, "profiles"))) or None, "path": bundle.get("path")})
    return rows


def comparison_rows(document: Mapping[str, Any]) -> list[Row]:
    """Per task and bundle, the comparison's headline figures: the shipped runtime, the metric as deployed, the
    headline latency (the shipped runtime's best-founded figure) and the model size, each with its provenance."""
    rows = []
    for task, by_bundle in _tasks(document):
        for label, figures in by_bundle.items():
            metric, runtime = section(figures, "metric"), section(figures, "runtime")
            deployed, headline, size = (section(metric, "deployed") or section(metric, "float"),
                                        section(figures, "latency"), section(figures, "model_size"))
            rows.append({
                "task": task, "bundle": label, "runtime": runtime.get("value"), "chosen_by": runtime.get("chosen_by"),
                "metric": metric.get("name"), "metric_value": number(deployed.get("value")),
                "metric_precision": metric.get("deployed_precision") if section(metric, "deployed") else "float",
                "latency_ms": number(headline.get("median")), "latency_p90_ms": number(headline.get("p90")),
                "latency_runtime": headline.get("runtime"),
                "latency_kind": provenance_kind(headline.get("provenance")) if headline else None,
                "on_target": headline.get("on_target") if headline else None,
                "latency_provenance": provenance_text(headline.get("provenance")) or None,
                "model_size_bytes": number(size.get("value")),
            })
    return rows


def latency_rows(document: Mapping[str, Any]) -> list[Row]:
    """Every latency of every task and bundle in a comparison (the compile's, PyTorch's, each `edgemtl profile`
    runtime's, a target's estimates), with its kind, device and whether it is the bundle's headline figure."""
    rows = []
    for task, by_bundle in _tasks(document):
        for label, figures in by_bundle.items():
            headline = section(figures, "latency")
            for item in figures.get("latencies", []) if isinstance(figures.get("latencies"), list) else []:
                found = provenance_of(item.get("provenance"))
                rows.append({"task": task, "bundle": label, "runtime": item.get("runtime"),
                             "median_ms": number(item.get("median")), "p90_ms": number(item.get("p90")),
                             "kind": provenance_kind(item.get("provenance")), "device": found.device if found else None,
                             "shipped": bool(item.get("shipped")), "on_target": bool(item.get("on_target")),
                             "headline": item == headline, "provenance": provenance_text(item.get("provenance"))})
    return rows


def speedup_rows(document: Mapping[str, Any]) -> list[Row]:
    """The comparison's speed-ups (only ever two measured medians on one device) and, as rows with no ratio, the
    pairs it refused to divide and why."""
    rows = []
    for item in document.get("speedups", []):
        fast, slow = section(item, "fast"), section(item, "slow")
        rows.append({"task": item.get("task"), "device": item.get("device"),
                     "fast": f"{fast.get('bundle')} · {fast.get('runtime')}",
                     "slow": f"{slow.get('bundle')} · {slow.get('runtime')}", "ratio": number(item.get("ratio")),
                     "why": item.get("basis")})
    for item in document.get("not_compared", []):
        bundles = item.get("bundles") if isinstance(item.get("bundles"), list) else []
        rows.append({"task": item.get("task"), "device": None, "fast": " vs ".join(map(str, bundles)), "slow": None,
                     "ratio": None, "why": f"not compared: {item.get('why')}"})
    return rows


def layer_rows(document: Mapping[str, Any]) -> list[Row]:
    """The per-layer breakdowns of a comparison (the most expensive layers per task and bundle: ONNX Runtime's
    profiler on the making machine, TVM's, a target's estimates), one row per layer with its rank by cost; a task and
    bundle without per-layer data gives one row with `layer` None and the reason in `none`."""
    rows = []
    for task, by_bundle in _tasks(document):
        for label, figures in by_bundle.items():
            layers = section(figures, "layers")
            if layers.get("none") or not isinstance(layers.get("layers"), list):
                rows.append({"task": task, "bundle": label, "layer": None, "none": text(layers.get("none")) or DASH})
                continue
            common = {"task": task, "bundle": label, "source": layers.get("source"), "graph": layers.get("graph"),
                      "kind": provenance_kind(layers.get("provenance")),
                      "provenance": provenance_text(layers.get("provenance"))}
            for rank, layer in enumerate((item for item in layers["layers"] if isinstance(item, Mapping)), 1):
                rows.append({**common, "rank": rank, "layer": layer.get("name"), "op": layer.get("op"),
                             "ms": number(layer.get("ms")), "cycles": number(layer.get("cycles")),
                             "share": number(layer.get("share"))})
    return rows


def op_rows(document: Mapping[str, Any]) -> list[Row]:
    """Time per operator type of each task and bundle whose per-layer data has it (ONNX Runtime's profiler): every
    node counted, not only the top layers."""
    rows = []
    for task, by_bundle in _tasks(document):
        for label, figures in by_bundle.items():
            for op, value in section(section(figures, "layers"), "by_op").items():
                if isinstance(value, Mapping):
                    rows.append({"task": task, "bundle": label, "op": op, "ms": number(value.get("ms")),
                                 "share": number(value.get("share"))})
    return rows


def width_rows(manifest: Mapping[str, Any]) -> list[Row]:
    """Per encoder stage and task decoder of a bundle compiled at one width configuration (`compile --widths`, the
    manifest's `passes.slice_widths`): its multiplier and its output channels at full width and as kept (None for a
    decoder with no hidden layer of its own); [] for a bundle compiled at full width."""
    record = section(section(manifest, "passes"), "slice_widths")
    widths, channels = section(record, "widths"), section(record, "part_channels")
    rows = []
    for kind, part in (("encoder", "encoder stage"), ("decoders", "decoder")):
        for name, multiplier in section(widths, kind).items():
            pair = section(channels, kind).get(name)
            full, kept = (number(pair[0]), number(pair[1])) if isinstance(pair, list) and len(pair) == 2 else (None, None)
            rows.append({"part": part, "name": name, "multiplier": number(multiplier),
                         "channels_full": full or None, "channels_kept": kept if full else None})
    return rows


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """`rows` as one HTML table (escaped), the columns in `columns` order (default: every key, first seen first);
    numbers in human units by their column's name (`*_bytes`, `*_ms`, params / MACs / cycles, shares and ratios)."""
    names = list(columns) if columns is not None else list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{e(name)}</th>" for name in names)
    body = "".join("<tr>" + "".join(_cell(name, row.get(name)) for name in names) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(column: str, value: Any) -> str:
    parsed = number(value)
    if parsed is None:
        return f"<td>{e(DASH if value is None else value)}</td>"
    if column.endswith("_bytes"):
        shown = human_bytes(parsed)
    elif column.endswith("_ms") or column == "ms":
        shown = human_ms(parsed)
    elif column in ("params", "macs", "cycles"):
        shown = human_count(parsed)
    elif column in ("share", "shared_fraction"):
        shown = f"{parsed:.0%}"
    elif column == "ratio":
        shown = f"{parsed:.2f}×"
    else:
        shown = f"{parsed:.4g}"
    return f"<td style=\"text-align:right\">{e(shown)}</td>"


def _tasks(document: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(task, by_bundle) for task, by_bundle in section(document, "tasks").items()
            if isinstance(by_bundle, Mapping)]
