"""The report's figures, drawn from a bundle manifest and returned as PNG bytes.

Figures are built on `matplotlib.figure.Figure` with an explicit Agg canvas, never through pyplot, so
drawing a report neither switches the process-wide backend nor leaves figures alive in a long-lived
process. Each figure function returns None when the manifest lacks what it needs: manifests from partial
compiles, older versions or newer schemas with extra sections must still get a report.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter

from edgemtl.manifest import provenance_text
from edgemtl.report.read import all_tasks_entry, number, task_entries

ALL_TASKS_LABEL = "all tasks"
RUNTIME_LABELS = {"latency_ms": "ONNX Runtime", "latency_ms_pytorch": "PyTorch eager"}

_DPI = 110
_HEIGHT = 3.8
_TASK_COLOR = "#4C72B0"
_SHARED_COLOR = "#25406B"
_REFERENCE_COLOR = "#A0A0A0"
_SERIES_COLORS = {"latency_ms": "#4C72B0", "latency_ms_pytorch": "#DD8452"}
_LARGEST_TENSOR_COLOR = "#55A868"


def shared_params(entry: Mapping[str, Any]) -> float | None:
    """Parameters a task shares with the other tasks, from `shared_params` or `shared_fraction`."""
    shared = number(entry.get("shared_params"))
    if shared is not None:
        return shared
    fraction, params = number(entry.get("shared_fraction")), number(entry.get("params"))
    return fraction * params if fraction is not None and params is not None else None


def latency_label(latency: Mapping[str, Any]) -> str:
    """'measured on <device>, N runs': how a latency number came about, in the words the plots use."""
    provenance = provenance_text(latency.get("provenance"), "unlabelled")
    text = f"{provenance} on {latency.get('device') or 'an unnamed device'}"
    runs = number(latency.get("runs"))
    return f"{text}, {runs:.0f} runs" if runs is not None else text


def cost_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """MACs and parameters per task next to the all-tasks graph, with each task's shared part marked.

    The dashed 'sum of tasks' mark on the all-tasks bar shows what running each task separately would
    cost, so the saving from the shared backbone is visible at a glance.
    """
    rows = _rows(manifest)
    if not any(number(entry.get(key)) is not None for _, entry, _ in rows for key in ("macs", "params")):
        return None
    fig = _figure(len(rows), panels=2)
    macs_ax, params_ax = fig.subplots(1, 2)
    for ax, key, title in ((macs_ax, "macs", "MACs per inference"), (params_ax, "params", "Parameters")):
        _cost_bars(ax, rows, key)
        ax.set_title(title, fontsize=10)
    _mark_shared(params_ax, rows)
    handles = [
        Patch(facecolor=_TASK_COLOR, label="task path"),
        Patch(facecolor=_SHARED_COLOR, label="shared with other tasks"),
        Patch(facecolor=_REFERENCE_COLOR, hatch="//", label="all tasks, one graph"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle("Compute and size per task", fontsize=11)
    return _png(fig)


def latency_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """ONNX Runtime against PyTorch eager per task: median bars with a whisker up to p90."""
    rows = _rows(manifest)
    series = [key for key in RUNTIME_LABELS if any(_median(entry, key) is not None for _, entry, _ in rows)]
    if not series:
        return None
    fig = _figure(len(rows), panels=1)
    ax = fig.subplots()
    width = 0.8 / len(series)
    for index, key in enumerate(series):
        xs, medians, upper = [], [], []
        for x, (_, entry, _) in enumerate(rows):
            median = _median(entry, key)
            if median is None:
                continue
            p90 = number(entry[key].get("p90"))
            xs.append(x + (index - (len(series) - 1) / 2) * width)
            medians.append(median)
            upper.append(max(p90 - median, 0.0) if p90 is not None else math.nan)
        bars = ax.bar(xs, medians, width * 0.95, color=_SERIES_COLORS[key], label=RUNTIME_LABELS[key])
        ax.bar_label(bars, labels=[f"{m:.3g}" for m in medians], fontsize=7, padding=2)
        whiskers = [(x, m, u) for x, m, u in zip(xs, medians, upper) if not math.isnan(u)]
        if whiskers:
            wx, wm, wu = zip(*whiskers)
            ax.errorbar(wx, wm, yerr=[[0.0] * len(wu), list(wu)], fmt="none", ecolor="black", elinewidth=1, capsize=3)
    _task_axis(ax, rows)
    ax.set_yscale("log")  # runtimes of one model differ by orders of magnitude; a linear axis hides the fast ones
    ax.set_ylabel("ms (median, whisker to p90; log scale)")
    ax.set_title(_plain(_provenance_caption(rows, series)), fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Latency per inference", fontsize=11)
    return _png(fig)


def memory_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """Peak activation memory per task in KiB (and the largest single tensor, when the manifest has it)."""
    rows = _rows(manifest)
    keys = [
        key
        for key in ("peak_activation_bytes", "largest_tensor_bytes")
        if any(number(entry.get(key)) is not None for _, entry, _ in rows)
    ]
    if "peak_activation_bytes" not in keys:
        return None
    fig = _figure(len(rows), panels=1)
    ax = fig.subplots()
    width = 0.8 / len(keys)
    for index, key in enumerate(keys):
        offset = (index - (len(keys) - 1) / 2) * width
        bars = [(x + offset, value / 1024, reference) for x, (_, entry, reference) in enumerate(rows)
                if (value := number(entry.get(key))) is not None]
        xs, kib, references = zip(*bars)
        if key == "peak_activation_bytes":
            colors = [_REFERENCE_COLOR if ref else _TASK_COLOR for ref in references]
            hatches = ["//" if ref else "" for ref in references]
            label = "peak activation memory"
        else:
            colors, hatches, label = [_LARGEST_TENSOR_COLOR] * len(xs), [""] * len(xs), "largest single tensor"
        container = ax.bar(xs, kib, width * 0.95, color=colors, hatch=hatches, label=label)
        ax.bar_label(container, labels=[f"{value:,.1f}" for value in kib], fontsize=7, padding=2)
    _task_axis(ax, rows)
    ax.set_ylabel("KiB")
    ax.margins(y=0.15)
    if len(keys) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Peak activation memory per inference", fontsize=11)
    return _png(fig)


def _rows(manifest: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], bool]]:
    """(label, section, is the all-tasks reference) for every bar group, tasks first."""
    rows = [(name, entry, False) for name, entry in task_entries(manifest).items()]
    reference = all_tasks_entry(manifest)
    if reference is not None:
        rows.append((ALL_TASKS_LABEL, reference, True))
    return rows


def _median(entry: Mapping[str, Any], key: str) -> float | None:
    latency = entry.get(key)
    return number(latency.get("median")) if isinstance(latency, Mapping) else None


def _cost_bars(ax: Axes, rows: list[tuple[str, Mapping[str, Any], bool]], key: str) -> None:
    """One bar per task plus the hatched reference bar, with the per-task sum marked on the reference."""
    for x, (_, entry, reference) in enumerate(rows):
        value = number(entry.get(key))
        if value is not None:
            ax.bar(x, value, 0.7, color=_REFERENCE_COLOR if reference else _TASK_COLOR, hatch="//" if reference else "")
    task_values = [number(entry.get(key)) for _, entry, reference in rows if not reference]
    if rows and rows[-1][2] and task_values and None not in task_values:
        x = len(rows) - 1
        ax.hlines(sum(task_values), x - 0.45, x + 0.45, colors="black", linestyles="dashed", linewidth=1)
        ax.annotate("sum of tasks", (x, sum(task_values)), xytext=(0, 3), textcoords="offset points",
                    ha="center", fontsize=7)
    ax.yaxis.set_major_formatter(EngFormatter(sep=" "))
    ax.margins(y=0.15)
    _task_axis(ax, rows)


def _mark_shared(ax: Axes, rows: list[tuple[str, Mapping[str, Any], bool]]) -> None:
    """Overlay each task's shared parameters on its bar and write the shared fraction above it."""
    for x, (_, entry, reference) in enumerate(rows):
        params, shared = number(entry.get("params")), shared_params(entry)
        if reference or params is None or shared is None or params <= 0:
            continue
        ax.bar(x, min(shared, params), 0.7, color=_SHARED_COLOR)
        ax.annotate(f"{min(shared / params, 1.0):.0%} shared", (x, params), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=7)


