"""The comparison report (`edgemtl report BUNDLE [BUNDLE ...]`): tasks and targets side by side, for hardware teams.

`compare_bundles` reads the manifests of several bundles (any targets: host, arm64, gap9, zcu104) and returns one
JSON document; `write_comparison` writes it as `comparison.json` next to a self-contained `comparison.html` (no
external resources, a CSP forbids them; figures as data URIs), both moved into place atomically.

Every number is a *figure*: its value, its unit and a `provenance` object saying what kind of number it is and
where it comes from:

    kind      measured   timed on a real CPU / board (which one, how many runs, median and p90)
              emulated   timed under an emulator (qemu): exercises the path, says nothing about device speed
              simulated  counted by a simulator (qemu retired instructions, HLS C simulation)
              estimated  from an analytical model, not run (GAP9 cycle model, FPGA roofline, FINN)
              static     fixed at compile time and exact (file sizes, a static memory plan)
              evaluated  a task metric computed on labelled data by the named runtime
    device    where it was measured / what it models;  detail: how;  source: where in the bundle it was read

Ratios ("speed-ups") are only ever computed between two *measured* latencies on the same device (the same device
description, so the same machine and thread count); everything else is shown side by side, labelled, never divided.
Per-layer breakdowns come from ONNX Runtime's profiler (one profiled session per task, run here, labelled
"measured on this host"), the GAP9 per-layer estimate and qemu instruction counts, and the FPGA roofline's layers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from html import escape
from typing import Any

import numpy as np

from edgemtl.bundle import MANIFEST, read_manifest
from edgemtl.errors import EdgemtlError
from edgemtl.report.html import _CSS, _jsonable, human_bytes, human_count, human_ms
from edgemtl.report.plots import number, task_entries
from edgemtl.report.plots import pick as _pick
from edgemtl.report.plots import section as _section

COMPARISON_HTML = "comparison.html"
COMPARISON_JSON = "comparison.json"
SCHEMA = 1
KINDS = {
    "measured": "timed on a real CPU or board: the device, runtime, runs, median and p90 are given",
    "emulated": "timed under an emulator (qemu): proves the path works, says nothing about the device's speed",
    "simulated": "counted by a simulator (qemu retired instructions, HLS C simulation): not a latency",
    "estimated": "from an analytical model, nothing was run (GAP9 cycle model, FPGA roofline, FINN)",
    "static": "fixed at compile time and exact (the size of a file, a static memory plan)",
    "evaluated": "a task metric computed on labelled samples with the named runtime",
}
# latency candidates for the headline, best first: a measurement on the target itself, one elsewhere, a model
_HEADLINE_RANK = {"measured-on-target": 0, "measured": 1, "estimated": 2, "simulated": 3, "emulated": 4}
_RUNTIME_ALIASES = {"onnxruntime": "onnxruntime-float"}
_RUNTIME_TEXT = {
    "onnxruntime-float": "ONNX Runtime, float32 ONNX",
    "onnxruntime-int8": "ONNX Runtime, int8 QDQ ONNX",
    "tvm": "TVM Relax VM module (untuned)",
    "tvm-tuned": "TVM Relax VM module (meta-schedule tuned)",
    "gap9-c": "generated C on GAP9 (edgemtl's portable C99; Deeploy's tiled cluster code where it maps)",
    "fpga-dataflow": "hls4ml dataflow IP on the FPGA fabric (quantized)",
}
_TARGET_ARCH = {"cpu-arm64": "aarch64"}
_DASH = "—"
ORT_LAYER_RUNS = 20
ORT_LAYER_WARMUP = 3
TOP_LAYERS = 10


# ------------------------------------------------------------------------------------------------ reading

def prov(kind: str, device: Any = None, detail: Any = None, source: Any = None, **extra: Any) -> dict[str, Any]:
    """A provenance object: kind (see KINDS), device, detail and source, skipping what is unknown."""
    found = {"kind": kind, "device": _text(device), "detail": _text(detail), "source": _text(source), **extra}
    return {key: value for key, value in found.items() if value not in (None, "")}


def figure(value: float, unit: str, provenance: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"value": value, "unit": unit, **{k: v for k, v in extra.items() if v is not None}, "provenance": provenance}


def compare_bundles(bundles: list[Path], *, layer_profile: bool = True) -> dict[str, Any]:
    """One JSON document comparing the bundles' tasks side by side; see the module docstring."""
    if not bundles:
        raise EdgemtlError("report needs at least one bundle folder")
    manifests = [(Path(b), read_manifest(Path(b))) for b in bundles]
    labels = _labels(manifests)
    described = []
    tasks: dict[str, dict[str, Any]] = {}
    for (path, manifest), label in zip(manifests, labels):
        described.append(_describe_bundle(path, manifest, label))
        for name, entry in task_entries(manifest).items():
            tasks.setdefault(name, {})[label] = _task_figures(path, manifest, name, entry, layer_profile)
    document = {
        "edgemtl_report": "comparison",
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generated_on": f"{platform.node() or 'this host'} ({platform.machine()}, {platform.platform(terse=True)})",
        "provenance_kinds": KINDS,
        "bundles": described,
        "tasks": tasks,
    }
    for by_bundle in tasks.values():  # a metric's direction known in one bundle holds for the others
        metrics = [f["metric"] for f in by_bundle.values() if f.get("metric")]
        known = {m["name"]: m["higher_is_better"] for m in metrics if isinstance(m.get("higher_is_better"), bool)}
        for metric in metrics:
            if metric.get("higher_is_better") is None and metric["name"] in known:
                metric["higher_is_better"] = known[metric["name"]]
    document["speedups"], document["not_compared"] = _speedups(tasks)
    document["notes"] = _notes(described, tasks)
    return _jsonable(document)


