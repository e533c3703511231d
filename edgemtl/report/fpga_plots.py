"""FPGA resources per task, as a share of the ZCU104's fabric, from FINN's and edgemtl's estimates.

The zcu104 flow writes, per task, `finn.by_target_fps` (FINN's analytical estimates after folding for each
target fps) and `roofline.resources` (edgemtl's layer-sequential roofline). Neither is a synthesis result,
so the figure says "estimated" in its title and names each estimator. The dashed marks are the fit limits
a design should stay under to leave room for routing and the shell (LUT 70 %, BRAM 80 %, DSP 80 %). Like
the other report figures it never touches pyplot and returns None when there is nothing to draw: the
manifest is untrusted JSON.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from edgemtl.manifest import provenance_text
from edgemtl.report.plots import _plain, _png
from edgemtl.report.read import number, task_entries

RESOURCES: dict[str, str] = {"lut": "LUT", "bram18": "BRAM18", "uram": "URAM", "dsp": "DSP"}
FIT_LIMITS: dict[str, float] = {"lut": 0.70, "bram18": 0.80, "dsp": 0.80}  # share of the part; URAM: none set
ROOFLINE_LABEL = "edgemtl roofline"

_FINN_COLORS = ("#4C72B0", "#8172B3", "#64B5CD", "#2A4D7F")
_ROOFLINE_COLOR = "#DD8452"
_LIMIT_COLOR = "#C44E52"
_BAR_SPAN = 0.8


def part_totals(manifest: Mapping[str, Any]) -> dict[str, float]:
    """The part's logic as the compile recorded it from the target file ("target.fabric"), or {} (then shares
    come only from each estimate's own `utilisation`)."""
    target = manifest.get("target")
    fabric = target.get("fabric") if isinstance(target, Mapping) else None
    if not isinstance(fabric, Mapping):
        return {}
    return {key: total for key in RESOURCES if (total := number(fabric.get(key))) is not None and total > 0}


def fpga_estimates(entry: Mapping[str, Any], totals: Mapping[str, float]) -> list[tuple[str, dict[str, float], str]]:
    """(label, resource -> share of the part, provenance) per estimator of one task, FINN's by fps first."""
    estimates = []
    finn = entry.get("finn")
    by_fps = finn.get("by_target_fps") if isinstance(finn, Mapping) and finn.get("ok") is True else None
    if isinstance(by_fps, Mapping):
        for key, fold in sorted(by_fps.items(), key=lambda item: _fps_order(item[0])):
            shares = _shares(fold, totals)
            if shares:
                fps = number(fold.get("target_fps")) if isinstance(fold, Mapping) else None
                fps = fps if fps is not None else number(_float(key))
                label = f"FINN @ {fps:,.0f} fps" if fps is not None else f"FINN @ {key}"
                estimates.append((label, shares, _provenance(fold, finn, "estimated (FINN analytical model)")))
    roofline = entry.get("roofline")
    resources = roofline.get("resources") if isinstance(roofline, Mapping) else None
    shares = _shares(resources, totals)
    if shares:
        estimates.append((ROOFLINE_LABEL, shares, _provenance(resources, roofline, "estimated (edgemtl roofline)")))
    return estimates


