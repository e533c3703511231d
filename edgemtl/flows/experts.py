"""Flow steps for task-conditioned mixture-of-experts models (M3ViT): expert paths and task switching.

`partition_experts` profiles each task's routing, builds the per-task expert paths that later steps
export as the per-task artifacts, and records the MoE MAC accounting and the memory plan of both
execution orders. `task_switching` exports the one artifact that serves every task by a task id, checks
it against PyTorch and measures what switching costs. On a model without experts both steps record
why they did nothing and the compile goes on.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from edgemtl.analysis.expert_usage import ExpertUsage
from edgemtl.analysis.memory_plan import MemoryPlan, on_chip_bytes_of, plan_moe_model, precision_bytes
from edgemtl.analysis.moe_cost import moe_macs
from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.model.onnx_export import INPUT_NAME
from edgemtl.backends.switchable import TASK_ID_NAME, export_switchable
from edgemtl.errors import VerificationError
from edgemtl.manifest import prov
from edgemtl.flow import FlowContext, Skipped
from edgemtl.flows.common import task_list, threads_of, verification_inputs
from edgemtl.flows.passes import StepFn, pass_step
from edgemtl.passes.base import PassResult
from edgemtl.passes.partition_experts import PartitionConfig, TaskExpertPath, has_experts
from edgemtl.profile.switching import resident_memory, switch_latency

SWITCHABLE = "switchable/model.onnx"


def _keep_paths(ctx: FlowContext, result: PassResult[TaskExpertPath], precision: str) -> None:
    """The expert paths for later steps; the MoE MAC accounting, the memory plan (at the precision the flow deploys)
    and each task's path in the manifest."""
    model, spec, tasks, record = ctx.loaded.model, ctx.loaded.spec, task_list(ctx), result.record
    ctx.state.task_models = dict(result.paths)
    ctx.manifest["moe"] = {
        "expert_usage": record.usage.to_dict(),
        "macs": moe_macs(model, spec, tasks, ctx.state.cost),
        "memory_plan": _memory_plans(ctx, result.paths, record.usage, precision),
    }
    for task, entry in record.tasks.items():
        ctx.manifest["tasks"][task]["expert_path"] = {
            "experts_kept": entry.experts_kept, "params": entry.params_after, "macs": entry.macs_after,
            "metric": entry.metric, "metric_before": entry.metric_before, "metric_after": entry.metric_after}


def partition_step_at(precision: Callable[[FlowContext], str]) -> StepFn:
    """The partition step of a flow whose MoE models deploy at `precision(ctx)` (the memory plan's bytes per value)."""
    return pass_step("partition_experts", config=lambda ctx: ctx.options.experts or PartitionConfig(),
                     keep=lambda ctx, result: _keep_paths(ctx, result, precision(ctx)))


# Expert usage, per-task expert paths, MoE MACs and the memory plan at the target's first precision (skipped without
# experts or without data).
partition_step = partition_step_at(lambda ctx: ctx.target.precisions[0])


def path_memory_plan(path: TaskExpertPath, usage: ExpertUsage, on_chip_bytes: int, weight_bytes: float,
                     activation_bytes: float) -> MemoryPlan:
    """Both execution orders of one task's expert path, with its experts' measured tokens per image."""
    per_image = [[math.ceil(layer.selected[e] / usage.samples) for e in moe.kept_experts]
                 for layer, moe in zip(usage.tasks[path.task], path.moe_layers())]
    return plan_moe_model(path, path.grid[0] * path.grid[1], on_chip_bytes, weight_bytes, activation_bytes,
                          tokens_per_expert=per_image)


def _memory_plans(ctx: FlowContext, paths: dict[str, TaskExpertPath], usage: ExpertUsage, precision: str) -> dict:
    """Token-major vs expert-major plan of each task's path, at the target's memory and `precision`."""
    weight_bytes, activation_bytes = precision_bytes(precision)
    on_chip = on_chip_bytes_of(ctx.target)
    return {task: path_memory_plan(path, usage, on_chip, weight_bytes, activation_bytes).to_dict()
            | {"precision": precision, "target": ctx.target.name} for task, path in paths.items()}


def switching_step(ctx: FlowContext) -> Skipped | None:
    """One artifact for every task, chosen by `task_id`: verified, then its memory and switch cost measured."""
    model, spec, tasks = ctx.loaded.model, ctx.loaded.spec, task_list(ctx)
    if not has_experts(model):
        return Skipped("no mixture-of-experts layer: one graph per task is the whole story")
    path = export_switchable(model, spec, tasks, ctx.bundle / SWITCHABLE)
    images, source = verification_inputs(ctx)
    session = ort_backend.make_session(path, threads_of(ctx))
    errors = {}
    with torch.no_grad():
        for index, task in enumerate(tasks):
            expected = model(torch.from_numpy(images), task=task)[task].numpy()
            flat = session.run(None, {INPUT_NAME: images, TASK_ID_NAME: np.array([index], dtype=np.int64)})[0]
            got = flat.reshape(expected.shape)  # one flat (B, elements) output serves every task's shape
            errors[task] = float(np.abs(got - expected).max())
            allowed = ctx.options.tolerance * max(1.0, float(np.abs(expected).max()))
            if errors[task] > allowed:
                raise VerificationError(f"the switchable artifact disagrees with PyTorch for task {task!r} "
                                   f"(max abs error {errors[task]:.3g} > {allowed:.3g})")
    del session
    entry = {"artifact": SWITCHABLE, "task_ids": {t: i for i, t in enumerate(tasks)},
             "output": "one (batch, elements) output; reshape to (batch, *the task's output_shape)",
             "verification": {"max_abs_error": errors, "samples": len(images), "data": source, "passed": True}}
    if ctx.options.measure_latency:
        per_task = [ctx.bundle / ctx.manifest["tasks"][t]["artifacts"]["onnx"] for t in tasks]
        switchable_rss, separate_rss = resident_memory([path]), resident_memory(per_task)
        entry["resident_memory"] = {"switchable_bytes": switchable_rss, "per_task_artifacts_bytes": separate_rss,
                                    "ratio": switchable_rss / separate_rss if separate_rss else None,
                                    "provenance": prov("measured", source="process RSS (psutil)",
                                                       detail="resident memory added by loading the ONNX Runtime "
                                                              "sessions")}
        entry["switch_latency"] = switch_latency(path, spec, tasks, threads=threads_of(ctx))
    ctx.manifest.setdefault("moe", {})["switching"] = entry
