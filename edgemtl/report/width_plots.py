"""Where a compiled width configuration sits on its width search's front, drawn from the manifest's
`passes.slice_widths.front` (docs/widths.md).

One panel per task: the cost the search optimised against the task's metric relative to the widest configuration
(1 = as good as the full model, above = better; for a metric where lower is better, widest / value, as the search
scores it). Evaluated points filled (darker on the Pareto front), predicted points hollow, the best evaluated metric
at each cost as a step line, the budget as a vertical line, the search's chosen point ringed and the compiled one a
star. Like the other report figures it never touches pyplot and returns None when the section is missing or
malformed: the manifest is untrusted JSON.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from edgemtl.report.plots import _plain, _png, panel_grid
from edgemtl.report.read import number, section

_PANELS_PER_ROW = 3
_EVALUATED, _PARETO, _PREDICTED = "#9DB7DB", "#25406B", "#DD8452"
_COMPILED, _CHOSEN, _BUDGET = "#C62828", "#1D1D1F", "#777777"
_COST_LABELS = {"macs": "MACs per image, all tasks", "latency_ms": "latency, all tasks", "memory_kib": "memory"}

Point = tuple[float, dict[str, float], str, bool]   # cost, metrics, source, on its source's Pareto front


def width_front(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    """The manifest's `passes.slice_widths.front`, or {}."""
    return section(section(section(manifest, "passes"), "slice_widths"), "front")


def relative(value: float, reference: float, higher_is_better: bool) -> float | None:
    """A metric relative to the widest configuration's, as the search scores it (1 = as good, above = better)."""
    if higher_is_better:
        return value / reference if reference else None
    return reference / value if value > 0 else None


def width_front_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """Cost against each task's relative metric, one panel per task; None without a usable front."""
    front = width_front(manifest)
    reference = _point(front.get("reference"))
    tasks = {name: entry["higher_is_better"] for name, entry in section(front, "tasks").items()
             if isinstance(entry, Mapping) and isinstance(entry.get("higher_is_better"), bool)
             and reference is not None and name in reference[1]}
    points = [p for raw in front.get("points") or [] if (p := _point(raw)) is not None] \
        if isinstance(front.get("points"), list) else []
    if reference is None or not tasks or not points:
        return None
    fig, axes = panel_grid(len(tasks), _PANELS_PER_ROW, (4.4, 3.2), 1.0, 15.0)
    marks = {"compiled": _point(front.get("compiled")), "chosen": _point(front.get("chosen"))}
    limit = number(front.get("cost_limit"))
    for ax, (task, higher) in zip(axes, tasks.items()):
        _panel(ax, task, higher, points, reference, marks, limit, front)
    fig.legend(handles=_legend(marks, limit), loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    title = f"Width search front for {front.get('target') or 'an unnamed target'}"
    if isinstance(front.get("budget"), str):
        title += f", budget {front['budget']}"
    fig.suptitle(_plain(textwrap.shorten(title, 110, placeholder="…")), fontsize=11)
    return _png(fig)


def _point(raw: Any) -> Point | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("metrics"), Mapping):
        return None
    cost = number(raw.get("cost"))
    metrics = {str(k): v for k, item in raw["metrics"].items() if (v := number(item)) is not None}
    source = raw.get("source") if raw.get("source") in ("evaluated", "predicted") else "evaluated"
    return None if cost is None else (cost, metrics, source, raw.get("pareto") is True)


def _panel(ax: Axes, task: str, higher: bool, points: list[Point], reference: Point,
           marks: dict[str, Point | None], limit: float | None, front: Mapping[str, Any]) -> None:
    ref = reference[1][task]

    def xy(selected: list[Point]) -> tuple[list[float], list[float]]:
        pairs = [(p[0], r) for p in selected if task in p[1] and (r := relative(p[1][task], ref, higher)) is not None]
        return [x for x, _ in pairs], [y for _, y in pairs]

    predicted = [p for p in points if p[2] == "predicted"]
    evaluated = [p for p in points if p[2] == "evaluated"]
    ax.scatter(*xy(predicted), s=16, facecolors="none", edgecolors=_PREDICTED, linewidths=0.8, zorder=2)
    ax.scatter(*xy([p for p in evaluated if not p[3]]), s=20, color=_EVALUATED, zorder=3)
    ax.scatter(*xy([p for p in evaluated if p[3]]), s=24, color=_PARETO, zorder=4)
    xs, ys = xy(sorted(evaluated, key=lambda p: p[0]))
    if xs:   # the best evaluated metric at each cost: this task's own front
        best = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, best, where="post", color=_PARETO, linewidth=1.0, alpha=0.8, zorder=3)
    ax.axhline(1.0, color=_BUDGET, linewidth=0.6, linestyle=":", zorder=1)
    if limit is not None:
        ax.axvline(limit, color=_BUDGET, linewidth=1.0, linestyle="--", zorder=1)
    for name, style in (("chosen", {"s": 110, "facecolors": "none", "edgecolors": _CHOSEN, "linewidths": 1.4}),
                        ("compiled", {"s": 130, "marker": "*", "color": _COMPILED, "edgecolors": "white"})):
        found = marks[name]
        if found is not None:
            ax.scatter(*xy([found]), zorder=6, **style)
    entry = section(section(front, "tasks"), task)
    metric = entry.get("metric") if isinstance(entry.get("metric"), str) else "metric"
    ax.set_title(_plain(textwrap.shorten(f"{task}: {metric} {'↑' if higher else '↓'}", 40, placeholder="…")),
                 fontsize=9)
    unit = front.get("cost_unit") if isinstance(front.get("cost_unit"), str) else ""
    label = _COST_LABELS.get(str(front.get("cost_kind")), "cost")
    ax.set_xlabel(_plain(f"{label} ({unit})" if unit and front.get("cost_kind") != "macs" else label), fontsize=8)
    ax.set_ylabel("relative to the widest", fontsize=8)
    if front.get("cost_kind") == "macs":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(linewidth=0.4, alpha=0.5)


def _legend(marks: dict[str, Point | None], limit: float | None) -> list[Line2D]:
    handles = [Line2D([], [], marker="o", linestyle="", color=_PARETO, label="evaluated, Pareto front"),
               Line2D([], [], marker="o", linestyle="", color=_EVALUATED, label="evaluated"),
               Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=_PREDICTED,
                      label="predicted"),
               Line2D([], [], color=_PARETO, linewidth=1.0, label="best evaluated at each cost")]
    if marks["chosen"] is not None:
        handles.append(Line2D([], [], marker="o", linestyle="", markersize=10, markerfacecolor="none",
                              markeredgecolor=_CHOSEN, label="the search's choice"))
    if marks["compiled"] is not None:
        handles.append(Line2D([], [], marker="*", linestyle="", markersize=11, color=_COMPILED, label="compiled"))
    if limit is not None:
        handles.append(Line2D([], [], color=_BUDGET, linestyle="--", label="budget"))
    return handles
