"""The accuracy budget in every quantizing flow: each flow's quantization step writes one `tasks.<task>.budget`
record in the same shape (`budget_record`), and the `check_budget` step that follows it fails the compile on a task
over its budget (one line: the task, its best result, the next thing to try) unless --allow-over-budget was given.

Record: max_relative_loss and who set it, what the task is judged by (its metric, or 1 - cosine against float for
a task the data does not label), float -> quantized, relative_loss, within, every remedy tried in order with its
loss and its cost, the one shipped, and for a task over budget `next` (what to try) and `over_budget_allowed`. The
remedy decisions are taken on the held-out split the budget is judged on; `unseen` gives the shipped path's loss on
the test split, which none of them saw, so the user can tell the budget's number from a selected one.
"""

from __future__ import annotations

from typing import Any

from edgemtl.errors import EdgemtlError
from edgemtl.flow import FlowContext, Skipped
from edgemtl.flows.common import task_list
from edgemtl.passes.budget import AGREEMENT_METRIC, Budget, resolve


def compile_budget(ctx: FlowContext) -> Budget:
    """This compile's budget: --max-drop over the target file's default (checked in `check_options` first)."""
    return resolve(ctx.options.max_drop, task_list(ctx), ctx.target.max_drop, ctx.target.name,
                   ctx.options.allow_over_budget)


def budget_settings(ctx: FlowContext) -> dict[str, Any]:
    """The budget as every quantizing pass's config takes it: the default and each task's value."""
    budget = compile_budget(ctx)
    return {"max_relative_loss": budget.default, "budgets": {task: budget.of(task) for task in task_list(ctx)}}


def budget_record(budget: Budget, task: str, *, metric: str | None, higher_is_better: bool | None,
                  metric_float: float | None, metric_quant: float | None, loss: float,
                  remedies: list[dict[str, Any]], shipped: str, next_try: str,
                  unseen: dict[str, Any] | None = None) -> dict[str, Any]:
    """One task's budget record. `metric` None: judged by agreement with float (`loss` = 1 - cosine). `unseen`: the
    shipped path on the test split no decision saw (passes.budget.unseen_check), reported beside, not judged."""
    allowed = budget.of(task)
    within = loss <= allowed
    record: dict[str, Any] = {
        "max_relative_loss": allowed, "set_by": budget.origin(task),
        "judged_by": (f"{metric} ({'higher' if higher_is_better else 'lower'} is better), relative to float"
                      if metric else f"1 - {AGREEMENT_METRIC} (no labels: agreement with the float model)"),
        "metric": metric, "float": metric_float, "quantized": metric_quant, "relative_loss": loss,
        "within": within, "remedies": remedies, "shipped": shipped, "unseen": unseen}
    if not within:
        record.update(next=next_try, over_budget_allowed=budget.allow_over)
    return record


def over_budget_line(task: str, record: dict[str, Any]) -> str:
    """The one line a compile fails with for a task over its budget."""
    if record.get("metric"):
        result = f"{record['metric']} {record['float']:.4g} -> {record['quantized']:.4g}"
    else:
        result = f"1 - cosine against float {record['relative_loss']:.3g}"
    return (f"task {task!r} is over its accuracy budget after every remedy: best {result}, a relative loss of "
            f"{percent(record['relative_loss'])} > {percent(record['max_relative_loss'])} ({record['set_by']}); try "
            f"{record['next']}, a larger --max-drop {task}=X, or --allow-over-budget to ship it anyway")


def percent(share: float) -> str:
    """0.0127 -> '1.27%', 1e-6 -> '0.0001%': three significant digits, so a tiny budget does not read as 0.00%."""
    return f"{share * 100:.3g}%"


def check_budget(ctx: FlowContext) -> Skipped | None:
    """Every quantized task within its accuracy budget, or the compile fails naming the first one over it.

    With --allow-over-budget a task over it ships, and its record and the report say so."""
    records = {task: entry["budget"] for task, entry in ctx.manifest["tasks"].items() if "budget" in entry}
    if not records:
        return Skipped("no task was quantized")
    budget = compile_budget(ctx)
    ctx.manifest["quant_budget"] = {"default_max_relative_loss": budget.default, "set_by": budget.source,
                                    "per_task": dict(budget.per_task), "allow_over_budget": budget.allow_over,
                                    "over_budget": sorted(t for t, r in records.items() if not r["within"])}
    for task, record in records.items():
        if not record["within"] and not budget.allow_over:
            raise EdgemtlError(over_budget_line(task, record))
    return None