def _provenance_caption(rows: list[tuple[str, Mapping[str, Any], bool]], series: list[str]) -> str:
    """One line per runtime saying where and how its numbers came about; one line if they all agree."""
    labels: dict[str, list[str]] = {}
    for key in series:
        for _, entry, _ in rows:
            latency = entry.get(key)
            if isinstance(latency, Mapping) and number(latency.get("median")) is not None:
                found = labels.setdefault(key, [])
                if (label := latency_label(latency)) not in found:
                    found.append(label)
    distinct = {label for found in labels.values() for label in found}
    if len(distinct) == 1:
        lines = [distinct.pop()]
    else:
        lines = [f"{RUNTIME_LABELS[key]}: {'; '.join(found)}" for key, found in labels.items()]
    return "\n".join(textwrap.shorten(line, 130, placeholder="…") for line in lines)


def _task_axis(ax: Axes, rows: list[tuple[str, Mapping[str, Any], bool]]) -> None:
    """Task names under the bar groups, slanted when they would collide."""
    labels = [_plain(textwrap.shorten(label, 24, placeholder="…")) for label, _, _ in rows]
    ax.set_xticks(range(len(rows)), labels)
    if len(rows) > 4 or any(len(label) > 10 for label in labels):
        ax.tick_params(axis="x", labelrotation=25)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_axisbelow(True)
    ax.grid(axis="y", linewidth=0.5, alpha=0.5)


def _plain(text: str) -> str:
    """Manifest text shown literally: a '$' must not switch matplotlib into mathtext."""
    return str(text).replace("$", r"\$")


def _figure(groups: int, panels: int) -> Figure:
    width = min(14.0, max(6.4, 1.6 + 0.9 * groups * panels))
    fig = Figure(figsize=(width, _HEIGHT + (0.3 if panels > 1 else 0.0)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def panel_grid(panels: int, per_row: int, panel_inches: tuple[float, float], margin_inches: float,
               max_width: float) -> tuple[Figure, list[Axes]]:
    """One small axes per panel, `per_row` to a row; the grid's unused axes hidden (a task per panel keeps its own
    scale and reference line)."""
    columns = min(panels, per_row)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(min(max_width, margin_inches + panel_inches[0] * columns), 0.9 + panel_inches[1] * rows),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()
