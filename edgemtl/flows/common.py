"""What every flow's steps share: the chosen tasks, the thread count, the model of each task, inputs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
from torch import nn

from edgemtl.data.sources import DataSource
from edgemtl.errors import EdgemtlError
from edgemtl.flow import FlowContext

T = TypeVar("T")


def task_list(ctx: FlowContext) -> list[str]:
    return ctx.state["tasks"]


def with_progress(ctx: FlowContext, items: Iterable[T], what: str) -> Iterator[T]:
    """`items`, one by one, reported to the step's progress bar ("QAT depth", 2 of 5, time left); a pair is
    labelled by its first element (a task name)."""
    items = list(items)
    for index, item in enumerate(items):
        ctx.progress(index, len(items), f"{what} {item[0] if isinstance(item, tuple) else item}")
        yield item
    ctx.progress(len(items), len(items), what)


def threads_of(ctx: FlowContext) -> int:
    return ctx.options.threads or os.cpu_count() or 1


def task_model(ctx: FlowContext, task: str) -> nn.Module:
    """The model deployed for one task: its expert path when one was built, else the whole model."""
    return ctx.state.get("task_models", {}).get(task, ctx.loaded.model)


def data_source(ctx: FlowContext, needed_for: str) -> DataSource:
    """The `--data` source of this compile; without one, a one-line error saying what needed it."""
    source = ctx.state.get("source")
    if source is None:
        raise EdgemtlError(f"{needed_for} needs real images: pass --data (a built-in set, an .npz, a folder of images "
                           "or package.module:function; see docs/own-model.md)")
    return source


def verification_inputs(ctx: FlowContext) -> tuple[np.ndarray, str]:
    """Real normalised samples from the data when given, else seeded noise (said so)."""
    data = ctx.state.get("data")
    if data is not None:
        count = min(ctx.options.verify_samples, len(data))
        return data.normalise(data.images[:count]).astype(np.float32), f"{data.name}/{data.split}"
    generator = np.random.default_rng(0)
    shape = (ctx.options.verify_samples, *ctx.loaded.spec.input.shape)
    return generator.standard_normal(shape).astype(np.float32), "random normal inputs (no data set given)"
