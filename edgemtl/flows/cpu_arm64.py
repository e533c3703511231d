"""The arm64 flow (Cortex-A boards, the ZCU104's Cortex-A53 PS): float + int8 QDQ ONNX for ONNX Runtime and
untuned TVM builds per task, checked on this host, with reference vectors for on-device output checks.

Steps: load_data -> analyse -> partition_experts (MoE models) -> export_onnx -> quantize_int8_qdq -> check_budget ->
verify -> tvm_build -> reference_vectors.

Nothing is timed here: latency on the board (and on this host) is `edgemtl profile`'s job, which also decides
per task whether ONNX Runtime (float / int8) or a (tuned) TVM build ships and rewrites `tasks.<task>.runtime`.
The compile's default is ONNX Runtime int8 wherever int8 kept the task within its accuracy budget (flows/budget.py)
and agreed with float on the verification samples; otherwise ONNX Runtime float, with the reason (the task in float is
arm64's last remedy, so an arm64 compile never fails on its budget).

Bundle layout per task (also written to `manifest["bundle_layout"]`; the profiler relies on it):
    tasks/<task>/model.onnx                 float32 ONNX, dynamic batch
    tasks/<task>/model.int8.onnx            int8 QDQ ONNX (ONNX Runtime quantize_static), dynamic batch
    tasks/<task>/tvm/aarch64/model.so       TVM Relax VM module, aarch64-linux-gnu, batch 1, untuned
    tasks/<task>/tvm/x86_64/model.so        the same for this host's CPU (local profiling), batch 1, untuned
    tasks/<task>/reference/input.npy        (N, C, H, W) real normalised samples, float32
    tasks/<task>/reference/output_float.npy ONNX Runtime float outputs for them (N, *output_shape)
    tasks/<task>/reference/output_int8.npy  ONNX Runtime int8 outputs for them (absent when int8 was not built)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pydantic import BaseModel, Field

from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.backends import tvm_build
from edgemtl.model.onnx_export import export_task
from edgemtl.errors import VerificationError
from edgemtl.manifest import Section, TaskEntry, manifest_model
from edgemtl.flow import FlowContext, Skipped, Step
from edgemtl.flows.common import (analyse, load_verification_data, task_list, task_model, threads_of,
                                  verification_inputs, with_progress)
from edgemtl.flows.budget import budget_record, budget_settings, check_budget, compile_budget
from edgemtl.flows.experts import partition_step
from edgemtl.flows.passes import pass_step
from edgemtl.model.contract import run_task
from edgemtl.passes.base import PassResult
from edgemtl.passes.budget import Budget
from edgemtl.passes.quantize_int8_qdq import INT8_ONNX, QdqConfig
from edgemtl.profile.reference import REFERENCE_SAMPLES

INT8_MAX_RELATIVE_RMS = 0.1   # int8 vs float outputs: RMS of the difference <= 10% of the float outputs' RMS
# the int8 pass: its remedies (the pass's REMEDIES) in order until each task is within its accuracy budget (--max-drop,
# else the target file's max_drop: 1% for arm64); `_int8_config` fills in the budget of the compile
INT8 = QdqConfig()
TVM_CHECK_SAMPLES = 4
LAYOUT: dict[str, Any] = {
    "onnx": "tasks/{task}/model.onnx",
    "int8_onnx": INT8_ONNX,
    "tvm": {"aarch64": "tasks/{task}/tvm/aarch64/model.so", "x86_64": "tasks/{task}/tvm/x86_64/model.so"},
    "reference": {"input": "tasks/{task}/reference/input.npy", "output_float": "tasks/{task}/reference/output_float.npy",
                  "output_int8": "tasks/{task}/reference/output_int8.npy"},
}


def _path(ctx: FlowContext, kind: str, task: str, arch: str | None = None) -> str:
    pattern = LAYOUT[kind] if arch is None else LAYOUT[kind][arch]
    return pattern.format(task=task)


def export_onnx(ctx: FlowContext) -> None:
    """Float ONNX per task (its expert path for MoE models), and the layout the later steps fill in."""
    ctx.manifest["bundle_layout"] = LAYOUT
    for task in task_list(ctx):
        relative = _path(ctx, "onnx", task)
        export_task(task_model(ctx, task), ctx.loaded.spec, task, ctx.bundle / relative)
        ctx.manifest["tasks"][task]["artifacts"] = {"onnx": relative}


# -- int8 ------------------------------------------------------------------------------------------------
def _keep_int8(ctx: FlowContext, result: PassResult[Path]) -> None:
    """Each task's int8 record in its entry, its int8 graph among its artifacts."""
    budget = compile_budget(ctx)
    for task, record in result.record.tasks.items():
        ctx.manifest["tasks"][task]["int8"] = record
        if record.get("ok"):
            ctx.manifest["tasks"][task]["budget"] = _budget_entry(budget, task, record)
    for task, path in result.paths.items():
        ctx.manifest["tasks"][task]["artifacts"]["int8_onnx"] = path.relative_to(ctx.bundle).as_posix()


