"""The rich tables the command line prints (metrics, pruning, MoE MACs, a width space, profile results, the results store's
history).

Kept apart from cli.py so the command definitions stay a page of parsing and calls; each table takes the library's own
result objects and adds no logic of its own."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:g}"


def metrics_table(title: str, metrics: dict[str, dict[str, float]], spec: Any) -> Table:
    table = Table(title=title)
    for column in ("task", "kind", "metric", "value", "better", "other metrics"):
        table.add_column(column)
    for name, values in metrics.items():
        task = spec.task(name)
        others = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != task.metric)
        table.add_row(name, task.kind, task.metric, f"{values[task.metric]:.4f}",
                      "higher" if task.higher_is_better else "lower", others)
    return table


def prune_tables(record: Any, spec: Any, pruned_spec: Any) -> list[Table]:
    """`edgemtl prune`'s two tables: the layers it narrowed, and every task's metric before and after."""
    layers = Table(title=f"kept channels per layer (PAGCP, {record.rounds} rounds, {record.seconds:.0f} s)")
    for column in ("layer", "channels", "kept"):
        layers.add_column(column)
    widths = pruned_spec.config["widths"]
    for layer, ratio in record.kept_ratios.items():
        if ratio < 1:
            layers.add_row(layer, str(widths[layer]), f"{ratio:.0%}")
    table = Table(title=f"per-task metric before -> after (MACs {human(record.macs_before)} -> {human(record.macs_after)}, "
                        f"params {human(record.params_before)} -> {human(record.params_after)})")
    for column in ("task", "metric", "before", "after", "better"):
        table.add_column(column)
    for task in spec.tasks:
        before, after = record.metrics_before.get(task.name, {}), record.metrics_after.get(task.name, {})
        metric = task.metric if task.metric in before else "sqnr_db_vs_float"  # no labels: agreement with the float model
        if metric in before:
            table.add_row(task.name, metric, f"{before[metric]:.4f}", f"{after[metric]:.4f}",
                          "higher" if metric != task.metric or task.higher_is_better else "lower")
    return [layers, table]


def expert_usage_table(usage: dict[str, dict[str, list[float]]], coverage: float = 0.95) -> Table:
    """Per MoE layer and task, how few experts take `coverage` of the task's tokens in training's closing steps (the
    experts a task path would keep at that coverage)."""
    table = Table(title=f"expert use in the last 10% of training steps (experts taking {coverage:.0%} of a task's tokens)")
    for column in ("layer", "task", "experts", "largest shares"):
        table.add_column(column)
    for layer, tasks in usage.items():
        for task, shares in tasks.items():
            ranked = sorted(enumerate(shares), key=lambda pair: -pair[1])
            needed = next((i + 1 for i in range(len(ranked)) if sum(s for _, s in ranked[: i + 1]) >= coverage - 1e-9),
                          len(ranked))
            table.add_row(layer, task, f"{needed} of {len(shares)}", ", ".join(f"e{e} {s:.0%}" for e, s in ranked[:4]))
    return table


def moe_table(moe: dict) -> Table:
    """Single-task MACs (top-k experts per token + router) beside all tasks and a dense ViT."""
    table = Table(title="mixture of experts, batch 1: a task runs its own routing (top-k experts per token + router)")
    for column in ("task", "MACs", "share of all tasks (same model)", "dense ViT, this task", "dense ViT, all tasks (shared encoder)"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for name, entry in moe["tasks"].items():
        table.add_row(name, human(entry["macs"]), f"{entry['share_of_all_tasks']:.1%}", human(entry["dense_vit_single_task_macs"]),
                      human(moe["dense_vit_all_tasks_macs"]))
    table.caption = (f"all tasks with this model: {human(moe['all_tasks_same_model_macs'])} MACs (the backbone runs once per task); "
                     f"router {human(moe['router_macs'])}, experts {human(moe['expert_macs'])} per task; dense ViT figures derived")
    return table


def profile_table(result: Any) -> Table:
    table = Table(title=f"{result.device_key} ({result.provenance.upper()}): {result.description}")
    for column in ("task", "runtime", "median ms", "p90 ms", "min ms", "runs", "max |diff|", "output check"):
        table.add_column(column, justify="right" if column.endswith(("ms", "runs", "|diff|")) else "left")
    for name, runtimes in result.tasks.items():
        for runtime, outcome in runtimes.items():
            m = outcome.measurement
            if m is None:
                table.add_row(name, runtime, "", "", "", "", "", "skipped (below)")
                continue
            mark = ""
            if result.chosen.get(name) == runtime:
                mark = " [b]shipped[/b]" if result.provenance == "measured" else " (fastest)"
            check = {True: "passed", False: "[red]FAILED[/red]", None: "no reference"}[m.check_passed]
            table.add_row(name, runtime + mark, f"{m.median_ms:.3f}", f"{m.p90_ms:.3f}", f"{m.min_ms:.3f}", str(m.runs),
                          "" if m.max_abs_diff is None else f"{m.max_abs_diff:.2g}", check)
    return table


def history_table(rows: Any, path: Any) -> Table:
    table = Table(title=f"results store {path} ({len(rows)} rows)")
    for column in ("id", "time (UTC)", "device", "task", "runtime", "median ms", "p90 ms", "min ms", "runs", "check",
                   "provenance", "artifact sha256", "bundle"):
        table.add_column(column, justify="right" if column.endswith(("ms", "runs", "id")) else "left")
    for r in rows:
        check = {True: "passed", False: "FAILED", None: "-"}[r.check_passed]
        table.add_row(str(r.id), r.timestamp.replace("+00:00", ""), r.device_key, r.task, r.runtime, f"{r.median_ms:.3f}",
                      f"{r.p90_ms:.3f}", f"{r.min_ms:.3f}", str(r.runs), check, r.provenance, r.artifact_sha256[:12], r.bundle)
    return table


def widths_table(spec: Any) -> Table | None:
    """A slimmable model's width space (each encoder stage and task decoder: full channels, the multipliers it allows
    and the channels each keeps, its modules), or the configuration a sliced model was cut at; None for neither."""
    from edgemtl.model.widths import channels_at

    if spec.widths is not None:
        space = spec.widths
        table = Table(title=f"width space: {space.size():,} configurations (docs/widths.md)")
        for column in ("part", "name", "full channels", "multipliers", "channels kept", "modules"):
            table.add_column(column, justify="right" if column == "full channels" else "left")
        for part, options in (("encoder stage", space.stages), ("decoder", space.decoders)):
            for name, option in options.items():
                kept = " / ".join(str(channels_at(option.channels, m)) for m in option.multipliers) \
                    if option.channels else "-"
                table.add_row(part, name, str(option.channels), ", ".join(f"{m:g}" for m in option.multipliers), kept,
                              ", ".join(option.modules) or "-")
        return table
    if spec.sliced_at is not None:
        table = Table(title="sliced at this width configuration (not slimmable any more)")
        for column in ("part", "name", "multiplier"):
            table.add_column(column)
        for part, chosen in (("encoder stage", spec.sliced_at.encoder), ("decoder", spec.sliced_at.decoders)):
            for name, multiplier in chosen.items():
                table.add_row(part, name, f"{multiplier:g}")
        return table
    return None


def widths_json(spec: Any) -> dict[str, Any]:
    """`inspect --json`'s part for the same: {"width_space": {...the space, "size": N}} or {"sliced_at": {...}}."""
    if spec.widths is not None:
        return {"width_space": {**spec.widths.model_dump(), "size": spec.widths.size()}}
    if spec.sliced_at is not None:
        return {"sliced_at": spec.sliced_at.model_dump()}
    return {}
