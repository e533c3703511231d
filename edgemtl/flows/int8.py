"""The int8 step two flows share: every task path (an MoE model's expert path) as an integer graph, through the
`quantize_int8` pass. The GAP9 flow runs it for every model, the ZCU104 flow for mixture-of-experts models (whose
HLS C++ comes from the integer graph); both keep the same record and the same files, so one reader serves both.
"""

from __future__ import annotations

from typing import Callable

from edgemtl.flow import FlowContext
from edgemtl.flows.passes import StepFn, pass_step
from edgemtl.model.intgraph import IntGraph
from edgemtl.passes.base import PassResult


def keep_int_graphs(ctx: FlowContext, result: PassResult[IntGraph]) -> None:
    """Each task's int8 record (float vs int8 metric) in its entry; the integer graphs saved in the bundle
    (tasks/<task>/intgraph) and kept for the later steps."""
    for task, record in result.record.tasks.items():
        ctx.manifest["tasks"][task]["int8"] = record
    for task, graph in result.paths.items():
        relative = f"tasks/{task}/intgraph"
        graph.save(ctx.bundle / relative)
        ctx.manifest["tasks"][task].setdefault("artifacts", {})["intgraph"] = relative
    ctx.state.int_graphs = dict(result.paths)


def int8_step(skip: Callable[[FlowContext], str | None] | None = None) -> StepFn:
    """The `quantize_int8` step: per-channel int8 post-training quantization of every task path, calibrated on real
    training images and scored float vs int8 on the held-out split; `skip` says why a flow leaves it out for a model."""
    return pass_step("quantize_int8", keep=keep_int_graphs, skip=skip)
