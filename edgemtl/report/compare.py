"""The comparison report (`edgemtl report BUNDLE [BUNDLE ...]`): tasks and targets side by side, for hardware teams.

`compare_bundles` reads the manifests of several bundles (any targets: host, arm64, gap9, zcu104) and returns one
JSON document; `write_comparison` writes it as `comparison.json` next to a self-contained `comparison.html`
(report/compare_page.py), both moved into place atomically.

Every number is a *figure*: its value, its unit and a provenance object (edgemtl.manifest's shape: kind, source,
detail, device; the kinds are edgemtl.manifest.KINDS). Ratios ("speed-ups") are only ever computed between two
*measured* latencies on the same device (the same device description, so the same machine and thread count);
everything else is shown side by side, labelled, never divided.

What every bundle can carry (the compile's latencies, `edgemtl profile` results, the liveness analysis' peak memory)
is read here; what only a target has (its runtime, its metric in the deployed precision, its estimates, memory, model
size and per-layer costs) comes from the report sections that apply to the bundle (report/sections/, their
`compare_figures`), so nothing here knows a flow by name. Per-layer timing that needs a model run (ONNX Runtime's
profiler) is the caller's `layer_timer`: the report runs nothing by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgemtl.bundle import MANIFEST, read_manifest
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import KINDS, figure, prov, provenance_kind, provenance_of
from edgemtl.report.compare_page import render_comparison
from edgemtl.report.figures import compile_arch, kind_of, latency, runs_text, text
from edgemtl.report.fmt import jsonable
from edgemtl.report.html import SECTIONS
from edgemtl.report.read import number, pick, section, task_entries
from edgemtl.report.sections import LayerTimer, Section, TaskInput

__all__ = ["compare_bundles", "render_comparison", "write_comparison"]

COMPARISON_HTML = "comparison.html"
COMPARISON_JSON = "comparison.json"
SCHEMA = 2  # 2: edgemtl.manifest provenance objects; a latency's device_key, artifact and sha256 beside them
# latency candidates for the headline, best first: a measurement on the target itself, one elsewhere, a model
_HEADLINE_RANK = {"measured-on-target": 0, "measured": 1, "estimated": 2, "simulated": 3, "emulated": 4}
_RUNTIME_ALIASES = {"onnxruntime": "onnxruntime-float"}
_SINGLE = ("metric", "throughput", "model_size", "energy", "instructions", "layers")


def compare_bundles(bundles: list[Path], *, layer_timer: LayerTimer | None = None) -> dict[str, Any]:
    """One JSON document comparing the bundles' tasks side by side; see the module docstring."""
    if not bundles:
        raise EdgemtlError("report needs at least one bundle folder")
    manifests = [(Path(b), read_manifest(Path(b))) for b in bundles]
    labels = _labels(manifests)
    described = []
    tasks: dict[str, dict[str, Any]] = {}
    for (path, manifest), label in zip(manifests, labels):
        described.append(_describe_bundle(path, manifest, label))
        sections = [s for s in SECTIONS if s.applies(manifest)]
        for name, entry in task_entries(manifest).items():
            tasks.setdefault(name, {})[label] = _task_figures(path, manifest, name, entry, sections, layer_timer)
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
    return jsonable(document)


def write_comparison(bundles: list[Path], out_dir: Path, *, layer_timer: LayerTimer | None = None) -> list[Path]:
    """Write comparison.json and comparison.html into `out_dir` (replaced as a whole, atomically); `layer_timer`
    times each ONNX graph per layer (None: no per-layer timing)."""
    document = compare_bundles(bundles, layer_timer=layer_timer)
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


# ------------------------------------------------------------------------------------------------ bundles

