"""Token-major against expert-major MoE execution, drawn from the manifest's `moe.memory_plan`.

The section is one `MemoryPlan.to_dict()` or a mapping of them by task. Two panels share the task axis:
peak on-chip bytes (with the target's on-chip capacity marked, so what does not fit is visible) and
weight bytes moved per inference (where token-major reloading shows up). A panel switches to a log scale
when its bars span orders of magnitude. Like the other report figures it never touches pyplot and
returns None when the section is missing or malformed: the manifest is untrusted JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter

from edgemtl.report.plots import _figure, _png, _task_axis
from edgemtl.report.read import number

ORDERS = {"token_major": "token-major", "expert_major": "expert-major"}
FIELDS = ("peak_on_chip_bytes", "weight_traffic_bytes")
_ORDER_COLORS = {"token_major": "#DD8452", "expert_major": "#4C72B0"}
_CAPACITY_COLOR = "#C44E52"
_SINGLE_PLAN_LABEL = "model"
_LOG_SPAN = 20  # a log axis once the bars span more than this factor (reloading easily makes 100x)


@dataclass(frozen=True)
class _Plan:
    """What the figure needs of one plan, already checked."""

    values: dict[tuple[str, str], float]  # (order key, field) -> bytes, all positive
    reloads: dict[str, bool]  # order key -> reloads weights per token
    capacity: float | None  # on-chip bytes, None when unbounded or unknown


def moe_memory_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """Peak on-chip bytes and weight traffic per task for both execution orders; None without a usable plan."""
    plans = _plans(manifest)
    if not plans:
        return None
    rows = [(label, {}, False) for label in plans]
    fig = _figure(len(rows), panels=2)
    peak_ax, traffic_ax = fig.subplots(1, 2)
    panels = ((peak_ax, FIELDS[0], "Peak on-chip memory"), (traffic_ax, FIELDS[1], "Weight traffic per inference"))
    for ax, field, title in panels:
        _order_bars(ax, list(plans.values()), field)
        ax.set_title(title, fontsize=10)
        _task_axis(ax, rows)
    _annotate_ratio(peak_ax, list(plans.values()))
    handles = [Patch(facecolor=_ORDER_COLORS[key], label=label) for key, label in ORDERS.items()]
    if any(reloads for plan in plans.values() for reloads in plan.reloads.values()):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="reloads weights per token"))
    if _mark_capacity(peak_ax, list(plans.values())):
        handles.append(Patch(facecolor=_CAPACITY_COLOR, label="on-chip capacity"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle("MoE layers: token-major vs expert-major execution", fontsize=11)
    return _png(fig)


def _plans(manifest: Mapping[str, Any]) -> dict[str, _Plan]:
    """Label -> plan for every usable plan: the section is one plan, or plans keyed by task."""
    moe = manifest.get("moe")
    section = moe.get("memory_plan") if isinstance(moe, Mapping) else None
    if not isinstance(section, Mapping):
        return {}
    candidates = {_SINGLE_PLAN_LABEL: section} if "totals" in section else section
    parsed = {str(label): _parse(plan) for label, plan in candidates.items()}
    return {label: plan for label, plan in parsed.items() if plan is not None}


def _parse(plan: Any) -> _Plan | None:
    """Both orders' totals with positive byte counts (a log axis needs them), or None."""
    totals = plan.get("totals") if isinstance(plan, Mapping) else None
    if not isinstance(totals, Mapping) or not all(isinstance(totals.get(key), Mapping) for key in ORDERS):
        return None
    values = {(key, field): number(totals[key].get(field)) for key in ORDERS for field in FIELDS}
    if any(value is None or value <= 0 for value in values.values()):
        return None
    capacity = number(plan.get("on_chip_bytes"))
    return _Plan(
        values={where: float(value) for where, value in values.items() if value is not None},
        reloads={key: totals[key].get("reloads_per_token") is True for key in ORDERS},
        capacity=capacity if capacity is not None and capacity > 0 else None,
    )


def _order_bars(ax: Axes, plans: list[_Plan], field: str) -> None:
    """Side-by-side bars per task, hatched where the order has to reload weights per token."""
    width = 0.38
    for index, key in enumerate(ORDERS):
        for x, plan in enumerate(plans):
            reloads = plan.reloads[key]
            ax.bar(x + (index - 0.5) * width, plan.values[key, field], width * 0.95, color=_ORDER_COLORS[key],
                   hatch="//" if reloads else "", edgecolor="black" if reloads else None, linewidth=0.5)
    values = [plan.values[key, field] for plan in plans for key in ORDERS]
    if max(values) > _LOG_SPAN * min(values):
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(EngFormatter(unit="B", sep=" "))
    ax.margins(y=0.2)


def _annotate_ratio(ax: Axes, plans: list[_Plan]) -> None:
    """'N.Nx' above each task (and its capacity line): token-major peak over expert-major peak."""
    for x, plan in enumerate(plans):
        token, expert = (plan.values[key, FIELDS[0]] for key in ORDERS)
        top = max(token, expert, plan.capacity or 0.0)
        ax.annotate(f"{token / expert:.1f}x", (x, top), xytext=(0, 4), textcoords="offset points", ha="center",
                    fontsize=8)


def _mark_capacity(ax: Axes, plans: list[_Plan]) -> bool:
    """A dashed line across each task's bars at its on-chip capacity, where known; whether any was drawn."""
    for x, plan in enumerate(plans):
        if plan.capacity is not None:
            ax.hlines(plan.capacity, x - 0.45, x + 0.45, colors=_CAPACITY_COLOR, linestyles="dashed", linewidth=1.2)
    return any(plan.capacity is not None for plan in plans)
