"""What every flow's steps share: the chosen tasks, the thread count, the model of each task, inputs, and the two
steps every flow starts with (load_data, analyse)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
from torch import nn

from edgemtl.analysis.cost import model_cost
from edgemtl.flow import FlowContext, Skipped
from edgemtl.passes.base import report_progress

T = TypeVar("T")
ALL_TASKS = "all_tasks"   # the manifest's entry for the whole model (every head)


def task_list(ctx: FlowContext) -> list[str]:
    return ctx.state.tasks


def with_progress(ctx: FlowContext, items: Iterable[T], what: str) -> Iterator[T]:
    """`items`, one by one, reported to the step's progress bar ("QAT depth", 2 of 5, time left); a pair is
    labelled by its first element (a task name)."""
    return report_progress(ctx.progress, items, what)


def threads_of(ctx: FlowContext) -> int:
    return ctx.options.threads or os.cpu_count() or 1


def task_model(ctx: FlowContext, task: str) -> nn.Module:
    """The model deployed for one task: its expert path when one was built, else the whole model."""
    return ctx.state.task_models.get(task, ctx.loaded.model)


def verification_inputs(ctx: FlowContext) -> tuple[np.ndarray, str]:
    """Real normalised samples from the data when given, else seeded noise (said so)."""
    data = ctx.state.data
    if data is not None:
        count = min(ctx.options.verify_samples, len(data))
        return data.normalise(data.images[:count]).astype(np.float32), f"{data.name}/{data.split}"
    generator = np.random.default_rng(0)
    shape = (ctx.options.verify_samples, *ctx.loaded.spec.input.shape)
    return generator.standard_normal(shape).astype(np.float32), "random normal inputs (no data set given)"


def load_verification_data(ctx: FlowContext) -> Skipped | None:
    """The held-out split of the `--data` source (or the spec's built-in set), when there is one.

    Its images feed verification; its labels feed metrics for the tasks that have labels there (and a metric: raw
    heads are verified by their error against PyTorch only)."""
    source = ctx.state.source
    if source is None:
        return Skipped("no data source: verification uses seeded noise")
    data = source.load("val", n=ctx.options.metric_samples)
    ctx.state.data = data
    ctx.state.labelled_tasks = [t for t in task_list(ctx) if t in data.labelled and ctx.loaded.spec.task(t).metric != "none"]
    ctx.manifest["model"]["verification_data"] = f"{source.reference}/val"


def analyse(ctx: FlowContext) -> None:
    """Per-task params, MACs, peak activation memory and the shared fraction of the backbone."""
    analysed = model_cost(ctx.loaded.model, ctx.loaded.spec, task_list(ctx))
    ctx.state.cost = analysed
    cost = analysed.to_dict()
    for name in task_list(ctx):
        ctx.manifest["tasks"][name].update(cost["tasks"][name])
    ctx.manifest[ALL_TASKS].update(cost[ALL_TASKS])
    ctx.manifest["model"]["total_params"] = cost["total_params"]