def _labels(manifests: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """The column name of each bundle: its target, with the folder name when two share a target."""
    targets = [text(section(m, "target").get("name")) or p.name for p, m in manifests]
    labels = []
    for (path, _), target in zip(manifests, targets):
        label = target if targets.count(target) == 1 else f"{target} ({path.resolve().name})"
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def _describe_bundle(path: Path, manifest: Mapping[str, Any], label: str) -> dict[str, Any]:
    target, model = section(manifest, "target"), section(manifest, "model")
    profiles = {slug: pick(p, ("device", "description", "provenance", "timestamp", "file"))
                for slug, p in section(manifest, "profiles").items() if isinstance(p, Mapping)}
    return {
        "label": label,
        "path": str(path.resolve()),
        "target": target.get("name"),
        "flow": target.get("flow"),
        "target_description": target.get("description"),
        "model": pick(model, ("path", "sha256", "arch", "data")),
        "manifest_sha256": hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest(),
        "created": manifest.get("created"),
        "edgemtl_version": manifest.get("edgemtl_version"),
        "compiled_on": pick(section(manifest, "host"), ("cpu", "cores", "platform", "onnxruntime", "tvm")),
        "profiles": profiles,
    }


# ------------------------------------------------------------------------------------------- per task

def _task_figures(bundle: Path, manifest: Mapping[str, Any], task: str, entry: Mapping[str, Any],
                  sections: list[Section], layer_timer: LayerTimer | None) -> dict[str, Any]:
    """The task's column: the bundle-wide figures read here, the target's from each applicable section."""
    given = entry.get("runtime")
    given = _RUNTIME_ALIASES.get(given, given) if isinstance(given, str) and given else None
    parts: list[dict[str, Any]] = [dict(s.compare_figures(TaskInput(bundle, manifest, task, entry, given, layer_timer)))
                                   for s in sections]
    first = {key: next((part[key] for part in parts if part.get(key) is not None), None)
             for key in (*_SINGLE, "runtime", "target_arch")}
    runtime = _runtime(manifest, entry, given, first["runtime"])
    latencies = _measured_latencies(manifest, task, entry, first["target_arch"])
    latencies += [item for part in parts for item in part.get("latencies", [])]
    for item in latencies:
        item["shipped"] = runtime is not None and item["runtime"] == runtime["value"]
    memory = [item for part in parts for item in part.get("memory", [])]
    if (peak := number(entry.get("peak_activation_bytes"))) is not None:  # the table shows the target's own first
        memory.append(figure(peak, "B", "estimated", source=f"manifest.json tasks.{task}.peak_activation_bytes",
                             detail="edgemtl's liveness analysis of the task graph; what a runtime actually allocates "
                                    "may differ", device="any runtime (float32, batch 1)",
                             what="peak activation memory (float32)"))
    return {"runtime": runtime, "metric": first["metric"], "latency": _headline(latencies), "latencies": latencies,
            "throughput": first["throughput"], "memory": memory, "model_size": first["model_size"],
            "energy": first["energy"], "instructions": first["instructions"],
            "layers": first["layers"] or {"none": "no report section gives per-layer data for this target"}}


def _runtime(manifest: Mapping[str, Any], entry: Mapping[str, Any], given: str | None,
             offered: dict[str, Any] | None) -> dict[str, Any] | None:
    """The runtime this bundle ships for the task (the entry's, else the target section's default) and who chose
    it; its description is the section's."""
    if given is None:
        return offered
    chosen = section(entry, "runtime_chosen_by")
    if chosen:
        device = text(chosen.get("device"))
        described = next((text(p.get("description")) for p in section(manifest, "profiles").values()
                          if isinstance(p, Mapping) and p.get("device") == device and p.get("description")), "")
        why = f"fastest correct runtime measured by `edgemtl profile --device {device}`" + (
            f" ({described})" if described else "")
    else:
        why = text(entry.get("runtime_reason")) or "the compile's default"
    described_as = offered.get("text") if offered and offered.get("value") == given else None
    return {"value": given, "text": described_as or given, "chosen_by": why}


def _measured_latencies(manifest: Mapping[str, Any], task: str, entry: Mapping[str, Any],
                        target_arch: str | None) -> list[dict[str, Any]]:
    """The compile's latencies and every `edgemtl profile` result of the task; "on target" when measured on the
    CPU architecture the target's section names (none named: never)."""
    found: list[dict[str, Any]] = []
    host_platform = text(section(manifest, "host").get("platform"))
    compiled_on_target = target_arch is not None and target_arch == compile_arch(manifest)
    for key, runtime in (("latency_ms", "onnxruntime-float"), ("latency_ms_pytorch", "pytorch-eager")):
        timing = section(entry, key)
        median = number(timing.get("median"))
        if median is None:
            continue
        kind = kind_of(timing.get("provenance"))
        device = text(timing.get("device")) or "the compile host"
        provenance = prov(kind, source=f"manifest.json tasks.{task}.{key}",
                          detail=f"{runs_text(timing)}; {text(timing.get('runtime'))}", device=device)
        found.append(latency(median, number(timing.get("p90")), runtime, provenance,
                             on_target=kind == "measured" and compiled_on_target,
                             device_key=f"{device} @ {host_platform}"))
    for slug, profile in section(entry, "profile").items():
        if not isinstance(profile, Mapping):
            continue
        description = text(section(section(manifest, "profiles"), slug).get("description"))
        for runtime, result in section(profile, "runtimes").items():
            if not isinstance(result, Mapping) or (median := number(result.get("median_ms"))) is None:
                continue
            kind = kind_of(result.get("provenance") or profile.get("provenance"))
            arch = text(section(result, "details").get("arch"))
            device = description or text(profile.get("device"))
            if arch and arch not in device:
                device += f" ({arch})"
            check = result.get("check_passed")
            detail = (f"{runs_text({'runs': result.get('runs')})}; edgemtl profile --device "
                      f"{text(profile.get('device'))} at {text(profile.get('timestamp'))}; output check "
                      + {True: "passed", False: "FAILED", None: "not done (no reference)"}.get(check, "not done"))
            source = f"manifest.json tasks.{task}.profile.{slug}.runtimes.{runtime}" + (
                f"; results store row {result['store_id']}" if result.get("store_id") else "")
            found.append(latency(median, number(result.get("p90_ms")), _RUNTIME_ALIASES.get(runtime, runtime),
                                 prov(kind, source=source, detail=detail, device=device),
                                 on_target=kind == "measured" and target_arch is not None and arch == target_arch,
                                 device_key=f"{text(profile.get('device'))}: {description}",
                                 artifact=result.get("artifact"), sha256=result.get("sha256"),
                                 check_passed=check if isinstance(check, bool) else None))
    return found


def _headline(latencies: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one latency the side-by-side table shows: the shipped runtime's best-founded figure."""
    def rank(item: dict[str, Any]) -> tuple[int, int]:
        kind = provenance_kind(item["provenance"])
        kind_rank = _HEADLINE_RANK["measured-on-target"] if kind == "measured" and item["on_target"] \
            else _HEADLINE_RANK.get(kind, 9)
        return kind_rank, 0 if item["shipped"] else 1

    candidates = [item for item in latencies if item["runtime"] != "pytorch-eager"]
    return min(candidates, key=rank) if candidates else None


# ------------------------------------------------------------------------------------------ comparisons

def _speedups(tasks: Mapping[str, Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ratios only between measured latencies of one task on one device; the pairs left uncompared, and why."""
    speedups, skipped = [], []
    for task, by_bundle in tasks.items():
        groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for label, figures in by_bundle.items():
            for item in figures.get("latencies", []):
                if provenance_kind(item["provenance"]) == "measured" and item.get("check_passed") is not False:
                    groups.setdefault(item.get("device_key", "?"), []).append((label, item))
        for device, items in groups.items():
            if len(items) < 2:
                continue
            fastest_label, fastest = min(items, key=lambda pair: pair[1]["median"])
            for label, item in items:
                if item is fastest:
                    continue
                speedups.append({"task": task, "device": _device(item), "device_key": device,
                                 "fast": {"bundle": fastest_label, "runtime": fastest["runtime"],
                                          "median_ms": fastest["median"]},
                                 "slow": {"bundle": label, "runtime": item["runtime"], "median_ms": item["median"]},
                                 "ratio": item["median"] / fastest["median"] if fastest["median"] else None,
                                 "basis": "both measured on the same device (same description, machine and threads)"})
        headlines = [(label, figures["latency"]) for label, figures in by_bundle.items() if figures.get("latency")]
        for index, (label_a, a) in enumerate(headlines):
            for label_b, b in headlines[index + 1:]:
                kind_a, kind_b = provenance_kind(a["provenance"]), provenance_kind(b["provenance"])
                if kind_a == kind_b == "measured" and a.get("device_key") == b.get("device_key"):
                    continue
                why = (f"{kind_a} vs {kind_b}" if kind_a != kind_b
                       else "both measured, but on different devices" if kind_a == "measured"
                       else f"both {kind_a}: a ratio of two models or emulations is not a speed-up")
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
            headline = figures.get("latency")
            kind = provenance_kind(headline["provenance"]) if headline else None
            if kind == "measured" and not headline.get("on_target"):
                notes.append(f"{task} / {label}: the latency shown was measured on {_device(headline)},"
                             f" not on the {label} target itself")
            elif kind == "emulated":
                notes.append(f"{task} / {label}: only an emulated timing exists; it is not the device's speed")
    missing = sorted({label for by_bundle in tasks.values() for label, f in by_bundle.items() if not f.get("latency")})
    for label in missing:
        notes.append(f"{label}: some tasks have no latency at all; profile the bundle "
                     "(`edgemtl profile BUNDLE --device local|rpc://HOST:PORT/KEY`)")
    return notes


def _device(item: Mapping[str, Any]) -> str | None:
    found = provenance_of(item.get("provenance"))
    return found.device if found else None
