"""The accuracy budget of every quantizing flow (flows/budget.py writes one `tasks.<task>.budget` record per quantized
task): per task its budget and who set it, what it is judged by, float -> quantized, its relative loss and whether it
is within, what shipped, every remedy tried in order with its cost, and the figure of loss per remedy against the
budget. A task shipped over its budget (--allow-over-budget) is flagged in red: its accuracy is not what was asked."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from edgemtl.report.fmt import DASH, e, figures_html, human_bytes, human_count, human_ms, prov_badge, short
from edgemtl.report.plots import _plain, _png, panel_grid
from edgemtl.report.read import number, section, task_entries
from edgemtl.report.sections import Figures, TaskInput

_LINE_COLOR = "#4C72B0"
_WITHIN_COLOR = "#55A868"
_OVER_COLOR = "#C44E52"
_BUDGET_COLOR = "#C44E52"
_COLUMNS = 3


def applies(manifest: Mapping[str, Any]) -> bool:
    return bool(_records(manifest))


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    records = _records(manifest)
    if not records:
        return ""
    parts = ["<h2>Accuracy budget</h2>"]
    line = _default_line(section(manifest, "quant_budget"))
    if line:
        parts.append(f"<p>{line}</p>")
    parts.append(_table(("Task", "Budget", "Judged by", "Float → quantized", "Relative loss", "Status", "Shipped",
                         "Unseen test split"), [_task_row(name, record) for name, record in records]))
    parts.append("<p class=\"dim\">Relative loss: on the held-out split every remedy decision (which remedy ships, "
                 "when QAT stops) was taken on. Unseen test split: the shipped path on data none of them saw.</p>")
    for name, record in records:
        parts.extend(_remedies(name, record))
    return "\n".join(parts + figures_html(PLOTS, manifest))


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {"quant_budget": dict(section(manifest, "quant_budget")),
            "tasks": {name: {"budget": number(record.get("max_relative_loss")),
                             "relative_loss": number(record.get("relative_loss")),
                             "within": record.get("within") if isinstance(record.get("within"), bool) else None,
                             "shipped": record.get("shipped")} for name, record in _records(manifest)}}


def compare_figures(task: TaskInput) -> Figures:
    return {}  # a budget is not one of the comparison's figures (its metric is the quantizing section's)


def _records(manifest: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(name, record) for name, entry in task_entries(manifest).items() if (record := section(entry, "budget"))]


# ------------------------------------------------------------------------------------------------ the page

def _percent(value: Any) -> str:
    """A budget as '2 %' (three significant digits)."""
    parsed = number(value)
    return f"{parsed * 100:.3g} %" if parsed is not None else DASH


def _signed(value: Any) -> str:
    """A relative loss as '+1.20 %' (negative: the quantized model did better)."""
    parsed = number(value)
    return f"{parsed * 100:+.2f} %" if parsed is not None else DASH


def _default_line(budget: Mapping[str, Any]) -> str:
    """'Default budget: at most 2 % relative loss vs float (set by target gap9); per task: depth 5 %.'"""
    if number(budget.get("default_max_relative_loss")) is None:
        return ""
    text = f"Default budget: at most {_percent(budget['default_max_relative_loss'])} relative loss vs float"
    if budget.get("set_by"):
        text += f" (set by {e(budget['set_by'])})"
    per_task = section(budget, "per_task")
    if per_task:
        text += "; per task: " + ", ".join(f"{e(task)} {_percent(value)}" for task, value in per_task.items())
    if budget.get("allow_over_budget") is True:
        text += "; <code>--allow-over-budget</code> given: a task over its budget ships anyway"
    return text + "."


def _task_row(name: str, record: Mapping[str, Any]) -> str:
    set_by = f" <span class=\"dim\">{e(record['set_by'])}</span>" if record.get("set_by") else ""
    if record.get("metric"):
        values = f"{e(record['metric'])} {short(number(record.get('float')))} → {short(number(record.get('quantized')))}"
    elif "metric" in record:  # null: a task the data does not label, judged by agreement with float
        values = "agreement <span class=\"dim\">(no labels)</span>"
    else:
        values = DASH
    return "<tr>" + "".join((
        f"<td>{e(name)}</td>",
        f"<td class=\"n\">{_percent(record.get('max_relative_loss'))}{set_by}</td>",
        f"<td>{e(record.get('judged_by') or DASH)}</td>",
        f"<td>{values}</td>",
        f"<td class=\"n\">{_signed(record.get('relative_loss'))}</td>",
        f"<td>{_status(record)}</td>",
        f"<td>{e(record.get('shipped') or DASH)}</td>",
        f"<td>{_unseen(record.get('unseen'))}</td>",
    )) + "</tr>"


def _unseen(unseen: Any) -> str:
    """'+1.33 % (scenes/test, 256 samples)', or why there is none."""
    if not isinstance(unseen, Mapping):
        return DASH
    if number(unseen.get("relative_loss")) is None:
        return f"<span class=\"dim\">{e(unseen.get('reason') or DASH)}</span>"
    samples = number(unseen.get("samples"))
    where = ", ".join(part for part in (e(unseen.get("split") or ""), f"{samples:.0f} samples" if samples else "") if part)
    return f"{_signed(unseen['relative_loss'])} <span class=\"dim\">({where})</span>"


def _status(record: Mapping[str, Any]) -> str:
    within = record.get("within")
    if within is True:
        return "<span class=\"ok\">within</span>"
    if within is False:
        allowed = " (shipped with --allow-over-budget)" if record.get("over_budget_allowed") is True else ""
        return f"<span class=\"fail\">OVER BUDGET{allowed}</span>"
    return DASH


def _remedies(name: str, record: Mapping[str, Any]) -> list[str]:
    """The task's remedies in the order tried, the shipped one marked, and what to try next when over budget."""
    remedies = [row for row in record.get("remedies") or [] if isinstance(row, Mapping)]
    parts = []
    if remedies:
        widths = any("layers_at_8_bits" in row or "qat_steps" in row for row in remedies)
        headers = ("#", "Remedy", "Relative loss", "Within", "Cost") + (("Layers at 8 bits", "QAT steps") if widths else ())
        rows = [_remedy_row(index, row, record, widths) for index, row in enumerate(remedies, 1)]
        parts.append(f"<h3>{e(name)}: remedies in the order tried</h3>\n{_table(headers, rows)}")
    advice = record.get("next")
    if record.get("within") is False and isinstance(advice, str) and advice:
        parts.append(f"<p><strong>{e(name)}</strong> is over its budget after every remedy; next to try: "
                     f"<code>{e(advice)}</code></p>")
    return parts


