"""MCU (GAP9) figures: where each task's bytes sit in L2 / L3, and per-layer cost, estimated beside simulated.

The gap9 flow writes, per task, `memory_placement` (arena, weights, code and L3 staging in L2, weights spilled to
L3; an *estimate* of edgemtl's placement model), `cycle_estimate.layers` (the 8-core cluster cycles per layer; an
*estimate*) and `c.qemu.instructions.layers` (retired instructions of the portable C on one rv32imac core under
qemu; *simulated*). Instructions on one core are not cluster cycles: the per-layer figure draws them as two
series in different colours, each named with its provenance, never as one quantity. Like the other report
figures these never touch pyplot and return None when the manifest has nothing to draw (it is untrusted JSON).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from edgemtl.manifest import provenance_text
from edgemtl.report.plots import _plain, _png
from edgemtl.report.read import number, task_entries
from edgemtl.report.read import section as _section

# (manifest key, legend label, colour) of the L2 parts, stacked in this order
L2_PARTS: tuple[tuple[str, str, str], ...] = (
    ("arena_bytes", "activation arena", "#4C72B0"),
    ("weights_in_l2", "weights kept in L2", "#55A868"),
    ("code_bytes", "code, runtime, stacks (allowance)", "#8C8C8C"),
    ("staging_bytes", "L3 weight staging (double-buffered)", "#CCB974"),
)
ESTIMATE_LABEL = "estimated: GAP9 cluster cycles (8 cores, PULP-NN-class kernels, analytical model)"
SIMULATED_LABEL = "simulated: qemu rv32imac retired instructions (one core, no SIMD; not cycles)"

_L3_COLOR = "#C44E52"
_LIMIT_COLOR = "#C44E52"
_ESTIMATE_COLOR = "#DD8452"
_SIMULATED_COLOR = "#4C72B0"
_MAX_LABELLED_LAYERS = 48
_TICK_CHARACTERS = 30   # longest layer tick label


def mcu_placements(manifest: Mapping[str, Any]) -> list[tuple[str, dict[str, float], Mapping[str, Any]]]:
    """(task, part -> bytes, the placement section) for every task with a usable `memory_placement`."""
    rows = []
    for name, entry in task_entries(manifest).items():
        placement = entry.get("memory_placement")
        if not isinstance(placement, Mapping):
            continue
        l2 = number(placement.get("l2_bytes"))
        weights, spilled = number(placement.get("weight_bytes")), number(placement.get("l3_used_bytes")) or 0.0
        parts = {
            "arena_bytes": number(placement.get("arena_bytes")),
            "weights_in_l2": max(weights - spilled, 0.0) if weights is not None else None,
            "code_bytes": number(placement.get("code_bytes")),
            "staging_bytes": number(placement.get("staging_bytes")),
        }
        known = {key: value for key, value in parts.items() if value is not None and value >= 0}
        if l2 is None or l2 <= 0 or not known:
            continue
        known["l2_bytes"] = l2
        known["l3_spill"] = max(spilled, 0.0)
        l3 = number(placement.get("l3_bytes"))
        if l3 is not None and l3 > 0:
            known["l3_bytes"] = l3
        rows.append((name, known, placement))
    return rows


def mcu_layer_costs(entry: Mapping[str, Any]) -> list[tuple[int, str, float | None, float | None]]:
    """(layer index, short label, estimated cluster cycles, simulated instructions) per layer of one task.

    The estimate comes from `cycle_estimate.layers` (else a qemu row's `estimated_cycles`), the instructions from
    `c.qemu.instructions.layers`; both are matched by layer index. Empty when the task has neither.
    """
    estimate = entry.get("cycle_estimate")
    qemu = entry.get("c")
    qemu = qemu.get("qemu") if isinstance(qemu, Mapping) else None
    instructions = qemu.get("instructions") if isinstance(qemu, Mapping) else None
    layers: dict[int, dict[str, Any]] = {}
    for row in _rows(estimate, "layers"):
        index = _index(row, "index")
        if index is not None:
            layers.setdefault(index, {}).update(op=row.get("op"), name=row.get("name"), cycles=number(row.get("cycles")))
    for row in _rows(instructions, "layers"):
        index = _index(row, "layer")
        if index is None:
            continue
        slot = layers.setdefault(index, {})
        slot.setdefault("op", row.get("op"))
        slot.setdefault("name", row.get("name"))
        slot["instructions"] = number(row.get("instructions"))
        if slot.get("cycles") is None:
            slot["cycles"] = number(row.get("estimated_cycles"))
    result = []
    for index in sorted(layers):
        slot = layers[index]
        cycles, count = slot.get("cycles"), slot.get("instructions")
        if cycles is None and count is None:
            continue
        result.append((index, _layer_label(index, slot.get("name"), slot.get("op")), cycles, count))
    return result


def mcu_placement_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """Per task, a stacked bar of L2 (arena, weights, code, staging) against L2's size, and any L3 spill."""
    rows = mcu_placements(manifest)
    if not rows:
        return None
    spills = any(parts["l3_spill"] > 0 for _, parts, _ in rows)
    height = 1.6 + 0.45 * len(rows)
    fig = Figure(figsize=(11.0 if spills else 8.5, height), layout="constrained")
    FigureCanvasAgg(fig)
    if spills:
        l2_ax, l3_ax = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    else:
        l2_ax, l3_ax = fig.subplots(), None
    ys = list(range(len(rows)))
    for y, (_, parts, placement) in zip(ys, rows):
        left = 0.0
        for key, _, color in L2_PARTS:
            value = parts.get(key)
            if value:
                l2_ax.barh(y, value / 1024, 0.6, left=left / 1024, color=color)
                left += value
        capacity = parts["l2_bytes"]
        l2_ax.vlines(capacity / 1024, y - 0.42, y + 0.42, colors=_LIMIT_COLOR, linestyles="dashed", linewidth=1.2)
        status = placement.get("status")
        note = f"{left / capacity:.0%} of L2" + (f" · {status}" if isinstance(status, str) and status else "")
        l2_ax.annotate(_plain(note), (left / 1024, y), xytext=(4, 0), textcoords="offset points", va="center",
                       fontsize=7, color=_LIMIT_COLOR if status == "too-big" else "black")
    top = max(max(sum(parts.get(key) or 0.0 for key, _, _ in L2_PARTS), parts["l2_bytes"]) for _, parts, _ in rows)
    l2_ax.set_xlim(0, top / 1024 * 1.22)
    l2_ax.set_xlabel("KiB in L2 (dashed: the target's L2 size)", fontsize=8)
    l2_ax.set_title("L2", fontsize=9)
    l2_ax.set_yticks(ys, [_plain(textwrap.shorten(name, 28, placeholder="…")) for name, _, _ in rows])
    l2_ax.invert_yaxis()
    _style(l2_ax, "x")
    handles = [Patch(facecolor=color, label=label) for key, label, color in L2_PARTS
               if any(parts.get(key) for _, parts, _ in rows)]
    handles.append(Line2D([], [], color=_LIMIT_COLOR, linestyle="--", label="L2 size"))
    if l3_ax is not None:
        for y, (_, parts, _) in zip(ys, rows):
            spill = parts["l3_spill"]
            if spill > 0:
                bar = l3_ax.barh(y, spill / 1024, 0.6, color=_L3_COLOR, hatch="//", edgecolor="white")
                capacity = parts.get("l3_bytes")
                share = f" ({spill / capacity:.1%} of L3)" if capacity else ""
                l3_ax.bar_label(bar, labels=[f"{spill / 1024:,.0f} KiB{share}"], fontsize=7, padding=2)
        l3_ax.margins(x=0.35)
        l3_ax.set_xlabel("KiB of weights spilled to L3, re-streamed every inference", fontsize=8)
        l3_ax.set_title("L3 (off-chip)", fontsize=9)
        _style(l3_ax, "x")
        handles.append(Patch(facecolor=_L3_COLOR, hatch="//", edgecolor="white", label="weights in L3"))
    capacities = sorted({parts["l2_bytes"] for _, parts, _ in rows})
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8, frameon=False)
    provenance = _first_text(placement.get("provenance") for _, _, placement in rows) or "estimated"
    fig.suptitle(f"GAP9 memory placement per task, estimated (L2 {' / '.join(_kib(c) for c in capacities)})"
                 + ("" if spills else "; no weights spilled to L3") + "\n"
                 + _plain(textwrap.fill(textwrap.shorten(provenance, 220, placeholder="…"), 110)), fontsize=9)
    return _png(fig)


