"""`edgemtl compile`: run a target's flow on a loaded model and write the bundle atomically."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from rich.console import Console
from rich.markup import escape

from edgemtl import __version__
from edgemtl.bundle import MANIFEST, staged_bundle, write_json
from edgemtl.data.sources import open_data
from edgemtl.errors import EdgemtlError
from edgemtl.flow import CompileOptions, FlowContext, FlowState, Step, run_steps
from edgemtl.flows import check_flow_options, flow_manifest_model, flow_steps
from edgemtl.flows.passes import requested_steps
from edgemtl.manifest import SCHEMA_VERSION, validate_manifest
from edgemtl.model.checkpoint import LoadedModel
from edgemtl.passes.budget import resolve as resolve_budget
from edgemtl.passes.layer_bits import BITS_RANGE
from edgemtl.passes.registry import check_request
from edgemtl.timing import host_cpu_name
from edgemtl.report import write_report
from edgemtl.targets import Target, load_target


def _host() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu": host_cpu_name(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _base_manifest(loaded: LoadedModel, target: Target, tasks: list[str]) -> dict[str, Any]:
    spec = loaded.spec
    return {
        "schema_version": SCHEMA_VERSION,
        "edgemtl_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": {"name": target.name, "flow": target.flow, "description": target.description, "file": target.source,
                   **({"part": target.part, "fabric": target.fabric.model_dump()} if target.fabric else {})},
        "model": {"path": str(loaded.path), "sha256": loaded.sha256, "arch": spec.arch, "config": spec.config,
                  "source": loaded.source, "data": spec.data, "input": spec.input.model_dump(),
                  "tasks": spec.task_names, **({"import": loaded.details} if loaded.details else {})},
        "host": _host(),
        "steps": [],
        "tasks": {name: {"kind": spec.task(name).kind, "output_shape": spec.task(name).output_shape} for name in tasks},
        "all_tasks": {"tasks": tasks},
    }


def check_layer_bits(target: Target, options: CompileOptions) -> None:
    """--layer-bits sets the FPGA flow's brevitas quantizers: another target, or bits they do not take, is an error."""
    if not (options.layer_bits or options.task_layer_bits):
        return
    if target.flow != "fpga-hls4ml":
        raise EdgemtlError(f"--layer-bits sets the FPGA flow's per-layer widths; {target.name} quantizes every layer to "
                           "int8: leave --layer-bits out")
    low, high = BITS_RANGE
    for layer, pair in options.layer_bits.items():
        if not all(low <= bits <= high for bits in pair):
            raise EdgemtlError(f"--layer-bits {layer}={pair[0]},{pair[1]}: {target.name} takes {low}..{high} bits")


def compile_steps(target: Target, options: CompileOptions = CompileOptions()) -> list[Step]:
    """The steps a compile for `target` runs with these options, in order (`edgemtl compile --list-steps`)."""
    steps = [*requested_steps(options), *flow_steps(target.flow)]
    if options.stop_after is not None:
        names = [name for name, _ in steps]
        if options.stop_after not in names:
            raise EdgemtlError(f"--stop-after {options.stop_after!r} is no step of the {target.name} flow; its steps: "
                               f"{', '.join(names)}")
        steps = steps[: names.index(options.stop_after) + 1]
    return steps


def compile_model(loaded: LoadedModel, target_name: str, out_dir: Path, options: CompileOptions = CompileOptions(),
                  console: Console | None = None) -> Path:
    """Compile for `target_name` into `out_dir`; on any failure nothing is left at `out_dir`."""
    console = console or Console(stderr=True)
    target = load_target(target_name)
    tasks = [t.name for t in loaded.spec.select(options.tasks)]
    reference = options.data or loaded.spec.data
    for request in options.passes:  # bad settings fail before any work
        check_request(request, loaded.spec, has_data=reference is not None)
    steps = compile_steps(target, options)
    check_flow_options(target, loaded, options)
    if target.max_drop is not None or options.max_drop:  # a bad accuracy budget fails before any work
        if target.max_drop is None:
            raise EdgemtlError(f"--max-drop is an accuracy budget for quantizing targets; {target.name} does not quantize")
        resolve_budget(options.max_drop, tasks, target.max_drop, target.name)
    check_layer_bits(target, options)
    manifest = _base_manifest(loaded, target, tasks)
    if options.stop_after is not None:
        manifest["stopped_after"] = {"step": options.stop_after, "steps_not_run": [
            name for name, _ in compile_steps(target, replace(options, stop_after=None))[len(steps):]]}
    state = FlowState(tasks=tasks)
    if reference is not None:  # bad data fails before any work, and every step reads the same source
        state.source = open_data(reference, loaded.spec, resize=options.resize, holdout=options.holdout)
        manifest["data"] = state.source.describe()
    with staged_bundle(out_dir) as staging:
        context = FlowContext(loaded, target, options, staging, manifest, state=state)
        run_steps(steps, context, console)
        validate_manifest(manifest, flow_manifest_model(target.flow))  # a key no model declares is an edgemtl bug
        write_json(staging / MANIFEST, manifest)
        write_report(manifest, staging)
    for task, step, error in tasks_left_out(manifest) if options.stop_after is None else []:
        console.print(f"[yellow]warning:[/yellow] task {task!r} has no {step} artifact in this bundle: {error}")
    for name, entry in manifest.get("passes", {}).items():   # e.g. a width search front for another model
        for warning in entry.get("warnings", []) if isinstance(entry, dict) else []:
            console.print(f"[yellow]warning:[/yellow] {name}: {escape(str(warning))}")
    return out_dir.resolve()


def tasks_left_out(manifest: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(task, step, error) for each task a step could not build (`{"ok": false, "error": ...}` in its entry): the
    flow goes on with the other tasks, so the user must be told which ones the bundle lacks and why."""
    return [(task, step, str(record["error"]))
            for task, entry in manifest["tasks"].items() for step, record in entry.items()
            if isinstance(record, dict) and record.get("ok") is False and "error" in record]