def fpga_resource_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """Per task, LUT / BRAM18 / URAM / DSP as % of the ZCU104 for each estimator; None without estimates."""
    totals = part_totals(manifest)
    tasks = [(name, estimates) for name, entry in task_entries(manifest).items()
             if (estimates := fpga_estimates(entry, totals))]
    if not tasks:
        return None
    labels = list(dict.fromkeys(label for _, estimates in tasks for label, _, _ in estimates))
    colors = _colors(labels)
    fig = Figure(figsize=(min(14.0, 4.2 * len(tasks) + 1.0), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
    top = max([share for _, estimates in tasks for _, shares, _ in estimates for share in shares.values()]
              + list(FIT_LIMITS.values()))
    for ax, (name, estimates) in zip(axes, tasks):
        _task_panel(ax, estimates, labels, colors)
        ax.set_xlim(0, max(105.0, top * 100 * 1.18))
        ax.set_title(_plain(textwrap.shorten(name, 40, placeholder="…")), fontsize=10)
    axes[0].set_yticks(range(len(RESOURCES)), list(RESOURCES.values()))
    axes[0].invert_yaxis()
    handles = [Patch(facecolor=colors[label], label=label) for label in labels]
    handles.append(Patch(facecolor="white", edgecolor=_LIMIT_COLOR, linestyle="--",
                         label="fit limit (LUT 70 %, BRAM18 / DSP 80 %)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8, frameon=False)
    provenances = list(dict.fromkeys(provenance for _, estimates in tasks for _, _, provenance in estimates))
    caption = "; ".join(provenances)
    fig.suptitle("FPGA resources per task, % of the ZCU104 (XCZU7EV), estimated: not synthesised\n"
                 + _plain(textwrap.shorten(caption, 150, placeholder="…")), fontsize=10)
    return _png(fig)


def _task_panel(ax: Axes, estimates: list[tuple[str, dict[str, float], str]], labels: list[str],
                colors: dict[str, str]) -> None:
    """One group of horizontal bars per resource, one bar per estimator, and the fit limits dashed across."""
    height = _BAR_SPAN / len(labels)  # every panel keeps the same slot per estimator, drawn or not
    for index, label in enumerate(labels):
        shares = next((shares for name, shares, _ in estimates if name == label), {})
        offset = (index - (len(labels) - 1) / 2) * height
        rows = [(y + offset, shares[key] * 100) for y, key in enumerate(RESOURCES) if key in shares]
        if not rows:
            continue
        ys, percents = zip(*rows)
        bars = ax.barh(ys, percents, height * 0.92, color=colors[label])
        ax.bar_label(bars, labels=[_percent(value) for value in percents], fontsize=7, padding=2)
    for y, key in enumerate(RESOURCES):
        if key in FIT_LIMITS:
            ax.vlines(FIT_LIMITS[key] * 100, y - 0.47, y + 0.47, colors=_LIMIT_COLOR, linestyles="dashed", linewidth=1.2)
    ax.set_xlabel("% of the part", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_axisbelow(True)
    ax.grid(axis="x", linewidth=0.5, alpha=0.5)


def _shares(section: Any, totals: Mapping[str, float]) -> dict[str, float]:
    """Resource -> share of the part from block counts and the part's totals, else from the section's own
    `utilisation`."""
    if not isinstance(section, Mapping):
        return {}
    utilisation = section.get("utilisation")
    utilisation = utilisation if isinstance(utilisation, Mapping) else {}
    shares = {}
    for key in RESOURCES:
        count, total = number(section.get(key)), totals.get(key)
        share = count / total if count is not None and total else number(utilisation.get(key))
        if share is not None and share >= 0:
            shares[key] = share
    return shares


def _provenance(section: Any, parent: Mapping[str, Any], default: str) -> str:
    for source in (section, parent):
        if isinstance(source, Mapping) and (text := provenance_text(source.get("provenance"))):
            return text
    return default


def _colors(labels: list[str]) -> dict[str, str]:
    finn = [label for label in labels if label != ROOFLINE_LABEL]
    colors = {label: _FINN_COLORS[index % len(_FINN_COLORS)] for index, label in enumerate(finn)}
    colors[ROOFLINE_LABEL] = _ROOFLINE_COLOR
    return colors


def _fps_order(key: Any) -> tuple[int, float, str]:
    value = _float(key)
    return (0, value, "") if value is not None else (1, 0.0, str(key))


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _percent(value: float) -> str:
    return f"{value:.0f}%" if value >= 10 else f"{value:.1f}%" if value >= 0.1 else "<0.1%" if value > 0 else "0%"
