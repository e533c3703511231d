"""Mixture-of-experts models: per task the experts its path keeps, its MACs against all tasks and a dense ViT, its
metric before and after the partition, the memory of both dispatch orders, the switchable artifact, and the figures
of expert usage and MoE memory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.report.expert_plots import expert_usage_heatmap
from edgemtl.report.fmt import (DASH, definitions, e, figures_html, human_bytes, human_count, human_ms, number_cell,
                                prov_words, table)
from edgemtl.report.memory_plots import moe_memory_plot
from edgemtl.report.read import number, section
from edgemtl.report.sections import Figures, TaskInput

PLOTS = (
    ("Expert usage per task: share of each MoE layer's routing mass per expert (calibration samples)",
     expert_usage_heatmap),
    ("MoE layers: peak on-chip memory and weight traffic per inference, token-major vs expert-major order",
     moe_memory_plot),
)


def applies(manifest: Mapping[str, Any]) -> bool:
    return bool(section(manifest, "moe") or _partition(manifest))


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    partition = _partition(manifest)
    if partition.get("skipped"):
        return "\n".join([f"<h2>Expert paths</h2>\n<p class=\"dim\">{e(partition['skipped'])}</p>",
                          *figures_html(PLOTS, manifest)])
    moe = section(manifest, "moe")
    macs, plans = section(moe, "macs"), section(moe, "memory_plan")
    rows = []
    for name, entry in section(partition, "tasks").items():
        if not isinstance(entry, Mapping):
            continue
        kept, ids = entry.get("experts_kept_count"), entry.get("experts_kept")
        before, after = number(entry.get("params_before")), number(entry.get("params_after"))
        task_macs = section(section(macs, "tasks"), name)
        totals = section(section(plans, name), "totals")
        rows.append("<tr>" + "".join((
            f"<td>{e(name)}</td>",
            f"<td>{_kept(kept, ids)}{_fallback(entry)}</td>",
            number_cell(after, human_count),
            f"<td>{human_count(before - after)} ({(before - after) / before:.1%})</td>" if before and after is not None
            else f"<td>{DASH}</td>",
            number_cell(entry.get("macs_after"), human_count),
            number_cell(task_macs.get("share_of_all_tasks"), lambda v: f"{v:.1%}"),
            number_cell(task_macs.get("dense_vit_single_task_macs"), human_count),
            f"<td>{e(entry.get('metric') or DASH)}</td>",
            number_cell(entry.get("metric_before"), lambda v: f"{v:.4g}"),
            number_cell(entry.get("metric_after"), lambda v: f"{v:.4g}"),
            number_cell(section(totals, "token_major").get("peak_on_chip_bytes"), human_bytes),
            number_cell(section(totals, "expert_major").get("peak_on_chip_bytes"), human_bytes),
        )) + "</tr>")
    coverage = number(partition.get("coverage"))
    title = "Expert paths" + (f" (coverage {coverage:.0%} of each task's routing mass)" if coverage is not None else "")
    parts = [table(title, ("Task", "Experts kept per MoE layer", "Params", "Params saved (vs every expert)", "MACs", "Share of all tasks' MACs",
                           "Dense ViT MACs (derived)", "Metric", "Before", "After", "Peak on-chip, token-major",
                           "Peak on-chip, expert-major"), rows)]
    items = _switching(moe)
    if any(value for _, value in items):
        parts.append(definitions(items))
    return "\n".join(parts + figures_html(PLOTS, manifest))


def _kept(counts: Any, ids: Any) -> str:
    """'3 / 1 (0 2 5 | 4)': experts kept per MoE layer, then which."""
    if not isinstance(counts, list):
        return DASH
    text = e(" / ".join(str(k) for k in counts))
    if isinstance(ids, list) and all(isinstance(layer, list) for layer in ids):
        text += f" <span class=\"dim\">({e(' | '.join(' '.join(str(i) for i in layer) for layer in ids))})</span>"
    return text


def _fallback(entry: Mapping[str, Any]) -> str:
    """Why a task keeps every expert it uses instead of the asked coverage (its held-out loss would be too high)."""
    reason = entry.get("fallback")
    return f"<br><span class=\"dim\">every expert it uses: {e(reason)}</span>" if isinstance(reason, str) and reason else ""


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def compare_figures(task: TaskInput) -> Figures:
    return {}


def _partition(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    return section(section(manifest, "passes"), "partition_experts")


def _switching(moe: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """All tasks' MACs against a dense ViT, and what one switchable artifact costs in memory and switch latency."""
    macs, switching = section(moe, "macs"), section(moe, "switching")
    memory, latency = section(switching, "resident_memory"), section(switching, "switch_latency")
    all_same, all_dense = number(macs.get("all_tasks_same_model_macs")), number(macs.get("dense_vit_all_tasks_macs"))
    switchable, per_task = number(memory.get("switchable_bytes")), number(memory.get("per_task_artifacts_bytes"))
    first, steady = number(latency.get("first_after_switch_ms")), number(latency.get("steady_ms"))
    return [("MACs of all tasks: this model / dense ViT with one shared encoder",
             f"{human_count(all_same)} / {human_count(all_dense)}" if all_same is not None and all_dense is not None
             else None),
            ("switchable artifact", e(switching.get("artifact")) if switching.get("artifact") else None),
            ("resident memory (one artifact / per-task artifacts)",
             f"{human_bytes(switchable)} / {human_bytes(per_task)}" if switchable is not None and per_task is not None
             else None),
            ("first inference after a task switch / steady state",
             f"{human_ms(first)} / {human_ms(steady)} {prov_words(latency.get('provenance'), 'measured')}"
             if first is not None and steady is not None else None)]