def mcu_layer_cycles_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """Per task and layer: the cluster cycle estimate beside qemu's retired instructions, on a log axis."""
    tasks = [(name, entry, costs) for name, entry in task_entries(manifest).items()
             if (costs := mcu_layer_costs(entry))
             and any(_positive(c) or _positive(i) for _, _, c, i in costs)]
    if not tasks:
        return None
    columns = 1 if len(tasks) < 3 else 2
    rows = math.ceil(len(tasks) / columns)
    widest = max(len(costs) for _, _, costs in tasks)
    width = min(15.0, max(7.5, 1.5 + 0.32 * widest * columns))
    fig = Figure(figsize=(width, 1.2 + 2.9 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, entry, costs) in zip(axes, tasks):
        _layer_panel(ax, costs)
        ax.set_title(_plain(_panel_title(name, entry)), fontsize=8)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    handles = [Patch(facecolor=_ESTIMATE_COLOR, hatch="///", edgecolor="white", label=ESTIMATE_LABEL),
               Patch(facecolor=_SIMULATED_COLOR, label=SIMULATED_LABEL)]
    fig.legend(handles=handles, loc="outside lower center", ncols=1, fontsize=8, frameon=False)
    estimate = _first_text(_section(entry, "cycle_estimate").get("provenance") for _, entry, _ in tasks)
    simulated = _first_text(_qemu(entry).get("provenance") for _, entry, _ in tasks)
    characters = int(width * 12)   # what a line of 9-point text holds across the figure (the title was cut)
    lines = [textwrap.fill("Per layer: GAP9 cluster cycles (estimated) beside qemu retired instructions (simulated); "
                           "log scale, two different quantities", characters)]
    lines += [textwrap.fill(textwrap.shorten(text, 220, placeholder="…"), characters)
              for text in (estimate, simulated) if text]
    fig.suptitle(_plain("\n".join(lines)), fontsize=9)
    return _png(fig)


def _layer_panel(ax: Axes, costs: list[tuple[int, str, float | None, float | None]]) -> None:
    """Two bars per layer, estimate left and instructions right; values <= 0 cannot sit on a log axis."""
    width = 0.4
    xs = range(len(costs))
    for offset, pick, color, hatch in ((-width / 2, 2, _ESTIMATE_COLOR, "///"), (width / 2, 3, _SIMULATED_COLOR, "")):
        drawn = [(x + offset, value) for x, row in zip(xs, costs) if _positive(value := row[pick])]
        if drawn:
            bx, values = zip(*drawn)
            ax.bar(bx, values, width * 0.95, color=color, hatch=hatch, edgecolor="white", linewidth=0)
    ax.set_yscale("log")
    labels = [_tick(_plain(label)) for _, label, _, _ in costs]
    step = max(1, math.ceil(len(costs) / _MAX_LABELLED_LAYERS))
    ax.set_xticks(list(xs)[::step], labels[::step], rotation=45, ha="right", rotation_mode="anchor", fontsize=6)
    ax.set_xlim(-0.6, len(costs) - 0.4)
    ax.set_xlabel("layer (index, op)", fontsize=7)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _count(value)))
    ax.tick_params(axis="y", labelsize=7)
    _style(ax, "y")