def _labels(manifests: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """The column name of each bundle: its target, with the folder name when two share a target."""
    targets = [_text(_section(m, "target").get("name")) or p.name for p, m in manifests]
    labels = []
    for (path, _), target in zip(manifests, targets):
        label = target if targets.count(target) == 1 else f"{target} ({path.resolve().name})"
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def _describe_bundle(path: Path, manifest: Mapping[str, Any], label: str) -> dict[str, Any]:
    target, model = _section(manifest, "target"), _section(manifest, "model")
    raw = (path / MANIFEST).read_bytes()
    profiles = {slug: _pick(p, ("device", "description", "provenance", "timestamp", "file"))
                for slug, p in _section(manifest, "profiles").items() if isinstance(p, Mapping)}
    return {
        "label": label,
        "path": str(path.resolve()),
        "target": target.get("name"),
        "flow": target.get("flow"),
        "target_description": target.get("description"),
        "model": _pick(model, ("path", "sha256", "arch", "data")),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "created": manifest.get("created"),
        "edgemtl_version": manifest.get("edgemtl_version"),
        "compiled_on": _pick(_section(manifest, "host"), ("cpu", "cores", "platform", "onnxruntime", "tvm")),
        "profiles": profiles,
    }


# ------------------------------------------------------------------------------------------- per task

def _task_figures(bundle: Path, manifest: Mapping[str, Any], task: str, entry: Mapping[str, Any],
                  layer_profile: bool) -> dict[str, Any]:
    flow = _text(_section(manifest, "target").get("flow"))
    runtime = _runtime(flow, entry, manifest)
    latencies = _latencies(manifest, task, entry, flow, runtime["value"])
    headline = _headline(latencies, runtime["value"])
    result: dict[str, Any] = {
        "runtime": runtime,
        "metric": _metric(manifest, flow, task, entry, runtime["value"]),
        "latency": headline,
        "latencies": latencies,
        "throughput": _throughput(task, entry),
        "memory": _memory(flow, task, entry),
        "model_size": _model_size(bundle, flow, task, entry, runtime["value"]),
        "energy": _energy(task, entry),
        "instructions": _instructions(task, entry),
        "layers": _layers(bundle, manifest, flow, task, entry, runtime["value"], layer_profile),
    }
    return result


def _runtime(flow: str, entry: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime this bundle ships for the task, and who chose it."""
    given = entry.get("runtime")
    if isinstance(given, str) and given:
        value = _RUNTIME_ALIASES.get(given, given)
        chosen = _section(entry, "runtime_chosen_by")
        if chosen:
            device = _text(chosen.get("device"))
            described = next((_text(p.get("description")) for p in _section(manifest, "profiles").values()
                              if isinstance(p, Mapping) and p.get("device") == device and p.get("description")), "")
            why = (f"fastest correct runtime measured by `edgemtl profile --device {device}`"
                   + (f" ({described})" if described else ""))
        else:
            why = _text(entry.get("runtime_reason")) or "the compile's default"
        return {"value": value, "text": _RUNTIME_TEXT.get(value, value), "chosen_by": why}
    if flow == "mcu-gap9":
        value, why = "gap9-c", "the gap9 flow's only deployment path"
    elif flow == "fpga-hls4ml":
        value, why = "fpga-dataflow", "the zcu104 flow's only deployment path"
    else:
        value, why = "onnxruntime-float", "the host flow's only runtime"
    return {"value": value, "text": _RUNTIME_TEXT[value], "chosen_by": why}


def _metric(manifest: Mapping[str, Any], flow: str, task: str, entry: Mapping[str, Any],
            runtime: str) -> dict[str, Any] | None:
    """The primary metric in float and in the deployed precision, each evaluated by the runtime that produced it."""
    int8, quant = _section(entry, "int8"), _section(entry, "quantization")
    name = entry.get("primary_metric") if isinstance(entry.get("primary_metric"), str) else None
    if isinstance(int8.get("metric"), str):
        name = int8["metric"]
    higher = entry.get("higher_is_better")
    if isinstance(int8.get("higher_is_better"), bool):
        higher = int8["higher_is_better"]
    base = f"manifest.json tasks.{task}"
    model = _section(manifest, "model")
    held_out = _text(model.get("verification_data")) or "the bundle's evaluation data"
    float_value = deployed = None
    precision = "float32"
    if flow == "mcu-gap9" and name:
        data = _text(int8.get("metrics_data")) or held_out
        float_value = _metric_figure(_section(int8, "metric_float").get(name), "PyTorch / ONNX Runtime float",
                                     data, f"{base}.int8.metric_float.{name}")
        source = _text(int8.get("metric_int8_source")) or "edgemtl's integer reference executor"
        deployed = _metric_figure(_section(int8, "metric_int8").get(name), source, data, f"{base}.int8.metric_int8.{name}")
        precision = "int8"
    elif flow == "fpga-hls4ml" and quant:
        before, after = _section(quant, "metric_float"), _section(quant, "metric_quant")
        name = name if name in before else next(iter(before), None)
        if name:
            float_value = _metric_figure(before.get(name), "PyTorch float", held_out,
                                         f"{base}.quantization.metric_float.{name}")
            deployed = _metric_figure(after.get(name), "brevitas quantized model (QAT)", held_out,
                                      f"{base}.quantization.metric_quant.{name}")
            precision = _text(quant.get("precision")) or "quantized"
    elif name:
        data = _text(entry.get("metrics_data")) or _text(int8.get("metrics_data")) or held_out
        metrics = _section(entry, "metrics")
        if name in metrics:
            float_value = _metric_figure(metrics.get(name), "ONNX Runtime float32 on the compile host", data,
                                         f"{base}.metrics.{name}")
        elif name in _section(int8, "metric_float"):
            float_value = _metric_figure(_section(int8, "metric_float").get(name), _text(int8.get("runtime"))
                                         or "ONNX Runtime float32", data, f"{base}.int8.metric_float.{name}")
        if runtime == "onnxruntime-int8":
            precision = "int8"
            deployed = _metric_figure(_section(int8, "metric_int8").get(name), _text(int8.get("runtime"))
                                      or "ONNX Runtime int8", data, f"{base}.int8.metric_int8.{name}")
        elif runtime in ("tvm", "tvm-tuned") and entry.get("artifacts", {}).get("tvm_source") == "int8_onnx":
            precision = "int8"
            deployed = _metric_figure(_section(int8, "metric_int8").get(name), "ONNX Runtime int8 (the graph the TVM "
                                      "build came from)", data, f"{base}.int8.metric_int8.{name}")
        else:
            deployed = float_value
    if name is None or (float_value is None and deployed is None):
        return None
    result: dict[str, Any] = {"name": name, "higher_is_better": higher if isinstance(higher, bool) else None,
                              "float": float_value, "deployed": deployed, "deployed_precision": precision}
    if float_value and deployed and float_value["value"]:
        change = (deployed["value"] - float_value["value"]) / abs(float_value["value"])
        result["relative_change"] = change
    return result


def _metric_figure(value: Any, runtime: str, data: str, source: str) -> dict[str, Any] | None:
    parsed = number(value)
    return None if parsed is None else figure(parsed, "", prov("evaluated", runtime, data, source))


def _latencies(manifest: Mapping[str, Any], task: str, entry: Mapping[str, Any], flow: str,
               shipped: str) -> list[dict[str, Any]]:
    """Every latency the bundle holds for the task, each with its provenance, the shipped runtime's marked."""
    found: list[dict[str, Any]] = []
    target_arch = _TARGET_ARCH.get(flow)
    compile_arch = _arch_of(_text(_section(manifest, "host").get("platform")))
    for key, runtime in (("latency_ms", "onnxruntime-float"), ("latency_ms_pytorch", "pytorch-eager")):
        latency = _section(entry, key)
        median = number(latency.get("median"))
        if median is None:
            continue
        kind = (_text(latency.get("provenance")) or "unlabelled").split(" ", 1)[0]
        device = _text(latency.get("device")) or "the compile host"
        # timed by `compile` on the machine that compiled: the target itself only for the host flow (or a native build)
        on_target = kind == "measured" and (flow == "cpu-onnxruntime" or (target_arch is not None
                                                                            and target_arch == compile_arch))
        found.append(_latency(median, number(latency.get("p90")), runtime, runtime == shipped, on_target,
                              prov(kind, device, _runs_text(latency) + f"; {_text(latency.get('runtime'))}",
                                   f"manifest.json tasks.{task}.{key}",
                                   device_key=f"{device} @ {_text(_section(manifest, 'host').get('platform'))}")))
    for slug, profile in _section(entry, "profile").items():
        if not isinstance(profile, Mapping):
            continue
        description = _text(_section(_section(manifest, "profiles"), slug).get("description"))
        for runtime, result in _section(profile, "runtimes").items():
            if not isinstance(result, Mapping) or number(result.get("median_ms")) is None:
                continue
            details = _section(result, "details")
            kind = _text(result.get("provenance") or profile.get("provenance")) or "unlabelled"
            arch = _text(details.get("arch"))
            device = description or _text(profile.get("device"))
            if arch and arch not in device:
                device += f" ({arch})"
            expected = target_arch or (compile_arch if flow == "cpu-onnxruntime" else None)
            on_target = kind == "measured" and expected is not None and arch == expected
            check = result.get("check_passed")
            detail = (f"{_runs_text({'runs': result.get('runs')})}; edgemtl profile --device {_text(profile.get('device'))}"
                      f" at {_text(profile.get('timestamp'))}; output check "
                      + {True: "passed", False: "FAILED", None: "not done (no reference)"}.get(check, "not done"))
            found.append(_latency(number(result["median_ms"]), number(result.get("p90_ms")),
                                  _RUNTIME_ALIASES.get(runtime, runtime), _RUNTIME_ALIASES.get(runtime, runtime) == shipped,
                                  on_target,
                                  prov(kind, device, detail, f"manifest.json tasks.{task}.profile.{slug}.runtimes.{runtime}"
                                       + (f"; results store row {result['store_id']}" if result.get("store_id") else ""),
                                       device_key=f"{_text(profile.get('device'))}: {description}",
                                       artifact=result.get("artifact"), sha256=result.get("sha256")),
                                  check_passed=check if isinstance(check, bool) else None))
    estimate = _section(entry, "cycle_estimate")
    totals = _section(estimate, "totals")
    if number(totals.get("latency_ms")) is not None:
        clock = number(totals.get("clock_mhz"))
        found.append(_latency(number(totals["latency_ms"]), None, "gap9-c", shipped == "gap9-c", False,
                              prov("estimated", "GAP9 8-core cluster" + (f" at {clock:g} MHz" if clock else ""),
                                   _text(estimate.get("provenance")), f"manifest.json tasks.{task}.cycle_estimate.totals")))
    roofline = _section(entry, "roofline")
    if number(roofline.get("latency_ms")) is not None:
        found.append(_latency(number(roofline["latency_ms"]), None, "fpga-dataflow", shipped == "fpga-dataflow", False,
                              prov("estimated", f"{_text(roofline.get('target')) or 'FPGA'} fabric, "
                                   f"{_text(roofline.get('precision'))}", _text(roofline.get("provenance")),
                                   f"manifest.json tasks.{task}.roofline")))
    finn = _section(entry, "finn")
    for key, fold in _section(finn, "by_target_fps").items():
        if isinstance(fold, Mapping) and number(fold.get("latency_ms")) is not None:
            found.append(_latency(number(fold["latency_ms"]), None, f"fpga-dataflow (FINN folding for {key} fps)",
                                  False, False,
                                  prov("estimated", "FPGA fabric (FINN)", _text(fold.get("provenance") or
                                                                                finn.get("provenance")),
                                       f"manifest.json tasks.{task}.finn.by_target_fps.{key}")))
    return found


def _latency(median: float, p90: float | None, runtime: str, shipped: bool, on_target: bool,
             provenance: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"median": median, "p90": p90, "unit": "ms", "runtime": runtime, "shipped": shipped,
            "on_target": on_target, **{k: v for k, v in extra.items() if v is not None}, "provenance": provenance}


def _headline(latencies: list[dict[str, Any]], shipped: str) -> dict[str, Any] | None:
    """The one latency the side-by-side table shows: the shipped runtime's best-founded figure."""
    def rank(item: dict[str, Any]) -> tuple[int, int]:
        kind = item["provenance"]["kind"]
        kind_rank = _HEADLINE_RANK["measured-on-target"] if kind == "measured" and item["on_target"] \
            else _HEADLINE_RANK.get(kind, 9)
        return kind_rank, 0 if item["shipped"] else 1

    candidates = [item for item in latencies if item["runtime"] != "pytorch-eager"]
    return min(candidates, key=rank) if candidates else None


def _throughput(task: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    roofline = _section(entry, "roofline")
    fps = number(roofline.get("fps"))
    if fps is None:
        return None
    return figure(fps, "inferences/s", prov("estimated", f"{_text(roofline.get('target')) or 'FPGA'} fabric",
                                             _text(roofline.get("provenance")), f"manifest.json tasks.{task}.roofline.fps"))


def _memory(flow: str, task: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Memory figures, first the one the table shows: GAP9's static arena, the FPGA's on-chip estimate, else the
    liveness analysis' peak activation memory."""
    found = []
    arena = _section(_section(entry, "c"), "arena")
    if number(arena.get("arena_bytes")) is not None:
        found.append(figure(number(arena["arena_bytes"]), "B", prov(
            "static", "GAP9 L2 (one static activation arena)", _text(arena.get("provenance")) or "liveness plan",
            f"manifest.json tasks.{task}.c.arena.arena_bytes"), what="activation arena"))
    placement = _section(entry, "memory_placement")
    if number(placement.get("l2_used_bytes")) is not None:
        capacity = number(placement.get("l2_bytes"))
        found.append(figure(number(placement["l2_used_bytes"]), "B", prov(
            "estimated", "GAP9 L2" + (f" of {capacity:,.0f} B" if capacity else ""),
            f"{_text(placement.get('status'))}: arena + weights + code allowance + staging; "
            f"{_text(placement.get('provenance'))}", f"manifest.json tasks.{task}.memory_placement"),
            what="L2 used (arena, weights, code, staging)"))
    resources = _section(_section(entry, "roofline"), "resources")
    bram, uram = number(resources.get("bram18")), number(resources.get("uram"))
    if bram is not None or uram is not None:
        on_chip = (bram or 0.0) * 18 * 1024 / 8 + (uram or 0.0) * 288 * 1024 / 8
        found.append(figure(on_chip, "B", prov(
            "estimated", "FPGA on-chip RAM", f"BRAM18 {bram or 0:g} x 2,304 B + URAM {uram or 0:g} x 36,864 B; "
            f"{_text(resources.get('provenance'))}", f"manifest.json tasks.{task}.roofline.resources"),
            what="on-chip RAM (BRAM + URAM)"))
    if number(entry.get("peak_activation_bytes")) is not None:
        found.append(figure(number(entry["peak_activation_bytes"]), "B", prov(
            "estimated", "any runtime (float32, batch 1)", "edgemtl's liveness analysis of the task graph; what a "
            "runtime actually allocates may differ", f"manifest.json tasks.{task}.peak_activation_bytes"),
            what="peak activation memory (float32)"))
    return found


def _model_size(bundle: Path, flow: str, task: str, entry: Mapping[str, Any], runtime: str) -> dict[str, Any] | None:
    """Bytes of the deployed artifact: the file the shipped runtime loads, or the weights a C / FPGA build holds."""
    artifacts = _section(entry, "artifacts")
    if flow == "mcu-gap9":
        placement = _section(entry, "memory_placement")
        weights = number(placement.get("weight_bytes"))
        if weights is not None:
            return figure(weights, "B", prov("static", "GAP9 (const arrays in the generated C)",
                                             "int8 weights and int32 requantisation parameters, as the generated C stores them",
                                             f"manifest.json tasks.{task}.memory_placement.weight_bytes"),
                          what="weights")
        return None
    if flow == "fpga-hls4ml":
        layers = _section(entry, "roofline").get("layers")
        if isinstance(layers, list) and layers:
            total = sum(number(layer.get("weight_bytes")) or 0.0 for layer in layers if isinstance(layer, Mapping))
            roofline = _section(entry, "roofline")
            return figure(total, "B", prov("estimated", "FPGA weights at " + (_text(roofline.get("precision")) or "?"),
                                           "weights x weight bits, per the roofline's layers",
                                           f"manifest.json tasks.{task}.roofline.layers[].weight_bytes"),
                          what="weights")
        return None
    if runtime == "onnxruntime-int8":
        relative = artifacts.get("int8_onnx")
    elif runtime in ("tvm", "tvm-tuned"):
        builds = _section(artifacts, "tvm_tuned" if runtime == "tvm-tuned" else "tvm")
        relative = builds.get(_TARGET_ARCH.get(flow, "x86_64")) or next(iter(builds.values()), None)
    else:
        relative = artifacts.get("onnx")
    if not isinstance(relative, str):
        return None
    path = bundle / relative
    if not path.is_file():
        return {"value": None, "unit": "B", "missing": relative,
                "provenance": prov("static", None, f"{relative} is listed but missing from the bundle",
                                   f"manifest.json tasks.{task}.artifacts")}
    return figure(float(path.stat().st_size), "B", prov("static", None, f"size of {relative} on disk",
                                                        f"the bundle file {relative}"), what="artifact file",
                  artifact=relative, sha256=_sha256(path))


def _energy(task: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    estimate = _section(entry, "cycle_estimate")
    totals = _section(estimate, "totals")
    energy = number(totals.get("energy_mj"))
    if energy is None:
        return None
    power = number(totals.get("power_mw"))
    return figure(energy, "mJ", prov("estimated", "GAP9 cluster", (f"{power:g} mW x estimated latency; " if power else "")
                                     + _text(estimate.get("provenance")), f"manifest.json tasks.{task}.cycle_estimate"
                                     ".totals.energy_mj"))


def _instructions(task: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    qemu = _section(_section(entry, "c"), "qemu")
    totals = _section(_section(qemu, "instructions"), "totals")
    count = number(totals.get("instructions"))
    if count is None:
        return None
    return figure(count, "instructions", prov("simulated", "qemu rv32imac (one core, no SIMD)",
                                              _text(qemu.get("provenance")) + "; retired instructions, not cycles",
                                              f"manifest.json tasks.{task}.c.qemu.instructions.totals"))


# ------------------------------------------------------------------------------------------- per layer

def _layers(bundle: Path, manifest: Mapping[str, Any], flow: str, task: str, entry: Mapping[str, Any], runtime: str,
            layer_profile: bool) -> dict[str, Any]:
    """Per-layer breakdown from whatever the runtime gives: see the module docstring."""
    if flow == "mcu-gap9":
        return _gap9_layers(task, entry)
    if flow == "fpga-hls4ml":
        return _roofline_layers(task, entry)
    if runtime in ("tvm", "tvm-tuned"):
        for slug, profile in _section(entry, "profile").items():
            layers = _section(_section(_section(profile, "runtimes"), runtime), "details").get("layers")
            if isinstance(layers, list) and layers:
                return {"source": "tvm profiler", "layers": layers[:TOP_LAYERS],
                        "provenance": prov("measured", slug, "TVM's profiler", f"manifest.json tasks.{task}.profile")}
        return {"none": "the shipped runtime is TVM and the bundle's profile has no per-layer data (TVM's profiler "
                        "was not run)"}
    relative = _section(entry, "artifacts").get("int8_onnx" if runtime == "onnxruntime-int8" else "onnx")
    if not isinstance(relative, str) or not (bundle / relative).is_file():
        return {"none": "the bundle holds no ONNX file for the shipped runtime"}
    if not layer_profile:
        return {"none": "not profiled (layer profiling was turned off)"}
    x = _layer_input(bundle, manifest, entry)
    try:
        return ort_layer_profile(bundle / relative, x, relative)
    except Exception as exc:  # noqa: BLE001 - a graph this ONNX Runtime cannot profile is reported, not fatal
        return {"none": f"ONNX Runtime could not profile {relative}: {type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]}


def _layer_input(bundle: Path, manifest: Mapping[str, Any], entry: Mapping[str, Any]) -> np.ndarray:
    reference = _section(_section(entry, "artifacts"), "reference").get("input")
    if isinstance(reference, str) and (bundle / reference).is_file():
        data = np.load(bundle / reference)
        return np.ascontiguousarray(data[:1], dtype=np.float32)
    shape = _section(_section(manifest, "model"), "input").get("shape")
    shape = [int(d) for d in shape] if isinstance(shape, list) and shape else [3, 64, 64]
    return np.random.default_rng(0).standard_normal([1, *shape]).astype(np.float32)


def ort_layer_profile(onnx_path: Path, x: np.ndarray, label: str, runs: int = ORT_LAYER_RUNS,
                      warmup: int = ORT_LAYER_WARMUP) -> dict[str, Any]:
    """Time per node of one ONNX graph with ONNX Runtime's profiler on this host (1 thread): median per node over
    `runs` runs after `warmup`, the top layers by time and their share of the summed node time."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgemtl-ortprof-") as scratch:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    per_node: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events if isinstance(events, list) else []:
        name = event.get("name", "") if isinstance(event, dict) else ""
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        per_node.setdefault(node, []).append(float(event.get("dur", 0)) / 1000.0)  # µs -> ms
        ops.setdefault(node, _text(_section(event, "args").get("op_name")))
    medians = {node: float(np.median(times[warmup:] if len(times) > warmup else times))
               for node, times in per_node.items()}
    total = sum(medians.values())
    top = sorted(medians.items(), key=lambda item: item[1], reverse=True)[:TOP_LAYERS]
    by_op: dict[str, float] = {}
    for node, value in medians.items():
        by_op[ops.get(node) or "?"] = by_op.get(ops.get(node) or "?", 0.0) + value
    return {
        "source": "onnxruntime profiler",
        "graph": label,
        "nodes": len(medians),
        "total_node_ms": total,
        "layers": [{"name": node, "op": ops.get(node), "ms": value, "share": value / total if total else None}
                   for node, value in top],
        "by_op": {op: {"ms": value, "share": value / total if total else None}
                  for op, value in sorted(by_op.items(), key=lambda item: item[1], reverse=True)},
        "provenance": prov("measured", f"this host: {_cpu_name()} ({platform.machine()}), 1 thread",
                           f"ONNX Runtime {ort.__version__} profiler (SessionOptions.enable_profiling), median per node "
                           f"over {runs} runs after {warmup} warm-up, batch 1; the profiler's overhead inflates small "
                           "nodes, compare shares rather than absolute times",
                           f"a profiled session of {label} run by `edgemtl report`"),
    }


def _gap9_layers(task: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    from edgemtl.report.mcu_plots import mcu_layer_costs

    costs = mcu_layer_costs(entry)
    if not costs:
        return {"none": "the manifest has no per-layer estimate or qemu instruction counts"}
    clock = number(_section(_section(entry, "cycle_estimate"), "totals").get("clock_mhz"))
    names = {row.get("index"): row.get("name") for row in _section(entry, "cycle_estimate").get("layers") or []
             if isinstance(row, Mapping)}
    total = sum(cycles or 0.0 for _, _, cycles, _ in costs)
    rows = [{"name": names.get(index) or label, "op": label.split(" ", 1)[-1], "cycles": cycles,
             "ms": cycles / (clock * 1e3) if cycles is not None and clock else None,
             "share": cycles / total if cycles is not None and total else None, "instructions": count}
            for index, label, cycles, count in costs]
    rows.sort(key=lambda row: row["cycles"] or 0.0, reverse=True)
    return {"source": "gap9 estimate + qemu", "nodes": len(costs), "total_cycles": total, "layers": rows[:TOP_LAYERS],
            "provenance": prov("estimated", "GAP9 8-core cluster", _text(_section(entry, "cycle_estimate")
                                                                         .get("provenance")),
                               f"manifest.json tasks.{task}.cycle_estimate.layers"),
            "instructions_provenance": prov("simulated", "qemu rv32imac (one core, no SIMD)",
                                            "retired instructions, not cycles",
                                            f"manifest.json tasks.{task}.c.qemu.instructions.layers")}


def _roofline_layers(task: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    roofline = _section(entry, "roofline")
    layers = [layer for layer in roofline.get("layers") or [] if isinstance(layer, Mapping)
              and number(layer.get("latency_s")) is not None]
    if not layers:
        return {"none": "the manifest has no per-layer roofline"}
    total = sum(number(layer["latency_s"]) or 0.0 for layer in layers)
    rows = [{"name": layer.get("name"), "op": layer.get("kind"), "ms": number(layer["latency_s"]) * 1e3,
             "share": number(layer["latency_s"]) / total if total else None, "bound": layer.get("bound")}
            for layer in layers]
    rows.sort(key=lambda row: row["ms"], reverse=True)
    return {"source": "fpga roofline", "nodes": len(layers), "layers": rows[:TOP_LAYERS],
            "provenance": prov("estimated", "FPGA fabric", _text(roofline.get("provenance")),
                               f"manifest.json tasks.{task}.roofline.layers")}


# ------------------------------------------------------------------------------------------ comparisons

def _speedups(tasks: Mapping[str, Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ratios only between measured latencies of one task on one device; the pairs left uncompared, and why."""
    speedups, skipped = [], []
    for task, by_bundle in tasks.items():
        groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for label, figures in by_bundle.items():
            for latency in figures.get("latencies", []):
                if latency["provenance"].get("kind") == "measured" and latency.get("check_passed") is not False:
                    groups.setdefault(latency["provenance"].get("device_key", "?"), []).append((label, latency))
        for device, items in groups.items():
            if len(items) < 2:
                continue
            fastest_label, fastest = min(items, key=lambda item: item[1]["median"])
            for label, latency in items:
                if latency is fastest:
                    continue
                speedups.append({"task": task, "device": latency["provenance"].get("device"), "device_key": device,
                                 "fast": {"bundle": fastest_label, "runtime": fastest["runtime"],
                                          "median_ms": fastest["median"]},
                                 "slow": {"bundle": label, "runtime": latency["runtime"], "median_ms": latency["median"]},
                                 "ratio": latency["median"] / fastest["median"] if fastest["median"] else None,
                                 "basis": "both measured on the same device (same description, machine and threads)"})
        headlines = [(label, figures["latency"]) for label, figures in by_bundle.items() if figures.get("latency")]
        for index, (label_a, a) in enumerate(headlines):
            for label_b, b in headlines[index + 1:]:
                pa, pb = a["provenance"], b["provenance"]
                if pa.get("kind") == "measured" and pb.get("kind") == "measured" and \
                        pa.get("device_key") == pb.get("device_key"):
                    continue
                why = (f"{pa.get('kind')} vs {pb.get('kind')}" if pa.get("kind") != pb.get("kind")
                       else f"both {pa.get('kind')}, but on different devices" if pa.get("kind") == "measured"
                       else f"both {pa.get('kind')}: a ratio of two models or emulations is not a speed-up")
                skipped.append({"task": task, "bundles": [label_a, label_b], "why": why})
    return speedups, skipped


def _notes(bundles: list[dict[str, Any]], tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    notes = []
    models = {(b.get("model") or {}).get("sha256") for b in bundles}
    if len(models) > 1:
        notes.append("the bundles were compiled from different model checkpoints (different sha256): metrics and "
                     "sizes compare different models")
    for task, by_bundle in tasks.items():
        for label, figures in by_bundle.items():
            latency = figures.get("latency")
            if latency and latency["provenance"].get("kind") == "measured" and not latency.get("on_target"):
                notes.append(f"{task} / {label}: the latency shown was measured on {latency['provenance'].get('device')},"
                             f" not on the {label} target itself")
            elif latency and latency["provenance"].get("kind") == "emulated":
                notes.append(f"{task} / {label}: only an emulated timing exists; it is not the device's speed")
    missing = sorted({label for by_bundle in tasks.values() for label, f in by_bundle.items() if not f.get("latency")})
    for label in missing:
        notes.append(f"{label}: some tasks have no latency at all; profile the bundle "
                     "(`edgemtl profile BUNDLE --device local|rpc://HOST:PORT/KEY`)")
    return notes


# ------------------------------------------------------------------------------------------------ writing

def write_comparison(bundles: list[Path], out_dir: Path, *, layer_profile: bool = True) -> list[Path]:
    """Write comparison.json and comparison.html into `out_dir` (replaced as a whole, atomically)."""
    document = compare_bundles(bundles, layer_profile=layer_profile)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgemtlError(f"output path {out_dir} is a file; choose a folder name with -o")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / COMPARISON_JSON).is_file():
        raise EdgemtlError(f"output folder {out_dir} exists and is not an edgemtl comparison; choose another -o or "
                           "empty it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        (staging / COMPARISON_JSON).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        (staging / COMPARISON_HTML).write_text(render_comparison(document), encoding="utf-8")
        previous = out_dir.parent / f".{out_dir.name}.previous-{uuid.uuid4().hex[:8]}"
        if out_dir.exists():
            os.replace(out_dir, previous)
        os.replace(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / COMPARISON_HTML, out_dir / COMPARISON_JSON]


# ------------------------------------------------------------------------------------------------ the page

_PAGE_CSS = _CSS + """
.prov-emulated{background:#e8defa}.prov-evaluated{background:#e1ebf7}.prov-other{background:#eee}
.warn{color:#9a5b00}.cell small{display:block;color:#777;font-size:11px}
td.n small{white-space:normal}
table.side td{min-width:11em}
sup a{text-decoration:none}
"""


class _Citations:
    """Numbered provenance notes, one per distinct (kind, device, detail), each listing where its numbers were read;
    every figure's badge links to one."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.sources: list[list[str]] = []

    def cite(self, provenance: Mapping[str, Any]) -> int:
        key = {k: provenance.get(k) for k in ("kind", "device", "detail")}
        if key not in self.items:
            self.items.append(key)
            self.sources.append([])
        index = self.items.index(key)
        source = _text(provenance.get("source"))
        if source and source not in self.sources[index]:
            self.sources[index].append(source)
        return index + 1


def render_comparison(document: Mapping[str, Any]) -> str:
    """comparison.html: self-contained (figures as data URIs, a CSP forbidding anything external), every string
    escaped, every number with a provenance badge linking to its full description."""
    from edgemtl.report.compare_plots import COMPARISON_PLOTS

    notes = _Citations()
    bundles = [b for b in document.get("bundles", []) if isinstance(b, Mapping)]
    labels = [_text(b.get("label")) for b in bundles]
    title = "edgemtl comparison: " + " · ".join(labels)
    tasks = _section(document, "tasks")
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p class=\"dim\">Made {_e(document.get('created'))} on {_e(document.get('generated_on'))} by "
             "<code>edgemtl report</code>. Read <a href=\"#how\">how to read this page</a> first.</p>",
             _kinds_section(document),
             _bundles_section(bundles)]
    if document.get("notes"):
        parts.append("<h2>Read this before comparing</h2><ul>"
                     + "".join(f"<li class=\"warn\">{_e(note)}</li>" for note in document["notes"]) + "</ul>")
    parts.append("<h2>Tasks side by side</h2>")
    for task, by_bundle in tasks.items():
        parts.append(_task_table(str(task), by_bundle, labels, notes))
    parts.append(_speedup_section(document, notes))
    parts.append(_layers_section(tasks, labels, notes))
    figures = []
    for caption, plot in COMPARISON_PLOTS:
        png = plot(document)
        if png is not None:
            data = base64.b64encode(png).decode("ascii")
            figures.append(f"<figure><img alt=\"{_e(caption)}\" src=\"data:image/png;base64,{data}\">"
                           f"<figcaption>{_e(caption)}</figcaption></figure>")
    parts.append("<h2>Plots</h2>\n" + ("\n".join(figures) or "<p class=\"dim\">Nothing to plot.</p>"))
    parts.append(_citations_section(notes))
    parts.append(_how_to_read())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" "
            "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{_PAGE_CSS}</style></head>\n<body>\n" + "\n".join(parts)
            + "\n</body></html>\n")


def _kinds_section(document: Mapping[str, Any]) -> str:
    kinds = _section(document, "provenance_kinds")
    items = "".join(f"<dt>{_badge(kind)}</dt><dd>{_e(text)}</dd>" for kind, text in kinds.items())
    return f"<h2>Kinds of numbers</h2>\n<dl>{items}</dl>"


def _bundles_section(bundles: list[Mapping[str, Any]]) -> str:
    rows = []
    for b in bundles:
        model, host = _section(b, "model"), _section(b, "compiled_on")
        sha = _text(model.get("sha256"))
        profiles = _section(b, "profiles")
        cores = f", {host['cores']} cores" if host.get("cores") else ""
        profiled = "<br>".join(f"{_e(p.get('device'))} {_badge(_text(p.get('provenance')) or 'unlabelled')} "
                               f"<small class=\"dim\">{_e(p.get('description'))}</small>"
                               for p in profiles.values() if isinstance(p, Mapping)) or _DASH
        rows.append("<tr>" + "".join((
            f"<td><strong>{_e(b.get('label'))}</strong></td>",
            f"<td>{_e(b.get('target'))} · {_e(b.get('flow'))}<br><small class=\"dim\">"
            f"{_e(b.get('target_description'))}</small></td>",
            f"<td><code>{_e(model.get('path') or _DASH)}</code><br><small class=\"dim\" title=\"{_e(sha)}\">"
            f"{_e(model.get('arch') or '')} sha256 {_e(sha[:12] or _DASH)}</small></td>",
            f"<td>{_e(host.get('cpu') or _DASH)}{_e(cores)}"
            f"<br><small class=\"dim\">{_e(host.get('platform') or '')}</small></td>",
            f"<td>{_e(b.get('created') or _DASH)}<br><small class=\"dim\">edgemtl {_e(b.get('edgemtl_version') or '?')}"
            f"</small></td>",
            f"<td>{profiled}</td>",
            f"<td><code>{_e(b.get('path'))}</code><br><small class=\"dim\" title=\"{_e(b.get('manifest_sha256'))}\">"
            f"manifest sha256 {_e(_text(b.get('manifest_sha256'))[:12])}</small></td>",
        )) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Column", "Target · flow", "Model", "Compiled on", "Created",
                                               "Profiles", "Bundle"))
    return f"<h2>Bundles</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _task_table(task: str, by_bundle: Any, labels: list[str], notes: _Citations) -> str:
    by_bundle = by_bundle if isinstance(by_bundle, Mapping) else {}
    columns = [label for label in labels if isinstance(by_bundle.get(label), Mapping)]
    metric_name = next((_text(_section(by_bundle[c], "metric").get("name")) for c in columns
                        if _section(by_bundle[c], "metric")), "")
    higher = next((_section(by_bundle[c], "metric").get("higher_is_better") for c in columns
                   if _section(by_bundle[c], "metric")), None)
    arrow = " ↑ higher is better" if higher is True else " ↓ lower is better" if higher is False else ""
    rows: list[tuple[str, list[str]]] = [
        ("Shipped runtime", [_runtime_cell(_section(by_bundle[c], "runtime")) for c in columns]),
        (f"Metric {metric_name}{arrow}, float",
         [_figure_cell(_section(_section(by_bundle[c], "metric"), "float"), notes, _metric_text) for c in columns]),
        (f"Metric {metric_name}, as deployed",
         [_deployed_metric_cell(_section(by_bundle[c], "metric"), notes) for c in columns]),
        ("Latency per inference (shipped runtime, best-founded figure)",
         [_latency_cell(_section(by_bundle[c], "latency"), notes, headline=True) for c in columns]),
        ("Other latencies", [_other_latencies(by_bundle[c], notes) for c in columns]),
        ("Throughput", [_figure_cell(_section(by_bundle[c], "throughput"), notes, lambda v: f"{v:,.0f} /s")
                        for c in columns]),
        ("Memory", [_memory_cell(by_bundle[c].get("memory"), notes) for c in columns]),
        ("Model size (deployed artifact)",
         [_figure_cell(_section(by_bundle[c], "model_size"), notes, human_bytes) for c in columns]),
        ("Energy per inference", [_figure_cell(_section(by_bundle[c], "energy"), notes, lambda v: f"{v:.3g} mJ")
                                  for c in columns]),
        ("Simulated instructions", [_figure_cell(_section(by_bundle[c], "instructions"), notes, human_count)
                                    for c in columns]),
    ]
    head = "<th>Quantity</th>" + "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr><td>" + _e(name) + "</td>" + "".join('<td class="cell">' + cell + "</td>" for cell in cells)
                   + "</tr>" for name, cells in rows if any(cell != _DASH for cell in cells))
    return f"<h3>{_e(task)}</h3>\n<table class=\"side\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _runtime_cell(runtime: Mapping[str, Any]) -> str:
    if not runtime:
        return _DASH
    return (f"<code>{_e(runtime.get('value'))}</code><small>{_e(runtime.get('text'))}</small>"
            f"<small>chosen by: {_e(runtime.get('chosen_by') or 'unknown')}</small>")


def _metric_text(value: float) -> str:
    return f"{value:.4g}"


def _deployed_metric_cell(metric: Mapping[str, Any], notes: _Citations) -> str:
    deployed = _section(metric, "deployed")
    if not deployed:
        return _DASH
    cell = _figure_cell(deployed, notes, _metric_text)
    change = number(metric.get("relative_change"))
    precision = _text(metric.get("deployed_precision"))
    extra = f"{precision}" + (f", {change:+.2%} vs float" if change is not None else "")
    return cell + f"<small>{_e(extra)}</small>"


def _figure_cell(fig: Mapping[str, Any], notes: _Citations, fmt: Any) -> str:
    value = number(fig.get("value")) if fig else None
    provenance = _section(fig, "provenance")
    if value is None:
        if fig and fig.get("missing"):
            return f"<span class=\"fail\">missing: {_e(fig['missing'])}</span>"
        return _DASH
    what = f"<small>{_e(fig['what'])}</small>" if fig.get("what") else ""
    return f"{_e(fmt(value))} {_cite(provenance, notes)}{what}{_device(provenance)}"


def _latency_cell(latency: Mapping[str, Any], notes: _Citations, headline: bool = False) -> str:
    median = number(latency.get("median")) if latency else None
    if median is None:
        return _DASH
    provenance = _section(latency, "provenance")
    p90 = number(latency.get("p90"))
    text = human_ms(median) + (f" <span class=\"dim\">p90 {human_ms(p90)}</span>" if p90 is not None else "")
    warn = ""
    if provenance.get("kind") == "measured" and not latency.get("on_target"):
        warn = "<small class=\"warn\">measured off the target (see device)</small>"
    elif provenance.get("kind") == "emulated":
        warn = "<small class=\"warn\">emulated: not the device's speed</small>"
    if latency.get("check_passed") is False:
        warn += "<small class=\"fail\">output check failed</small>"
    runtime = f"<small>{_e(latency.get('runtime'))}</small>" if headline else ""
    return f"{text} {_cite(provenance, notes)}{runtime}{_device(provenance)}{warn}"


def _other_latencies(figures: Mapping[str, Any], notes: _Citations) -> str:
    headline = figures.get("latency")
    others = [lat for lat in figures.get("latencies") or [] if isinstance(lat, Mapping) and lat != headline]
    if not others:
        return _DASH
    items = "".join(f"<li><code>{_e(lat.get('runtime'))}</code>: {_latency_cell(lat, notes)}</li>" for lat in others)
    return f"<details><summary>{len(others)} more</summary><ul>{items}</ul></details>"


def _memory_cell(memory: Any, notes: _Citations) -> str:
    figures = [m for m in memory if isinstance(m, Mapping)] if isinstance(memory, list) else []
    if not figures:
        return _DASH
    head = _figure_cell(figures[0], notes, human_bytes)
    if len(figures) == 1:
        return head
    rest = "".join(f"<li>{_figure_cell(m, notes, human_bytes)}</li>" for m in figures[1:])
    return f"{head}<details><summary>{len(figures) - 1} more</summary><ul>{rest}</ul></details>"


def _speedup_section(document: Mapping[str, Any], notes: _Citations) -> str:
    rows = []
    for item in document.get("speedups") or []:
        fast, slow = _section(item, "fast"), _section(item, "slow")
        ratio = number(item.get("ratio"))
        rows.append("<tr>" + "".join((
            f"<td>{_e(item.get('task'))}</td>", f"<td>{_e(item.get('device'))}</td>",
            f"<td>{_e(fast.get('bundle'))} · <code>{_e(fast.get('runtime'))}</code></td>",
            f"<td class=\"n\">{human_ms(number(fast.get('median_ms')) or 0.0)}</td>",
            f"<td>{_e(slow.get('bundle'))} · <code>{_e(slow.get('runtime'))}</code></td>",
            f"<td class=\"n\">{human_ms(number(slow.get('median_ms')) or 0.0)}</td>",
            f"<td class=\"n\">{f'{ratio:.2f}×' if ratio is not None else _DASH}</td>")) + "</tr>")
    intro = ("<p>Ratios only between two <strong>measured</strong> medians of one task on the <strong>same device"
             "</strong> (same description: machine and thread count), both outputs checked where a check exists. "
             "Nothing else on this page is divided by anything.</p>")
    table = ("<table><thead><tr><th>Task</th><th>Device</th><th>Faster</th><th>Median</th><th>Slower</th>"
             f"<th>Median</th><th>Slower / faster</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
             if rows else "<p class=\"dim\">No two measured figures share a device: no ratio is given.</p>")
    skipped = document.get("not_compared") or []
    if skipped:
        items = "".join(f"<li>{_e(s.get('task'))}: {_e(' vs '.join(map(str, s.get('bundles') or [])))}: "
                        f"{_e(s.get('why'))}</li>" for s in skipped if isinstance(s, Mapping))
        table += f"<details><summary>{len(skipped)} pairs of headline latencies not compared, and why</summary>" \
                 f"<ul>{items}</ul></details>"
    return f"<h2>Speed-ups (same device, measured)</h2>\n{intro}\n{table}"


def _layers_section(tasks: Mapping[str, Any], labels: list[str], notes: _Citations) -> str:
    parts = ["<h2>Per-layer breakdowns</h2>",
             "<p>The most expensive layers of each task's deployed graph, from whatever the runtime or the "
             "estimate gives; shares are of the summed per-layer time (or cycles).</p>"]
    for task, by_bundle in tasks.items():
        if not isinstance(by_bundle, Mapping):
            continue
        for label in labels:
            layers = _section(_section(by_bundle, label), "layers")
            if not layers:
                continue
            if layers.get("none"):
                parts.append(f"<p><strong>{_e(task)} / {_e(label)}</strong>: <span class=\"dim\">none: "
                             f"{_e(layers['none'])}</span></p>")
                continue
            provenance = _section(layers, "provenance")
            rows = layers.get("layers") if isinstance(layers.get("layers"), list) else []
            has_cycles = any(isinstance(r, Mapping) and number(r.get("cycles")) is not None for r in rows)
            has_instr = any(isinstance(r, Mapping) and number(r.get("instructions")) is not None for r in rows)
            has_bound = any(isinstance(r, Mapping) and r.get("bound") for r in rows)
            head = ["Layer", "Op", "ms"] + (["cycles"] if has_cycles else []) + ["Share"] \
                + (["qemu instructions"] if has_instr else []) + (["Bound by"] if has_bound else [])
            body = []
            for row in rows:
                if not isinstance(row, Mapping):
                    continue
                cells = [f"<td><code>{_e(row.get('name'))}</code></td>", f"<td>{_e(row.get('op') or _DASH)}</td>",
                         _num(row.get("ms"), human_ms)]
                if has_cycles:
                    cells.append(_num(row.get("cycles"), human_count))
                cells.append(_num(row.get("share"), lambda v: f"{v:.1%}"))
                if has_instr:
                    cells.append(_num(row.get("instructions"), human_count))
                if has_bound:
                    cells.append(f"<td>{_e(row.get('bound') or _DASH)}</td>")
                body.append(f"<tr>{''.join(cells)}</tr>")
            extra = ""
            if layers.get("instructions_provenance"):
                extra = f" instructions: {_cite(_section(layers, 'instructions_provenance'), notes)}"
            summary = (f"<strong>{_e(task)} / {_e(label)}</strong>: {_e(layers.get('source'))}, "
                       f"{_e(layers.get('nodes'))} layers {_cite(provenance, notes)}{extra}"
                       + (f" <span class=\"dim\">{_e(layers.get('graph'))}</span>" if layers.get("graph") else ""))
            parts.append(f"<details><summary>{summary}</summary><table><thead><tr>"
                         + "".join(f"<th>{_e(h)}</th>" for h in head)
                         + f"</tr></thead><tbody>{''.join(body)}</tbody></table></details>")
    return "\n".join(parts)


def _citations_section(notes: _Citations) -> str:
    items = []
    for index, (item, sources) in enumerate(zip(notes.items, notes.sources), start=1):
        shown = "; ".join(sources[:6]) + (f"; and {len(sources) - 6} more" if len(sources) > 6 else "")
        items.append(f"<li id=\"p{index}\">{_badge(_text(item.get('kind')))} "
                     + " · ".join(_e(item[k]) for k in ("device", "detail") if item.get(k))
                     + (f"<br><small class=\"dim\">read from {_e(shown)}</small>" if shown else "") + "</li>")
    return f"<h2>Provenance of every number</h2>\n<ol>{''.join(items)}</ol>"


def _how_to_read() -> str:
    return (
        "<h2 id=\"how\">How to read this page</h2><ul>"
        "<li>Each column is one bundle (one model compiled for one target); each task has its own table.</li>"
        "<li>Every number has a coloured badge saying what kind of number it is and a footnote [n] saying where it "
        "was measured or what model produced it; hover a badge for the same text.</li>"
        "<li><strong>measured</strong> figures on different devices, or figures of different kinds, are shown side "
        "by side but never divided: an estimate for GAP9 and a measurement on an x86 host are not a speed-up.</li>"
        "<li>An arm64 bundle profiled with <code>--device local</code> was timed on this x86 host: its latency is "
        "real but is <em>not</em> the arm64 board's; profile it through a board "
        "(<code>edgemtl profile BUNDLE --device rpc://HOST:PORT/KEY</code>) for that.</li>"
        "<li>Memory differs in meaning per target: the GAP9 arena is an exact static allocation, the FPGA figure is "
        "estimated on-chip RAM, the CPU figure an analysis of the graph (the runtime may allocate more).</li>"
        "<li>comparison.json holds every figure with the same provenance objects.</li></ul>")


def _badge(kind: str) -> str:
    css = kind if kind in KINDS else "other"
    return f"<span class=\"prov prov-{css}\">{_e(kind or 'unlabelled')}</span>"


def _cite(provenance: Mapping[str, Any], notes: _Citations) -> str:
    if not provenance:
        return "<span class=\"prov prov-other\">unlabelled</span>"
    index = notes.cite(provenance)
    kind = _text(provenance.get("kind")) or "unlabelled"
    title = " · ".join(_text(provenance.get(k)) for k in ("kind", "device", "detail") if provenance.get(k))
    css = kind if kind in KINDS else "other"
    return (f"<span class=\"prov prov-{css}\" title=\"{_e(title)}\">{_e(kind)}</span>"
            f"<sup><a href=\"#p{index}\">[{index}]</a></sup>")


def _device(provenance: Mapping[str, Any]) -> str:
    device = provenance.get("device")
    return f"<small>{_e(device)}</small>" if device else ""


def _num(value: Any, fmt: Any) -> str:
    parsed = number(value)
    return f"<td class=\"n\">{_e(fmt(parsed)) if parsed is not None else _DASH}</td>"


def _e(value: Any) -> str:
    return escape(_text(value), quote=True)


# ------------------------------------------------------------------------------------------------ helpers

def _arch_of(platform_text: str) -> str | None:
    for arch in ("x86_64", "aarch64", "arm64"):
        if arch in platform_text:
            return "aarch64" if arch == "arm64" else arch
    return None


def _runs_text(latency: Mapping[str, Any]) -> str:
    runs, threads, batch = (number(latency.get(k)) for k in ("runs", "threads", "batch"))
    parts = [f"median of {runs:.0f} runs" if runs is not None else "median (runs not recorded)"]
    if threads is not None:
        parts.append(f"{threads:.0f} thread{'s' if threads != 1 else ''}")
    if batch is not None:
        parts.append(f"batch {batch:.0f}")
    return ", ".join(parts)


def _cpu_name() -> str:
    try:
        from edgemtl.timing import host_cpu_name

        return host_cpu_name()
    except Exception:  # noqa: BLE001
        return platform.processor() or "CPU"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


