"""Flows: an ordered list of named steps for a target, run with timings recorded in the manifest.

As in FINN's builder, each step is a plain function of a shared context; the runner times it, records
`{"name", "seconds", "status"}` in `manifest["steps"]`, and stops at the first failure (the bundle is
then discarded by `staged_bundle`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

import numpy as np
from torch import nn

from edgemtl.analysis.cost import ModelCost
from edgemtl.data import TaskData
from edgemtl.data.sources import DEFAULT_HOLDOUT, DataSource
from edgemtl.errors import EdgemtlError
from edgemtl.model.checkpoint import LoadedModel
from edgemtl.model.intgraph import IntGraph
from edgemtl.passes.base import PassRequest, silent
from edgemtl.targets import Target

if TYPE_CHECKING:
    from edgemtl.passes.partition_experts import PartitionConfig
    from edgemtl.passes.quantize_brevitas import QuantTaskPath


@dataclass(frozen=True)
class CompileOptions:
    """What the user asked of a compile, beyond the model and the target."""

    tasks: list[str] | None = None        # None = all tasks in the spec
    data: str | None = None               # --data reference (edgemtl.data.sources; default: the spec's built-in set)
    resize: bool = False                  # resize the data's images to the spec's input (else a size mismatch is an error)
    holdout: tuple[float, float] = DEFAULT_HOLDOUT  # val, test fractions of a source that names no split (--holdout)
    verify_samples: int = 16
    metric_samples: int = 256
    tolerance: float = 1e-3               # max |ORT - PyTorch| allowed, relative to max(1, max |PyTorch|)
    latency_runs: int = 100
    latency_max_seconds: float = 10.0     # per measurement
    threads: int = 0                      # 0 = all cores of this machine
    measure_latency: bool = True
    passes: tuple[PassRequest, ...] = ()  # passes run before the flow, in order (--prune-flops: prune_pagcp)
    experts: "PartitionConfig | None" = None  # expert-path policy for MoE models (default: PartitionConfig())
    precision: str | None = None          # quantized targets: e.g. w4a4, w8a8 (default: the target's first)
    qat_steps: int = 300                  # quantization-aware fine-tuning steps per task (at most: early stopping)
    layer_bits: dict[str, tuple[int, int]] = field(default_factory=dict)  # per-layer (weight, act) bits; first / last allowed
    task_layer_bits: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # --layer-bits FILE: per task
    max_drop: dict[str, float] = field(default_factory=dict)  # accuracy budget per task ("*": every task), over the target's
    allow_over_budget: bool = False       # ship a task over its budget (said so) instead of failing the compile
    stop_after: str | None = None  # the last step to run (FINN's stop_step): a partial bundle, said so in its manifest
    csim_samples: int = 4                 # samples run through the HLS C simulation per task
    c_samples: int = 32                   # MCU: real samples the generated C must match bit for bit on the host
    qemu_samples: int = 4                 # MCU: of those, run under qemu rv32 (about 1 s per sample per task)


@dataclass
class FlowState:
    """What steps hand each other (never written to the manifest), each field with the step that fills it; a step
    reading a field an earlier step did not fill finds its empty default."""

    tasks: list[str] = field(default_factory=list)          # compile_model: the tasks asked for
    source: DataSource | None = None                         # compile_model: the --data source (None: no data)
    data: TaskData | None = None                             # load_data: the held-out split
    labelled_tasks: list[str] = field(default_factory=list)  # load_data: tasks `data` labels that have a metric
    cost: ModelCost | None = None                            # analyse
    task_models: dict[str, nn.Module] = field(default_factory=dict)  # partition_experts: a task's expert path
    hls4ml_refused: dict[str, str] = field(default_factory=dict)     # hls4ml_op_check: task -> the op hls4ml lacks
    quantized: dict[str, QuantTaskPath] = field(default_factory=dict)  # quantize_brevitas: each task's QAT path
    int_graphs: dict[str, IntGraph] = field(default_factory=dict)    # quantize_int8: each task's integer graph
    # c_codegen (gap9): each task's quantized inputs and the reference executor's outputs the C must match exactly
    c_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class FlowContext:
    loaded: LoadedModel
    target: Target
    options: CompileOptions
    bundle: Path                          # the staging folder; artifacts are written here
    manifest: dict[str, Any]
    state: FlowState = field(default_factory=FlowState)  # hand-over between steps (not written)
    # a long step reports its progress here (done, total, what it is on): run_steps draws it as a bar with counts
    # and time left; without a console it goes nowhere
    progress: Callable[[int, int, str], None] = silent


@dataclass(frozen=True)
class Skipped:
    """What a step returns when it had nothing to do for this model or these options: recorded as status
    "skipped" with the reason (not "ok"), and said so on the console."""

    reason: str


Step = tuple[str, Callable[[FlowContext], "Skipped | None"]]


@contextlib.contextmanager
def _step_progress(console: Console, title: str) -> Iterator[Callable[[int, int, str], None]]:
    """A transient bar for one step: a spinner until the step reports progress, then counts and time left. Not on a
    pipe or a log file: a live display there only leaves blank lines between the step lines."""
    if not console.is_terminal:
        yield FlowContext.progress
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(title, total=None)

        def report(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{title}: {what}" if what else title)

        yield report


def run_steps(steps: list[Step], context: FlowContext, console: Console) -> None:
    """Run every step in order; record it (also when it fails) and re-raise the failure."""
    records = context.manifest.setdefault("steps", [])
    for index, (name, step) in enumerate(steps, 1):
        start = time.perf_counter()
        record: dict[str, Any] = {"name": name, "seconds": 0.0, "status": "running"}
        records.append(record)
        try:
            with _step_progress(console, f"[{index}/{len(steps)}] {name}") as progress:
                context.progress = progress
                outcome = step(context)
        except BaseException as exc:
            record.update(seconds=round(time.perf_counter() - start, 3), status="failed")
            if not isinstance(exc, EdgemtlError):  # bad input already says what failed, in one line
                console.print(f"[red]x[/red] {name} failed after {record['seconds']:.1f} s")
            raise
        finally:
            context.progress = FlowContext.progress  # the silent default: progress outside a step goes nowhere
        record.update(seconds=round(time.perf_counter() - start, 3), status="ok")
        if isinstance(outcome, Skipped):
            record.update(status="skipped", reason=outcome.reason)
            console.print(f"[yellow]skipped[/yellow] {name}: {outcome.reason}")
        else:
            console.print(f"[green]ok[/green] {name} ({record['seconds']:.1f} s)")