def _budget_entry(budget: Budget, task: str, int8: dict[str, Any]) -> dict[str, Any]:
    """The task's budget record: the int8 remedies in order with their measured host latency, and the last remedy
    arm64 has, the task in float (ONNX Runtime float ships when no int8 graph is within the budget)."""
    remedies = [{"name": a["remedy"], "description": a["description"],
                 **({"error": a["error"]} if "error" in a else {"relative_loss": a["relative_loss"], "cost": a["cost"]})}
                for a in int8["attempts"]]
    metric = int8.get("metric")
    quantized = int8["metric_int8"][metric] if metric else None
    shipped, loss = int8["remedy"], int8["relative_loss"]
    if not int8["meets_target"]:
        remedies.append({"name": "task in float", "description": "ONNX Runtime float ships for this task",
                         "relative_loss": 0.0, "cost": int8["float_cost"]})
        shipped, loss = "task in float", 0.0
        quantized = int8["metric_float"][metric] if metric else None
    return budget_record(budget, task, metric=metric, higher_is_better=int8.get("higher_is_better"),
                         metric_float=int8["metric_float"][metric] if metric else None, metric_quant=quantized,
                         loss=loss, remedies=remedies, shipped=shipped, next_try="",
                         unseen=int8.get("unseen") if int8["meets_target"] else None)


def _int8_config(ctx: FlowContext) -> QdqConfig:
    return replace(INT8, threads=threads_of(ctx), **budget_settings(ctx))


# looked up at each call (not bound here), so a test can swap _int8_config for one with budgets no user can give
_quantize_int8 = pass_step("quantize_int8_qdq", config=lambda ctx: _int8_config(ctx), keep=_keep_int8)


def quantize_step(ctx: FlowContext) -> Skipped | None:
    """int8 QDQ per task (the quantize_int8_qdq pass), calibrated on real training images; float vs int8 metrics on
    the held-out split, `INT8`'s remedies tried in order. Without a data set every task says why it has no int8."""
    skipped = _quantize_int8(ctx)
    if skipped is not None:
        for task in task_list(ctx):
            ctx.manifest["tasks"][task]["int8"] = {"ok": False, "error": f"skipped: {skipped.reason}"}
    return skipped


# -- checks ------------------------------------------------------------------------------------------------
def verify(ctx: FlowContext) -> None:
    """Float ONNX vs PyTorch (beyond `--tolerance` fails the compile) and int8 vs float ONNX (recorded; an int8
    graph outside INT8_MAX_RELATIVE_RMS is not made the default runtime). Then each task's default runtime."""
    images, source = verification_inputs(ctx)
    x, failures = torch.from_numpy(images), []
    for task in task_list(ctx):
        entry = ctx.manifest["tasks"][task]
        with torch.no_grad():
            reference = run_task(task_model(ctx, task), x, task).numpy()
        session = ort_backend.make_session(ctx.bundle / entry["artifacts"]["onnx"], threads_of(ctx))
        got = ort_backend.run(session, images)[task]
        error = float(np.abs(got - reference).max())
        allowed = ctx.options.tolerance * max(1.0, float(np.abs(reference).max()))
        entry["verification"] = {"max_abs_error": error, "samples": len(images), "tolerance": allowed, "data": source,
                                 "runtime": "onnxruntime", "passed": error <= allowed}
        entry["max_abs_error"] = error
        if error > allowed:
            failures.append(f"{task} (max abs error {error:.3g})")
        if "int8_onnx" in entry["artifacts"]:
            entry["int8"]["verification"] = _compare_int8(ctx, task, entry, images, got, source)
        entry["runtime"], entry["runtime_reason"] = _default_runtime(ctx, entry)
    if failures:
        raise VerificationError(f"ONNX Runtime disagrees with PyTorch beyond tolerance for {', '.join(failures)}")


