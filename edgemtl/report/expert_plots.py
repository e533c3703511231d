"""The expert-usage heat map of a mixture-of-experts bundle, drawn from the manifest's `moe.expert_usage`.

One panel per task (rows = MoE layer, columns = expert, colour = share of the task's routing mass) on a
shared colour scale, so tasks that concentrate on few experts stand out against tasks that spread out.
Like the other report figures it never touches pyplot and returns None when the section is missing or
malformed: the manifest is untrusted JSON.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from edgemtl.report.plots import _plain, _png
from edgemtl.report.read import number

_PANELS_PER_ROW = 3
_MAX_ANNOTATED_CELLS = 96  # beyond this the numbers would not fit their cells
_CMAP = "Blues"

Grid = tuple[list[str], list[list[float]]]  # layer names, mass share per layer per expert


def expert_usage_heatmap(manifest: Mapping[str, Any]) -> bytes | None:
    """Routing-mass share per (MoE layer, expert), one panel per task; None without a usable section."""
    section = _section(manifest)
    grids = {task: grid for task, entries in _tasks(section).items() if (grid := _grid(entries)) is not None}
    if not grids:
        return None
    experts = max(len(row) for _, rows in grids.values() for row in rows)
    layers = max(len(rows) for _, rows in grids.values())
    top = max(max(row) for _, rows in grids.values() for row in rows)
    vmax = top if top > 0 else 1.0
    cols = min(len(grids), _PANELS_PER_ROW)
    nrows = math.ceil(len(grids) / cols)
    fig = Figure(figsize=(min(16.0, 1.6 + cols * (1.2 + 0.5 * experts)), 1.4 + nrows * (0.9 + 0.45 * layers)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    images = [_panel(ax, task, grid, experts, vmax) for ax, (task, grid) in zip(axes, grids.items())]
    for ax in axes[len(grids):]:
        ax.set_visible(False)
    fig.colorbar(images[0], ax=list(axes[: len(grids)]), shrink=0.9, label="share of routing mass")
    samples = number(section.get("samples")) if section is not None else None
    caption = f" ({samples:.0f} images)" if samples is not None else ""
    fig.suptitle(f"Expert usage per task{caption}: % of each layer's routing mass per expert, · = unused", fontsize=11)
    return _png(fig)


def _section(manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    moe = manifest.get("moe")
    usage = moe.get("expert_usage") if isinstance(moe, Mapping) else None
    return usage if isinstance(usage, Mapping) else None


def _tasks(section: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    raw = section.get("tasks") if section is not None else None
    if not isinstance(raw, Mapping):
        return {}
    return {str(task): entries for task, entries in raw.items() if isinstance(entries, list) and entries}


def _grid(entries: list[Any]) -> Grid | None:
    """A task's layer names and mass rows, or None when any layer entry is not the shape `to_dict` writes."""
    names, rows = [], []
    for index, entry in enumerate(entries):
        mass = entry.get("mass") if isinstance(entry, Mapping) else None
        values = [number(v) for v in mass] if isinstance(mass, list) and mass else None
        if values is None or any(v is None or v < 0 for v in values):
            return None
        names.append(str(entry.get("layer") or f"layer {index}"))
        rows.append([v for v in values if v is not None])
    return names, rows


def _panel(ax: Axes, task: str, grid: Grid, experts: int, vmax: float) -> AxesImage:
    """One task's heat map, rows padded with NaN (blank) when layers have fewer experts than the widest.

    Cells read the share in percent (two digits fit a cell at print size); an expert with no mass reads "·", not
    "0", since that is what per-task expert pruning keys on.
    """
    names, rows = grid
    matrix = [row + [math.nan] * (experts - len(row)) for row in rows]
    image = ax.imshow(matrix, cmap=_CMAP, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    if len(rows) * experts <= _MAX_ANNOTATED_CELLS:
        for y, row in enumerate(rows):
            for x, value in enumerate(row):
                ax.text(x, y, f"{100 * value:.0f}" if value > 0 else "·", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.6 * vmax else "black")
    ax.set_xticks(range(experts), [str(e) for e in range(experts)])
    ax.set_yticks(range(len(rows)), [_plain(textwrap.shorten(name, 22, placeholder="…")) for name in names])
    ax.set_xlabel("expert", fontsize=8)
    ax.tick_params(labelsize=7, length=0)
    ax.set_title(_plain(textwrap.shorten(task, 30, placeholder="…")), fontsize=9)
    return image
