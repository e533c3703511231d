"""The int8 step two flows share: every task path (an MoE model's expert path) as an integer graph, through the
`quantize_int8` pass, its calibration remedies tried until each task is within its accuracy budget. The GAP9 flow
runs it for every model, the ZCU104 flow for mixture-of-experts models (whose HLS C++ comes from the integer graph);
both keep the same record and the same files, so one reader serves both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from edgemtl.flow import FlowContext
from edgemtl.flows.budget import budget_record, budget_settings, compile_budget
from edgemtl.flows.passes import StepFn, pass_step, requested_config
from edgemtl.model.intgraph import IntGraph
from edgemtl.passes.int8.config import Int8Config
from edgemtl.passes.base import PassResult

# what a task over its budget after every calibration remedy can try next (the integer backends take int8 only)
NEXT_TRY = "a model trained or fine-tuned with quantization in mind (the int8 graph has no wider layers to fall back to)"


def int8_config(ctx: FlowContext) -> Int8Config:
    """The pass's config with the compile's accuracy budget."""
    return replace(requested_config(ctx.options, "quantize_int8"), **budget_settings(ctx))


def keep_int_graphs(ctx: FlowContext, result: PassResult[IntGraph]) -> None:
    """Each task's int8 record (float vs int8 metric, the remedies tried) and budget record in its entry; the integer
    graphs saved in the bundle (tasks/<task>/intgraph) and kept for the later steps."""
    budget = compile_budget(ctx)
    for task, record in result.record.tasks.items():
        entry = ctx.manifest["tasks"][task]
        entry["int8"] = record
        if record.get("ok"):
            metric = record.get("metric")
            entry["budget"] = budget_record(
                budget, task, metric=metric, higher_is_better=record.get("higher_is_better"),
                metric_float=record["metric_float"][metric] if metric else None,
                metric_quant=record["metric_int8"][metric] if metric else None, loss=record["relative_loss"],
                remedies=[{"name": a["remedy"], **{k: v for k, v in a.items() if k != "remedy"}} for a in record["attempts"]],
                shipped=record["remedy"], next_try=NEXT_TRY, unseen=record.get("unseen"))
    for task, graph in result.paths.items():
        relative = f"tasks/{task}/intgraph"
        graph.save(ctx.bundle / relative)
        ctx.manifest["tasks"][task].setdefault("artifacts", {})["intgraph"] = relative
    ctx.state.int_graphs = dict(result.paths)


def int8_step(skip: Callable[[FlowContext], str | None] | None = None) -> StepFn:
    """The `quantize_int8` step: per-channel int8 post-training quantization of every task path, calibrated on real
    training images and scored float vs int8 on the held-out split, remedies in order until within budget; `skip`
    says why a flow leaves it out for a model."""
    return pass_step("quantize_int8", config=lambda ctx: int8_config(ctx), keep=keep_int_graphs, skip=skip)
