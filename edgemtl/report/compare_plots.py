"""Figures of the comparison report (`edgemtl report`), drawn from the comparison document as PNG bytes.

Each figure groups bars by task, one bar per bundle, on a log axis (a GAP9 estimate and a host measurement can
be orders of magnitude apart). The fill colour names the bundle, the hatching names the kind of number
(measured / emulated / simulated / estimated / static), and each bar carries its kind in words, so a measured
figure and an estimate are never read as the same quantity. Built on `Figure` + Agg, never pyplot; each returns
None when there is nothing to draw.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from edgemtl.manifest import provenance_kind
from edgemtl.report.plots import _plain, _png
from edgemtl.report.read import number

HATCHES = {"measured": "", "emulated": "xx", "simulated": "..", "estimated": "//", "static": "", "evaluated": ""}
_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
_SHORT = {"measured": "meas.", "emulated": "emul.", "simulated": "sim.", "estimated": "est.", "static": "static"}

Pick = Callable[[Mapping[str, Any]], tuple[float, str, bool] | None]  # (value, kind, off target?)


def latency_comparison_plot(document: Mapping[str, Any]) -> bytes | None:
    """Headline latency per task and bundle (median, ms, log axis), hatched and labelled by provenance."""
    def pick(figures: Mapping[str, Any]) -> tuple[float, str, bool] | None:
        latency = figures.get("latency")
        if not isinstance(latency, Mapping) or number(latency.get("median")) is None:
            return None
        kind = provenance_kind(latency.get("provenance"))
        return number(latency["median"]), kind, kind == "measured" and not latency.get("on_target")

    return _grouped(document, pick, "ms per inference (median, log scale)", "Latency per task and target",
                    lambda v: f"{v:.3g}")


def memory_comparison_plot(document: Mapping[str, Any]) -> bytes | None:
    """The memory figure each bundle's table shows first (its meaning per target is in the table)."""
    def pick(figures: Mapping[str, Any]) -> tuple[float, str, bool] | None:
        memory = figures.get("memory")
        first = memory[0] if isinstance(memory, list) and memory and isinstance(memory[0], Mapping) else None
        if first is None or number(first.get("value")) is None:
            return None
        return number(first["value"]) / 1024, provenance_kind(first.get("provenance")), False

    return _grouped(document, pick, "KiB (log scale)", "Memory per task and target: GAP9 static arena, FPGA "
                    "on-chip RAM (est.), CPU peak activations (est.)", lambda v: f"{v:,.0f}")


def size_comparison_plot(document: Mapping[str, Any]) -> bytes | None:
    """Bytes of each task's deployed artifact (file size, or weights for C / FPGA builds)."""
    def pick(figures: Mapping[str, Any]) -> tuple[float, str, bool] | None:
        size = figures.get("model_size")
        if not isinstance(size, Mapping) or number(size.get("value")) is None:
            return None
        return number(size["value"]) / 1024, provenance_kind(size.get("provenance")), False

    return _grouped(document, pick, "KiB (log scale)", "Deployed model size per task and target", lambda v: f"{v:,.0f}")


COMPARISON_PLOTS: tuple[tuple[str, Callable[[Mapping[str, Any]], bytes | None]], ...] = (
    ("Latency per task: one bar per target, the shipped runtime's best-founded median on a log axis; hatching and "
     "the word on each bar give the kind of number (measured / emulated / estimated); '*' marks a measurement "
     "taken off the target (e.g. an arm64 bundle timed on this x86 host). Bars of different kinds are not a "
     "speed-up.", latency_comparison_plot),
    ("Memory per task: the first memory figure of each column (its meaning differs per target, see the tables)",
     memory_comparison_plot),
    ("Deployed model size per task: the shipped artifact's file size (CPU targets) or its weights (GAP9, FPGA)",
     size_comparison_plot),
)


def _grouped(document: Mapping[str, Any], pick: Pick, ylabel: str, title: str,
             fmt: Callable[[float], str]) -> bytes | None:
    bundles = [str(b.get("label")) for b in document.get("bundles") or [] if isinstance(b, Mapping)]
    tasks = document.get("tasks") if isinstance(document.get("tasks"), Mapping) else {}
    values: dict[tuple[int, int], tuple[float, str, bool]] = {}
    for t, by_bundle in enumerate(tasks.values()):
        for b, label in enumerate(bundles):
            figures = by_bundle.get(label) if isinstance(by_bundle, Mapping) else None
            got = pick(figures) if isinstance(figures, Mapping) else None
            if got is not None and got[0] > 0:
                values[(t, b)] = got
    if not values:
        return None
    width = 0.8 / max(len(bundles), 1)
    fig = Figure(figsize=(min(14.0, max(6.4, 1.8 + 0.55 * len(tasks) * len(bundles))), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for (t, b), (value, kind, off_target) in values.items():
        x = t + (b - (len(bundles) - 1) / 2) * width
        bar = ax.bar(x, value, width * 0.92, color=_COLORS[b % len(_COLORS)], hatch=HATCHES.get(kind, "oo"),
                     edgecolor="white", linewidth=0.5)
        label = f"{fmt(value)}\n{_SHORT.get(kind, kind)}{'*' if off_target else ''}"
        ax.bar_label(bar, labels=[label], fontsize=6, padding=1)
    ax.set_yscale("log")
    low, high = min(v for v, _, _ in values.values()), max(v for v, _, _ in values.values())
    ax.set_ylim(low / 3, high * 6)
    names = [_plain(textwrap.shorten(str(name), 22, placeholder="…")) for name in tasks]
    ax.set_xticks(range(len(names)), names)
    ax.tick_params(labelsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", linewidth=0.5, alpha=0.5, which="major")
    ax.set_axisbelow(True)
    handles = [Patch(facecolor=_COLORS[b % len(_COLORS)], label=_plain(textwrap.shorten(label, 30, placeholder="…")))
               for b, label in enumerate(bundles) if any(key[1] == b for key in values)]
    kinds = sorted({kind for _, kind, _ in values.values()})
    handles += [Patch(facecolor="white", edgecolor="#555", hatch=HATCHES.get(kind, "oo"), label=_plain(kind))
                for kind in kinds]
    if any(off for _, _, off in values.values()):
        handles.append(Patch(facecolor="none", edgecolor="none", label="* measured off the target"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(_plain(textwrap.shorten(title, 140, placeholder="…")), fontsize=10)
    return _png(fig)