def _remedy_row(index: int, row: Mapping[str, Any], record: Mapping[str, Any], widths: bool) -> str:
    name = e(row.get("name") or DASH)
    name = f"<strong>{name}</strong> (shipped)" if _shipped(row, record) else name
    if "error" in row and number(row.get("relative_loss")) is None:
        loss = f"<td><span class=\"fail\">failed</span> <span class=\"dim\">{e(row['error'])}</span></td>"
    else:
        loss = f"<td class=\"n\">{_signed(row.get('relative_loss'))}</td>"
    within = _row_within(row, record)
    detail = f"<br><span class=\"dim\">{e(text)}</span>" if (text := _detail(row)) else ""
    verdict = DASH if within is None else "<span class=\"ok\">yes</span>" if within else "no"
    cells = [f"<td class=\"n\">{index}</td>", f"<td>{name}{detail}</td>", loss, f"<td>{verdict}</td>",
             f"<td>{_cost(row.get('cost'))}</td>"]
    if widths:
        layers = row.get("layers_at_8_bits")
        cells.append(f"<td class=\"n\" title=\"{e(', '.join(str(layer) for layer in layers))}\">{len(layers)}</td>"
                     if isinstance(layers, list) else f"<td class=\"n\">{DASH}</td>")
        steps = number(row.get("qat_steps"))
        cells.append(f"<td class=\"n\">{f'{steps:.0f}' if steps is not None else DASH}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _detail(row: Mapping[str, Any]) -> str:
    """What the remedy changed, when its name does not say: its description, or its scales and calibration."""
    if isinstance(row.get("description"), str):
        return row["description"]
    samples = number(row.get("calibration_samples"))
    return ", ".join(part for part in (f"scales {row['scale_method']}" if row.get("scale_method") else "",
                                       f"{samples:.0f} calibration samples" if samples is not None else "") if part)


def _shipped(row: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """The row's own mark (the zcu104 ladder writes one), else whether it is the remedy the record says shipped."""
    if isinstance(row.get("shipped"), bool):
        return row["shipped"]
    return row.get("name") is not None and row.get("name") == record.get("shipped")


def _row_within(row: Mapping[str, Any], record: Mapping[str, Any]) -> bool | None:
    if isinstance(row.get("within"), bool):
        return row["within"]
    loss, budget = number(row.get("relative_loss")), number(record.get("max_relative_loss"))
    return loss <= budget if loss is not None and budget is not None else None


def _cost(raw: Any) -> str:
    """Whichever cost figures the flow recorded ('1.2 G bit-ops, 9.5 KiB weights'), its provenance as a badge and
    its note as the tooltip."""
    if not isinstance(raw, Mapping):
        return DASH
    figures = [(key, value) for key in ("bit_operations", "weight_kib", "weight_bytes", "latency_ms")
               if (value := number(raw.get(key))) is not None]
    runs = number(raw.get("latency_runs"))
    words = {"bit_operations": lambda v: f"{human_count(v)} bit-ops", "weight_kib": lambda v: f"{v:.3g} KiB weights",
             "weight_bytes": lambda v: f"{human_bytes(v)} weights",
             "latency_ms": lambda v: human_ms(v) + (f" ({runs:.0f} runs)" if runs is not None else "")}
    text = ", ".join(e(words[key](value)) for key, value in figures) or DASH
    badge = prov_badge(raw["provenance"]) if raw.get("provenance") else ""
    note = raw.get("note")
    return f"<span title=\"{e(note)}\">{text}</span>{badge}" if isinstance(note, str) and note else text + badge


def _table(headers: tuple[str, ...], rows: list[str]) -> str:
    head = "".join(f"<th>{e(header)}</th>" for header in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


# ------------------------------------------------------------------------------------------------ the figure

def budget_plot(manifest: Mapping[str, Any]) -> bytes | None:
    """Per task (one panel each, so every task keeps its own budget line and scale) the relative loss of each remedy
    in the order tried; a remedy that failed leaves a gap. None when no task has a remedy with a loss."""
    series = [(name, budget, losses) for name, budget, losses in
              ((name, number(record.get("max_relative_loss")), _losses(record)) for name, record in _records(manifest))
              if any(not math.isnan(loss) for loss, _ in losses)]
    if not series:
        return None
    fig, axes = panel_grid(len(series), _COLUMNS, (3.6, 2.4), 1.2, 14.0)
    for ax, (name, budget, losses) in zip(axes, series):
        _panel(ax, name, budget, losses)
    handles = [Line2D([], [], color=_LINE_COLOR, marker="o", markerfacecolor=_WITHIN_COLOR, label="within budget"),
               Line2D([], [], color=_LINE_COLOR, marker="o", markerfacecolor=_OVER_COLOR, label="over budget"),
               Line2D([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                      markeredgecolor="black", label="shipped"),
               Line2D([], [], color=_BUDGET_COLOR, linestyle="--", label="budget")]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    fig.suptitle("Relative loss vs float per remedy, in the order tried; dashed: the budget", fontsize=11)
    return _png(fig)


PLOTS = (("Accuracy budget: each task's relative loss vs float per remedy, in the order tried (numbered as in the "
          "remedy tables); dashed: the task's budget; ringed: the remedy shipped", budget_plot),)


def _losses(record: Mapping[str, Any]) -> list[tuple[float, bool]]:
    """(relative loss, shipped) per remedy in order; NaN for one without a loss (it failed)."""
    remedies = [row for row in record.get("remedies") or [] if isinstance(row, Mapping)]
    found = []
    for row in remedies:
        loss = number(row.get("relative_loss"))
        found.append((loss if loss is not None else math.nan, _shipped(row, record)))
    return found


def _panel(ax: Axes, name: str, budget: float | None, losses: list[tuple[float, bool]]) -> None:
    xs = list(range(1, len(losses) + 1))
    ys = [loss * 100 for loss, _ in losses]
    ax.plot(xs, ys, color=_LINE_COLOR, linewidth=1.2, zorder=2)
    for x, y, (loss, shipped) in zip(xs, ys, losses):
        if math.isnan(loss):
            continue
        over = budget is not None and loss > budget
        ax.plot([x], [y], marker="o", markersize=6, color=_OVER_COLOR if over else _WITHIN_COLOR, zorder=3)
        if shipped:
            ax.plot([x], [y], marker="o", markersize=12, markerfacecolor="none", markeredgecolor="black", zorder=4)
    shown = [y for y in ys if not math.isnan(y)] + [0.0] + ([budget * 100] if budget is not None else [])
    if budget is not None:
        ax.axhline(budget * 100, color=_BUDGET_COLOR, linestyle="--", linewidth=1)
    low, high = min(shown), max(shown)
    pad = (high - low) * 0.15 or 0.5
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(0.5, len(xs) + 0.5)
    ax.set_xticks(xs)
    ax.axhline(0, color="#A0A0A0", linewidth=0.5)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g} %"))
    ax.set_title(_plain(textwrap.shorten(name, 28, placeholder="…")), fontsize=9)
    ax.set_xlabel("remedy (order tried)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", linewidth=0.5, alpha=0.5)
