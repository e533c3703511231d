"""The host flow: ONNX graphs per task path and for all tasks, verified and timed in ONNX Runtime.

Steps: load_data -> analyse -> partition_experts (MoE models) -> export_onnx -> verify_onnxruntime ->
evaluate_metrics -> measure_latency -> task_switching (MoE models). A task's graph is its expert path
when the model has experts; the all-task graph is always the whole model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pydantic import Field

from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.manifest import Latency, TaskEntry, manifest_model
from edgemtl.model.onnx_export import export_all_tasks, export_task
from edgemtl.data import TaskData
from edgemtl.errors import VerificationError
from edgemtl.evaluate import evaluate, torch_predictor
from edgemtl.flow import FlowContext, Skipped, Step
from edgemtl.flows.common import (ALL_TASKS, analyse, load_verification_data, task_list, task_model, threads_of,
                                  verification_inputs)
from edgemtl.flows.experts import partition_step, switching_step
from edgemtl.model.contract import run_task
from edgemtl.timing import measure

def export_onnx(ctx: FlowContext) -> None:
    model, spec = ctx.loaded.model, ctx.loaded.spec
    for name in task_list(ctx):
        relative = f"tasks/{name}/model.onnx"
        export_task(task_model(ctx, name), spec, name, ctx.bundle / relative)
        ctx.manifest["tasks"][name]["artifacts"] = {"onnx": relative}
    relative = f"{ALL_TASKS}/model.onnx"
    export_all_tasks(model, spec, task_list(ctx), ctx.bundle / relative)
    ctx.manifest[ALL_TASKS]["artifacts"] = {"onnx": relative}


def verify_onnxruntime(ctx: FlowContext) -> None:
    """Every exported graph against PyTorch on the same inputs; a mismatch beyond tolerance fails the compile."""
    images, source = verification_inputs(ctx)
    x, paths = torch.from_numpy(images), ctx.state.task_models
    with torch.no_grad():  # the all-task graph is the whole model; a task's graph may be its expert path
        whole = {name: run_task(ctx.loaded.model, x, name).numpy() for name in task_list(ctx)}
        own = {name: run_task(paths[name], x, name).numpy() if name in paths else whole[name] for name in task_list(ctx)}
    failures = []
    graphs = [(name, ctx.manifest["tasks"][name], [name], own) for name in task_list(ctx)]
    graphs.append((ALL_TASKS, ctx.manifest[ALL_TASKS], task_list(ctx), whole))
    for graph, entry, outputs, reference in graphs:
        session = ort_backend.make_session(ctx.bundle / entry["artifacts"]["onnx"], threads_of(ctx))
        got = ort_backend.run(session, images)
        errors = {t: float(np.abs(got[t] - reference[t]).max()) for t in outputs}
        allowed = {t: ctx.options.tolerance * max(1.0, float(np.abs(reference[t]).max())) for t in outputs}
        passed = all(errors[t] <= allowed[t] for t in outputs)
        entry["verification"] = {"max_abs_error": errors if graph == ALL_TASKS else errors[graph],
                                 "samples": len(images), "tolerance": allowed if graph == ALL_TASKS else allowed[graph],
                                 "data": source, "runtime": "onnxruntime", "passed": passed}
        entry["max_abs_error"] = max(errors.values())
        if not passed:
            failures.append(f"{graph} (max abs error {max(errors.values()):.3g})")
    if failures:
        raise VerificationError(f"ONNX Runtime disagrees with PyTorch beyond tolerance for {', '.join(failures)}")


def evaluate_metrics(ctx: FlowContext) -> Skipped | None:
    """Task metrics of the deployed all-task graph and of PyTorch on held-out data (skipped without data)."""
    data: TaskData | None = ctx.state.data
    tasks = [ctx.loaded.spec.task(t) for t in ctx.state.labelled_tasks]
    if data is None:
        return Skipped("no held-out data with labels (pass --data)")
    for name in set(task_list(ctx)) - {t.name for t in tasks}:
        ctx.manifest["tasks"][name]["metrics_note"] = (f"no labels (or no metric) for task {name!r} in {data.name}: "
                                                       "verified against PyTorch only")
    if not tasks:
        return Skipped(f"no task has labels and a metric in {data.name}: verified against PyTorch only")
    session = ort_backend.make_session(ctx.bundle / ctx.manifest[ALL_TASKS]["artifacts"]["onnx"], threads_of(ctx))

    def ort_predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in ort_backend.run(session, images.numpy()).items()}

    deployed = evaluate(ort_predict, tasks, data)
    eager = evaluate(torch_predictor(ctx.loaded.model), tasks, data)
    for task in tasks:
        ctx.manifest["tasks"][task.name].update(
            metrics=deployed[task.name], metrics_pytorch=eager[task.name], primary_metric=task.metric,
            higher_is_better=task.higher_is_better, metrics_data=f"{data.name}/{data.split} ({len(data)} samples)",
        )


ALL_TASKS_FLOOR = 0.9  # the all-task median below this share of the slowest single task's: implausible


def measure_latency(ctx: FlowContext) -> Skipped | None:
    """Batch-1 latency per graph: ONNX Runtime vs PyTorch eager, same thread count, same run."""
    if not ctx.options.measure_latency:
        return Skipped("--no-latency")
    threads, opts = threads_of(ctx), ctx.options
    image = verification_inputs(ctx)[0][:1]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for graph in [*task_list(ctx), ALL_TASKS]:
            entry = ctx.manifest[ALL_TASKS] if graph == ALL_TASKS else ctx.manifest["tasks"][graph]
            x = torch.from_numpy(image)

            def eager(graph: str = graph) -> None:
                with torch.no_grad():
                    ctx.loaded.model(x) if graph == ALL_TASKS else run_task(task_model(ctx, graph), x, graph)

            # PyTorch first, and each ONNX Runtime session freed after use: ORT's idle worker threads
            # spin for a while and would steal the cores from whatever is timed next.
            eager_latency = measure(eager, runtime=f"pytorch-eager {torch.__version__}", threads=threads,
                                    runs=opts.latency_runs, max_seconds=opts.latency_max_seconds)
            session = ort_backend.make_session(ctx.bundle / entry["artifacts"]["onnx"], threads)
            onnx_latency = ort_backend.time_session(session, image, threads, opts.latency_runs, opts.latency_max_seconds)
            del session
            entry["latency_ms"] = onnx_latency.to_dict()
            entry["latency_ms_pytorch"] = eager_latency.to_dict()
            entry["speedup_vs_pytorch"] = eager_latency.median / onnx_latency.median
            if onnx_latency.warnings() or eager_latency.warnings():
                entry["speedup_vs_pytorch_warning"] = "from a flagged timing: " + "; ".join(
                    [*onnx_latency.warnings(), *eager_latency.warnings()])
    finally:
        torch.set_num_threads(previous_threads)
    _cross_check_all_tasks(ctx)


def _cross_check_all_tasks(ctx: FlowContext) -> None:
    """The all-task graph runs every head, so its median cannot be well below the slowest single task's: when it
    is, the machine disturbed the timings, and the all-task figure says so."""
    singles = {task: ctx.manifest["tasks"][task]["latency_ms"]["median"] for task in task_list(ctx)
               if "latency_ms" in ctx.manifest["tasks"][task]}
    every = ctx.manifest[ALL_TASKS].get("latency_ms")
    if not singles or every is None or len(singles) < 2:
        return
    slowest = max(singles, key=singles.get)
    if every["median"] < ALL_TASKS_FLOOR * singles[slowest]:
        every.setdefault("warnings", []).append(
            f"implausible: below the slowest single task's median ({slowest}, {singles[slowest]:.3g} ms) although it "
            "runs every head; the timings were disturbed")


STEPS: list[Step] = [
    ("load_data", load_verification_data),
    ("analyse", analyse),
    ("partition_experts", partition_step),
    ("export_onnx", export_onnx),
    ("verify_onnxruntime", verify_onnxruntime),
    ("evaluate_metrics", evaluate_metrics),
    ("measure_latency", measure_latency),
    ("task_switching", switching_step),
]


class HostTask(TaskEntry):
    """The host flow's task entry: ONNX Runtime verification, metrics and latency beside PyTorch's."""

    verification: dict[str, Any] | None = Field(None, description="ORT vs PyTorch on real samples, per graph")
    max_abs_error: float | None = None
    metrics: dict[str, float] | None = Field(None, description="with the deployed all-task graph (evaluated)")
    metrics_pytorch: dict[str, float] | None = None
    metrics_data: str | None = None
    metrics_note: str | None = Field(None, description="why a task has no metrics (no labels in the data)")
    latency_ms: Latency | None = None
    latency_ms_pytorch: Latency | None = None
    speedup_vs_pytorch: float | None = None
    speedup_vs_pytorch_warning: str | None = None


MANIFEST = manifest_model(HostTask)
