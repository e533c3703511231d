"""The one contract every pass keeps, so that flows can run any of them the same way.

A pass is a module in `passes/` with a typed config (a frozen dataclass with `check(spec)`) and a function
`run(inputs: PassInput, config) -> PassResult`. The result carries the model after the pass (the same one when the
pass builds per-task paths instead), the spec, what it built per task, and a record that writes itself into the
manifest (`to_manifest()`, JSON-serialisable). `passes/registry.py` lists every pass by name; flows run them through
`flows/passes.py`'s `pass_step` only.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Protocol, TypeVar

from torch import nn

from edgemtl.analysis.cost import ModelCost
from edgemtl.data import TaskData
from edgemtl.data.sources import DataSource
from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec

T = TypeVar("T")
P = TypeVar("P")
Progress = Callable[[int, int, str], None]   # (done, total, what it is on)


def silent(done: int, total: int, what: str) -> None:  # noqa: ARG001
    """Progress that goes nowhere (outside a flow step)."""


def no_data(needed_for: str) -> EdgemtlError:
    """The one-line error for work that needs real images and has none."""
    return EdgemtlError(f"{needed_for} needs real images: pass --data (a built-in set, an .npz, a folder of images or "
                        "package.module:function; see docs/own-model.md)")


def report_progress(progress: Progress, items: Iterable[T], what: str) -> Iterator[T]:
    """`items`, one by one, reported to `progress` ("QAT depth", 2 of 5); a pair is labelled by its first element
    (a task name)."""
    items = list(items)
    for index, item in enumerate(items):
        progress(index, len(items), f"{what} {item[0] if isinstance(item, tuple) else item}")
        yield item
    progress(len(items), len(items), what)


class PassConfig(Protocol):
    """A pass's typed config: its fields are checked when it is made; `check` adds what only the model can tell."""

    def check(self, spec: ModelSpec) -> None: ...


class PassRecord(Protocol):
    """What a pass did and what it cost; `to_manifest()` is its entry under manifest["passes"][name]."""

    def to_manifest(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Skip:
    """The record of a pass that had nothing to do for this model or data (and why)."""

    reason: str

    def to_manifest(self) -> dict[str, Any]:
        return {"skipped": self.reason}


@dataclass(frozen=True)
class PassInput:
    """What a pass reads: the model and spec, the tasks to work on, and what the flow knows so far."""

    model: nn.Module
    spec: ModelSpec
    tasks: list[str]
    task_models: Mapping[str, nn.Module] = field(default_factory=dict)  # a task's own model (its expert path)
    source: DataSource | None = None      # the compile's data (train / val splits); None: no --data
    held_out: TaskData | None = None      # the held-out split every metric is scored on
    labelled: list[str] = field(default_factory=list)  # tasks `held_out` labels (and that have a metric)
    cost: ModelCost | None = None         # `model_cost(model, spec, tasks)` when the flow has it
    bundle: Path | None = None            # the only place a pass may write its artifacts (None: nowhere)
    model_sha256: str | None = None       # the sha256 of the file the compile loaded the model from (LoadedModel)
    progress: Progress = silent

    def task_model(self, task: str) -> nn.Module:
        """The model deployed for one task: its own path when one was built, else the whole model."""
        return self.task_models.get(task, self.model)

    def need_source(self, needed_for: str) -> DataSource:
        """The data source; without one, a one-line error saying what needed it."""
        if self.source is None:
            raise no_data(needed_for)
        return self.source

    def need_held_out(self, needed_for: str) -> TaskData:
        """The held-out split (loaded by the flow's load_data step); the same one-line error without data."""
        source = self.need_source(needed_for)
        return self.held_out if self.held_out is not None else source.load("val")

    def each(self, items: Iterable[T], what: str) -> Iterator[T]:
        return report_progress(self.progress, items, what)


@dataclass(frozen=True)
class PassResult(Generic[P]):
    """The one thing every pass returns."""

    model: nn.Module                      # the model after the pass (the input one for a per-task pass)
    spec: ModelSpec
    record: PassRecord
    paths: dict[str, P] = field(default_factory=dict)  # per task: what the pass built (a path, a quantized graph)

    @property
    def skipped(self) -> str | None:
        return self.record.reason if isinstance(self.record, Skip) else None

    @classmethod
    def skip(cls, inputs: PassInput, reason: str) -> PassResult[Any]:
        return cls(inputs.model, inputs.spec, Skip(reason))


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its name, config type, where its `run` lives (imported on use: the brevitas pass alone
    costs seconds to import), a one-line description, and why it needs data, if it does."""

    name: str
    config: type[PassConfig]
    module: str
    description: str
    needs_data: str | None = None         # e.g. "pruning needs real images for ..." (a compile without data stops early)

    def run(self, inputs: PassInput, config: Any) -> PassResult[Any]:
        if not isinstance(config, self.config):
            raise TypeError(f"pass {self.name!r} takes a {self.config.__name__}, not a {type(config).__name__}")
        return importlib.import_module(self.module).run(inputs, config)


@dataclass(frozen=True)
class PassRequest:
    """One pass a compile runs before its flow (`CompileOptions.passes`), with its typed config."""

    name: str
    config: Any
