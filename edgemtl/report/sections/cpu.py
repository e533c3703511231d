"""CPU targets (the host and arm64 flows): ONNX Runtime graphs (float32, int8 QDQ) and TVM builds. Their numbers
sit in the tasks table, so the bundle page has no section of its own; on the comparison page this section gives the
shipped runtime, its metric, the file it loads and per-layer times (TVM's profiler from the bundle's profile, else
the caller's layer timer on the ONNX graph)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgemtl.bundle import file_sha256
from edgemtl.manifest import figure, prov
from edgemtl.report.figures import (TOP_LAYERS, compile_arch, held_out, metric, metric_figure, metric_name,
                                    text)
from edgemtl.report.read import section, target_flow
from edgemtl.report.sections import Figures, TaskInput

HOST_FLOW = "cpu-onnxruntime"  # targets the machine that compiles
_TARGET_ARCH = {"cpu-arm64": "aarch64"}  # the other CPU flows and the architecture each targets
RUNTIME = "onnxruntime-float"
_RUNTIME_TEXT = {
    "onnxruntime-float": "ONNX Runtime, float32 ONNX",
    "onnxruntime-int8": "ONNX Runtime, int8 QDQ ONNX",
    "tvm": "TVM Relax VM module (untuned)",
    "tvm-tuned": "TVM Relax VM module (meta-schedule tuned)",
}
_TVM = ("tvm", "tvm-tuned")


def applies(manifest: Mapping[str, Any]) -> bool:
    """A CPU flow, or no flow recorded at all (an older or hand-written manifest: its ONNX graphs are what ships)."""
    return target_flow(manifest) in (HOST_FLOW, *_TARGET_ARCH, "")


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    return ""


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def compare_figures(task: TaskInput) -> Figures:
    runtime = task.runtime or RUNTIME
    found: Figures = {"runtime": {"value": runtime, "text": _RUNTIME_TEXT.get(runtime, runtime),
                                  "chosen_by": "the host flow's only runtime"}, "layers": _layers(task, runtime)}
    for key, value in (("target_arch", _target_arch(task.manifest)), ("metric", _metric(task, runtime)),
                       ("model_size", _model_size(task, runtime))):
        if value is not None:
            found[key] = value  # type: ignore[literal-required]
    return found


def _target_arch(manifest: Mapping[str, Any]) -> str | None:
    flow = target_flow(manifest)
    return compile_arch(manifest) if flow == HOST_FLOW else _TARGET_ARCH.get(flow)


def _metric(task: TaskInput, runtime: str) -> dict[str, Any] | None:
    """The metric in float32 (ONNX Runtime on the compile host) and in what ships: int8 for the QDQ graph and for a
    TVM build made from it, else the float figure itself."""
    name, higher = metric_name(task.entry)
    if name is None:
        return None
    entry, base = task.entry, f"manifest.json tasks.{task.task}"
    int8 = section(entry, "int8")
    data = text(entry.get("metrics_data")) or text(int8.get("metrics_data")) or held_out(task.manifest)
    float_value = None
    if name in section(entry, "metrics"):
        float_value = metric_figure(section(entry, "metrics").get(name), "ONNX Runtime float32 on the compile host",
                                    data, f"{base}.metrics.{name}")
    elif name in section(int8, "metric_float"):
        float_value = metric_figure(section(int8, "metric_float").get(name),
                                    text(int8.get("runtime")) or "ONNX Runtime float32", data,
                                    f"{base}.int8.metric_float.{name}")
    precision, deployed = "float32", float_value
    if runtime == "onnxruntime-int8":
        precision, deployed = "int8", metric_figure(section(int8, "metric_int8").get(name),
                                                    text(int8.get("runtime")) or "ONNX Runtime int8", data,
                                                    f"{base}.int8.metric_int8.{name}")
    elif runtime in _TVM and section(entry, "artifacts").get("tvm_source") == "int8_onnx":
        precision, deployed = "int8", metric_figure(section(int8, "metric_int8").get(name),
                                                    "ONNX Runtime int8 (the graph the TVM build came from)", data,
                                                    f"{base}.int8.metric_int8.{name}")
    return metric(name, higher, float_value, deployed, precision)


def _artifact(task: TaskInput, runtime: str) -> str | None:
    """The bundle-relative file the shipped runtime loads."""
    artifacts = section(task.entry, "artifacts")
    if runtime == "onnxruntime-int8":
        relative = artifacts.get("int8_onnx")
    elif runtime in _TVM:
        builds = section(artifacts, "tvm_tuned" if runtime == "tvm-tuned" else "tvm")
        arch = _TARGET_ARCH.get(target_flow(task.manifest), "x86_64")
        relative = builds.get(arch) or next(iter(builds.values()), None)
    else:
        relative = artifacts.get("onnx")
    return relative if isinstance(relative, str) else None


def _model_size(task: TaskInput, runtime: str) -> dict[str, Any] | None:
    relative = _artifact(task, runtime)
    if relative is None:
        return None
    path = task.bundle / relative
    if not path.is_file():
        return {"value": None, "unit": "B", "missing": relative,
                "provenance": prov("static", source=f"manifest.json tasks.{task.task}.artifacts",
                                   detail=f"{relative} is listed but missing from the bundle")}
    return figure(float(path.stat().st_size), "B", "static", source=f"the bundle file {relative}",
                  detail=f"size of {relative} on disk", what="artifact file", artifact=relative, sha256=file_sha256(path))


def _layers(task: TaskInput, runtime: str) -> dict[str, Any]:
    """TVM's per-layer profile where the bundle's profile has one, else the caller's timer on the ONNX graph."""
    if runtime in _TVM:
        for slug, profile in section(task.entry, "profile").items():
            layers = section(section(section(profile, "runtimes"), runtime), "details").get("layers")
            if isinstance(layers, list) and layers:
                return {"source": "tvm profiler", "layers": layers[:TOP_LAYERS],
                        "provenance": prov("measured", source=f"manifest.json tasks.{task.task}.profile",
                                           detail="TVM's profiler", device=slug)}
        return {"none": "the shipped runtime is TVM and the bundle's profile has no per-layer data (TVM's profiler "
                        "was not run)"}
    relative = section(task.entry, "artifacts").get("int8_onnx" if runtime == "onnxruntime-int8" else "onnx")
    if not isinstance(relative, str) or not (task.bundle / relative).is_file():
        return {"none": "the bundle holds no ONNX file for the shipped runtime"}
    if task.layer_timer is None:
        return {"none": "not profiled (layer profiling was turned off)"}
    try:
        return task.layer_timer(task.bundle / relative, _layer_input(task), relative)
    except Exception as exc:  # noqa: BLE001 - a graph this ONNX Runtime cannot profile is reported, not fatal
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"none": f"ONNX Runtime could not profile {relative}: {type(exc).__name__}: {first}"[:300]}


def _layer_input(task: TaskInput) -> np.ndarray:
    """The bundle's first reference sample, else seeded noise shaped like the model's input, at batch 1."""
    reference = section(section(task.entry, "artifacts"), "reference").get("input")
    if isinstance(reference, str) and (task.bundle / reference).is_file():
        return np.ascontiguousarray(np.load(task.bundle / reference)[:1], dtype=np.float32)
    shape = section(section(task.manifest, "model"), "input").get("shape")
    shape = [int(d) for d in shape] if isinstance(shape, list) and shape else [3, 64, 64]
    return np.random.default_rng(0).standard_normal([1, *shape]).astype(np.float32)