def _compare_int8(ctx: FlowContext, task: str, entry: dict[str, Any], images: np.ndarray, float_out: np.ndarray,
                  source: str) -> dict[str, Any]:
    session = ort_backend.make_session(ctx.bundle / entry["artifacts"]["int8_onnx"], threads_of(ctx))
    got = ort_backend.run(session, images)[task]
    diff = got.astype(np.float64) - float_out
    rms_float = float(np.sqrt(np.mean(float_out.astype(np.float64) ** 2)))
    relative_rms = float(np.sqrt(np.mean(diff ** 2)) / max(rms_float, 1e-12))
    record: dict[str, Any] = {"max_abs_error": float(np.abs(diff).max()), "mean_abs_error": float(np.abs(diff).mean()),
                              "relative_rms_error": relative_rms, "tolerance_relative_rms": INT8_MAX_RELATIVE_RMS,
                              "samples": len(images), "data": source, "against": "float ONNX in ONNX Runtime",
                              "passed": relative_rms <= INT8_MAX_RELATIVE_RMS}
    if ctx.loaded.spec.task(task).kind == "classification":
        record["argmax_agreement"] = float(np.mean(got.argmax(1) == float_out.argmax(1)))
    return record


def _default_runtime(ctx: FlowContext, entry: dict[str, Any]) -> tuple[str, str]:
    int8 = entry.get("int8", {})
    if ctx.options.precision == "fp32":
        return "onnxruntime-float", "--precision fp32 asked for float"
    if not int8.get("ok"):
        return "onnxruntime-float", f"no int8 graph: {int8.get('error', 'not built')}"
    if int8.get("meets_target") is False:
        lost = f"{int8['metric']}" if "metric" in int8 else "its agreement with float (1 - cosine)"
        return "onnxruntime-float", (f"int8 lost {int8['relative_loss']:.2%} of {lost} (budget "
                                    f"{int8['target_max_relative_loss']:.2%}) after every remedy")
    if not int8.get("verification", {}).get("passed", False):
        return "onnxruntime-float", "int8 outputs differ from float beyond tolerance on the verification samples"
    scored = "metric within its budget" if "metric" in int8 else "no labels, agreement with float within its budget"
    return "onnxruntime-int8", f"compile default: int8 {scored}; `edgemtl profile` may change it after measuring"


# -- TVM ---------------------------------------------------------------------------------------------------
def tvm_step(ctx: FlowContext) -> None:
    """Per task: the float ONNX as an untuned TVM module for aarch64 (the board) and x86_64 (this host); the host
    build is checked against ONNX Runtime. Without TVM or the cross compiler, says which command adds it."""
    missing = tvm_build.tvm_missing()
    input_shape = [1, *ctx.loaded.spec.input.shape]
    ctx.manifest["host"]["tvm"] = tvm_build.tvm_version()
    for task in with_progress(ctx, task_list(ctx), "TVM build"):
        entry = ctx.manifest["tasks"][task]
        entry["artifacts"]["tvm"] = {}
        if missing:
            entry["tvm"] = {"built": False, "seconds": 0.0, "target": tvm_build.AARCH64_TARGET,
                            "reason": f"skipped: {tvm_build.INSTALL_TVM}", "detail": missing}
            continue
        onnx_path = ctx.bundle / entry["artifacts"]["onnx"]
        builds = tvm_build.build_all(onnx_path, ctx.bundle / f"tasks/{task}/tvm", input_shape)
        record: dict[str, Any] = {
            "built": builds["aarch64"].built, "seconds": round(sum(b.seconds for b in builds.values()), 3),
            "target": builds["aarch64"].target, "input_shape": input_shape, "tuned": False,
            "pipeline": "from_onnx -> DecomposeOpsForInference -> zero (legalise, fuse) -> relax.build",
            "builds": {arch: b.to_dict(ctx.bundle) for arch, b in builds.items()},
            "cross_compiler": tvm_build.CROSS_CXX["aarch64"], "tvm": tvm_build.tvm_version()}
        if not builds["aarch64"].built:
            record["reason"] = _skip_reason(builds["aarch64"].reason)
        for arch, build in builds.items():
            if build.built:
                entry["artifacts"]["tvm"][arch] = str(build.path.relative_to(ctx.bundle))
        host = builds.get(tvm_build.host_arch())
        if host is not None and host.built:
            record["check"] = _check_tvm(ctx, task, host.path, onnx_path)
        entry["tvm"] = record