def _tick(label: str, most: int = _TICK_CHARACTERS) -> str:
    """A layer's tick label, its end kept (the node name's last parts and the op tell layers apart): ONNX node names
    such as /model/encoder/stages.1/stages.1.0/shortcut/shortcut.0/Conv, at 45 degrees, took more than a panel's
    height and collapsed the layout."""
    index, _, rest = label.partition(" ")
    return label if len(label) <= most else f"{index} …{rest[-(most - len(index) - 2):]}"


def _panel_title(name: str, entry: Mapping[str, Any]) -> str:
    totals = _section(_section(entry, "cycle_estimate"), "totals")
    cycles, latency, clock = (number(totals.get(key)) for key in ("cycles", "latency_ms", "clock_mhz"))
    instructions = number(_section(_section(_qemu(entry), "instructions"), "totals").get("instructions"))
    parts = []
    if cycles is not None:
        parts.append(f"est. {_count(cycles)} cycles"
                     + (f" = {latency:.3g} ms @ {clock:g} MHz" if latency is not None and clock is not None else ""))
    if instructions is not None:
        parts.append(f"sim. {_count(instructions)} instructions")
    return textwrap.shorten(name, 40, placeholder="…") + (": " + " · ".join(parts) if parts else "")


def _qemu(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    return _section(_section(entry, "c"), "qemu")


def _layer_label(index: int, name: Any, op: Any) -> str:
    """The layer as the integer ONNX and the generated C name it (its node name), with its kind: "3 conv2 (conv)"
    rather than "3 conv", so a layer in the plot can be found in the graph and the C."""
    name = name if isinstance(name, str) and name else ""
    op = op if isinstance(op, str) and op else ""
    if name and op and name != op:
        return f"{index} {name} ({op})"
    return f"{index} {name or op}".rstrip()


def _rows(section: Any, key: str) -> list[Mapping[str, Any]]:
    rows = section.get(key) if isinstance(section, Mapping) else None
    return [row for row in rows if isinstance(row, Mapping)] if isinstance(rows, list) else []


def _index(row: Mapping[str, Any], key: str) -> int | None:
    value = number(row.get(key))
    return int(value) if value is not None and value >= 0 and value.is_integer() else None


def _first_text(provenances: Any) -> str:
    """The first provenance given, in words."""
    return next((text for raw in provenances if (text := provenance_text(raw))), "")


def _positive(value: float | None) -> bool:
    return value is not None and value > 0


def _style(ax: Axes, grid: str) -> None:
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_axisbelow(True)
    ax.grid(axis=grid, linewidth=0.5, alpha=0.5)


def _count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def _kib(value: float) -> str:
    return f"{value / 1024:,.0f} KiB" if value < 1024**2 else f"{value / 1024**2:.3g} MiB"