def _skip_reason(reason: str | None) -> str:
    if reason and "apt-get install" in reason:
        return f"skipped: {tvm_build.INSTALL_CROSS['aarch64']} ({reason})"
    return f"failed: {reason}"


def _check_tvm(ctx: FlowContext, task: str, library: Path, onnx_path: Path) -> dict[str, Any]:
    images, source = verification_inputs(ctx)
    images = images[:TVM_CHECK_SAMPLES]
    reference = ort_backend.run(ort_backend.make_session(onnx_path, threads_of(ctx)), images)[task]
    try:
        got = tvm_build.run_module(library, images)[0]
    except Exception as exc:  # a module that does not load or run here: recorded, the compile goes on
        return {"passed": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    error = float(np.abs(got - reference).max())
    allowed = ctx.options.tolerance * max(1.0, float(np.abs(reference).max()))
    return {"arch": tvm_build.host_arch(), "against": "float ONNX in ONNX Runtime", "samples": len(images),
            "data": source, "max_abs_error": error, "tolerance": allowed, "passed": error <= allowed}


# -- reference vectors -------------------------------------------------------------------------------------
def reference_step(ctx: FlowContext) -> None:
    """A few real normalised samples per task with ONNX Runtime's float and int8 outputs, for the profiler to
    check a device's outputs against (TVM modules take batch 1: run them one sample at a time)."""
    images, source = verification_inputs(ctx)
    images = np.ascontiguousarray(images[:REFERENCE_SAMPLES])
    for task in task_list(ctx):
        entry = ctx.manifest["tasks"][task]
        folder = ctx.bundle / f"tasks/{task}/reference"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"input": _path(ctx, "reference", task, "input")}
        np.save(ctx.bundle / paths["input"], images)
        outputs = {"output_float": entry["artifacts"]["onnx"]}
        if "int8_onnx" in entry["artifacts"]:
            outputs["output_int8"] = entry["artifacts"]["int8_onnx"]
        tolerance: dict[str, float] = {}
        for kind, graph in outputs.items():
            out = ort_backend.run(ort_backend.make_session(ctx.bundle / graph, threads_of(ctx)), images)[task]
            paths[kind] = _path(ctx, "reference", task, kind)
            np.save(ctx.bundle / paths[kind], out)
            # what a device's output may differ by: float kernels as in verify; int8 kernels differ between CPUs
            # in rounding, so allow the int8-vs-float RMS tolerance, as an absolute bound on the output scale
            scale = max(1.0, float(np.abs(out).max()))
            tolerance[kind] = ctx.options.tolerance * scale if kind == "output_float" else INT8_MAX_RELATIVE_RMS * scale
        entry["artifacts"]["reference"] = paths
        entry["reference"] = {"samples": len(images), "data": source, "runtime": "onnxruntime (this host)",
                              "max_abs_tolerance": tolerance, "input_shape": list(images.shape)}


STEPS: list[Step] = [
    ("load_data", load_verification_data),
    ("analyse", analyse),
    ("partition_experts", partition_step),
    ("export_onnx", export_onnx),
    ("quantize_int8_qdq", quantize_step),
    ("check_budget", check_budget),
    ("verify", verify),
    ("tvm_build", tvm_step),
    ("reference_vectors", reference_step),
]


class Arm64Task(TaskEntry):
    """The arm64 flow's task entry: float and int8 ONNX, TVM builds, reference vectors, the shipped runtime."""

    verification: dict[str, Any] | None = None
    max_abs_error: float | None = None
    int8: Section | None = Field(None, description="ONNX Runtime static int8: calibration, remedy, metrics, check")
    tvm: Section | None = Field(None, description="TVM Relax builds per architecture")
    reference: Section | None = Field(None, description="reference input/outputs shipped for the board-side check")


class Arm64Extra(BaseModel):
    bundle_layout: dict[str, Any] = Field(description="where each artifact lives in the bundle, per task")


MANIFEST = manifest_model(Arm64Task, Arm64Extra)
