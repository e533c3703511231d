"""The zcu104 flow's path for mixture-of-experts models: int8 integer graph per task -> generated Vitis HLS C++,
C-simulated with g++ against the integer reference executor on real held-out samples.

hls4ml and FINN have no layer for the MoE ViT's data-dependent expert dispatch (top-k routing, per-expert token
lists), so their path (brevitas QAT -> QONNX -> hls4ml) skips such a model and this one takes it: the `quantize_int8`
step the GAP9 flow runs (per-channel int8 weights, integer requantisation multipliers) gives each task's expert path
as an `IntGraph`, and `edgemtl.backends.hls_cpp` writes it as an HLS project with the MoE run expert-major. The C
simulation is the check: every output value within 1 LSB of the reference (generated C++ is exact by construction,
so anything else is a backend bug) or the compile fails. Synthesis, timing and resources need Vitis HLS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgemtl.analysis.fpga_cost import fabric_from_target
from edgemtl.backends.hls_cpp import csim
from edgemtl.backends.hls_cpp import multitask
from edgemtl.backends.hls_cpp.estimate import cycles_from_log, estimate_design, estimate_multitask
from edgemtl.backends.hls_cpp.generate import HlsSources, MoeMemory, generate_hls
from edgemtl.errors import EdgemtlError, VerificationError
from edgemtl.flow import CompileOptions, FlowContext, Skipped
from edgemtl.flows.common import with_progress
from edgemtl.flows.int8 import int8_step
from edgemtl.manifest import prov
from edgemtl.model.intgraph import IntGraph, quantize_input, run_reference
from edgemtl.passes.partition_experts import has_experts
from edgemtl.targets import Target

PRECISION = "w8a8"         # what the int8 integer graph is, for the roofline and the memory plan
ALLOWED_LSB = 1            # the C simulation's largest allowed difference from the reference, per output value
MOE_NOTE = ("the MoE ViT's data-dependent expert dispatch (NonZero / Gather / ScatterElements) has no hls4ml or FINN "
            "layer: each task path is quantized to an int8 integer graph and compiled by edgemtl's own Vitis HLS C++ "
            "backend (expert-major MoE kernel), C-simulated with g++ against the integer reference; no QAT, QONNX or "
            "FINN estimate")
NOT_MOE = "no mixture-of-experts layer: the brevitas / QONNX / hls4ml path compiles this model"
NOT_VERIFIED = "C synthesis, co-simulation, timing and FPGA resources: they need Vitis HLS (see next)"
SWITCHABLE_HLS = "switchable/hls"   # the design serving every task
SWITCHABLE_TOP = "edgemtl_tasks"


def takes_model(ctx: FlowContext) -> bool:
    """Whether this path (not hls4ml's) compiles the model: it has experts."""
    return has_experts(ctx.loaded.model)


def check_options(model: nn.Module, target: Target, options: CompileOptions) -> None:
    """Before any work: --precision and --layer-bits set the hls4ml path's quantizers, which an MoE model skips."""
    if not has_experts(model):
        return
    asked = [flag for flag, given in (("--precision", options.precision not in (None, PRECISION)),
                                      ("--layer-bits", bool(options.layer_bits or options.task_layer_bits)))
             if given]
    if asked:
        flags = " and ".join(asked)
        raise EdgemtlError(f"{flags} {'sets' if len(asked) == 1 else 'set'} the hls4ml path's quantizers; an MoE model on "
                           f"{target.name} is quantized to int8 ({PRECISION}) for its HLS C++: leave {flags} out")


# Per-channel int8 post-training quantization of every task's expert path (MoE models; the GAP9 flow's step).
quantize_step = int8_step(skip=lambda ctx: None if takes_model(ctx) else NOT_MOE)
quantize_step.__doc__ = f"MoE models: {quantize_step.__doc__} (skipped otherwise)"


def top_names(tasks: list[str]) -> dict[str, str]:
    """A distinct C++ identifier per task for its HLS top function: edgemtl_<task>, other characters as '_'."""
    tops: dict[str, str] = {}
    for task in tasks:
        base = "edgemtl_" + re.sub(r"[^A-Za-z0-9_]", "_", task)
        top, n = base, 2
        while top in tops.values():
            top, n = f"{base}_{n}", n + 1
        tops[task] = top
    return tops


def _held_out(ctx: FlowContext) -> tuple[np.ndarray, str]:
    """The first `csim_samples` held-out images (normalised, as quantize_input takes them) and where they come from."""
    data = ctx.state.data
    if data is None:
        raise EdgemtlError("the zcu104 flow checks its HLS C++ on real samples: pass --data (see docs/own-model.md)")
    count = min(ctx.options.csim_samples, len(data))
    if count < 1:
        raise EdgemtlError("the HLS C simulation needs at least one sample (csim_samples >= 1)")
    return data.normalise(data.images[:count]).astype(np.float64), f"{data.name}/{data.split}"


def _simulator_missing() -> str | None:
    """Why the C simulation cannot be built here (no g++, no ap_int.h headers), else None."""
    if shutil.which(csim.COMPILER) is None:
        return f"{csim.COMPILER} not found on PATH"
    try:
        csim.ap_types_dir()
    except EdgemtlError as exc:
        return str(exc)
    return None


def _compiler() -> dict[str, str]:
    """The C simulation's compiler, its version and flags, as the record names them."""
    done = subprocess.run([csim.COMPILER, "-dumpfullversion"], capture_output=True, text=True, timeout=30)
    return {"compiler": f"{csim.COMPILER} {done.stdout.strip() or '(version unknown)'}", "flags": " ".join(csim.FLAGS)}


def _moe_memory(memory: MoeMemory) -> dict[str, Any]:
    """One MoE layer's on-chip bytes in the generated kernel next to memory_plan's expert-major plan of the layer."""
    plan = memory.plan.expert_major
    return {"layer": memory.layer, "buffers": memory.buffers, "expert_bytes": memory.expert_bytes,
            "router_bytes": memory.router_bytes, "table_bytes": memory.table_bytes, "weight_bytes": memory.weight_bytes,
            "activation_bytes": memory.activation_bytes,
            "plan_expert_major": {"weight_bytes_on_chip": plan.weight_bytes_on_chip,
                                  "activation_bytes_on_chip": plan.activation_bytes_on_chip,
                                  "peak_on_chip_bytes": plan.peak_on_chip_bytes, "notes": plan.notes},
            "provenance": prov("static", source="edgemtl HLS C++ generator",
                               detail="the arrays the generated kernel declares; the plan at 1 byte per value")}


def _generate(ctx: FlowContext, graphs: dict[str, IntGraph]) -> dict[str, HlsSources]:
    """Each task's HLS project in tasks/<task>/hls; a task the backend refuses is recorded and the others go on."""
    projects, tops = {}, top_names(list(graphs))
    for task, graph in graphs.items():
        relative, entry = f"tasks/{task}/hls", ctx.manifest["tasks"][task]
        try:
            projects[task] = generate_hls(graph, ctx.bundle / relative, tops[task])
        except EdgemtlError as exc:
            entry["hls_cpp"] = {"ok": False, "error": str(exc)}
            shutil.rmtree(ctx.bundle / relative, ignore_errors=True)
            continue
        entry.setdefault("artifacts", {})["hls_cpp"] = relative
        entry["hls_cpp"] = {"ok": True, "project": relative, "top": tops[task],
                            "files": sorted(str(p.relative_to(ctx.bundle / relative)) for p in projects[task].files),
                            "moe": [_moe_memory(m) for m in projects[task].moe],
                            "next": f"cd {relative} && vitis_hls -f build_prj.tcl (Vitis 2024.1+: vitis-run --mode hls "
                                    "--tcl build_prj.tcl)",
                            "not_verified": NOT_VERIFIED}
    if not projects:
        raise EdgemtlError(f"the HLS C++ backend could take none of the tasks; first: "
                           f"{ctx.manifest['tasks'][next(iter(graphs))]['hls_cpp']['error']}")
    return projects


def _check(task: str, where: str, got: np.ndarray, expected: np.ndarray) -> int:
    """The largest |C simulation - reference| in output LSBs; past ALLOWED_LSB the compile fails, naming the worst."""
    difference = np.abs(got.reshape(expected.shape) - expected)
    worst = int(difference.max())
    if worst > ALLOWED_LSB:
        sample, *index = np.unravel_index(int(difference.argmax()), difference.shape)
        raise VerificationError(f"task {task!r}: the HLS C simulation of {where} differs from the int8 reference "
                                f"executor by {worst} LSB (sample {sample}, output {tuple(int(i) for i in index)}; "
                                f"{ALLOWED_LSB} allowed) on {len(expected)} samples; this is a backend bug, please "
                                f"report it")
    return worst


def hls_cpp_step(ctx: FlowContext) -> Skipped | None:
    """MoE models: Vitis HLS C++ per task, C-simulated with g++ against the int8 reference (skipped otherwise).

    The projects go to tasks/<task>/hls, with the samples and the reference's outputs in tb_data/ for build_prj.tcl's
    own C simulation. Every output value must be within 1 LSB of the reference; without g++ the projects are still
    written and each record says why they were not simulated."""
    if not takes_model(ctx):
        return Skipped(NOT_MOE)
    graphs, (images, source) = ctx.state.int_graphs, _held_out(ctx)
    projects = _generate(ctx, graphs)
    vectors = {}
    for task, sources in projects.items():
        q_inputs = quantize_input(graphs[task], images)
        vectors[task] = (q_inputs, run_reference(graphs[task], q_inputs)[graphs[task].output])
        csim.write_tb_data(sources, *vectors[task])
    missing = _simulator_missing()
    if missing is not None:  # as the hls4ml testbench without g++: said why, the compile goes on
        records = {task: {"built": False, "ran": False, "reason": missing} for task in projects}
    else:
        records = _simulate(ctx, projects, vectors, source)
    fabric = fabric_from_target(ctx.target)
    for task, record in records.items():
        entry = ctx.manifest["tasks"][task]
        entry["hls_cpp"]["csim"] = record
        entry["hls_cpp"]["estimate"] = estimate_design(graphs[task], fabric, record.get("pipelined_iterations")).to_dict()
        _label_int8_metric(entry, record if record["ran"] else None)
    return None


def _simulate(ctx: FlowContext, projects: dict[str, HlsSources], vectors: dict[str, tuple[np.ndarray, np.ndarray]],
              source: str) -> dict[str, dict[str, Any]]:
    """Every project built as one g++ translation unit (ap_int.h, most of a build, is parsed once), then each run on
    its samples and checked against the reference's outputs: each task's csim record."""
    records = {}
    with tempfile.TemporaryDirectory(prefix="edgemtl-hls-csim-") as scratch:
        start = time.perf_counter()
        exe = csim.build_csim_batch(list(projects.values()), Path(scratch) / "bin", defines=["EMH_CYCLES"])
        built = {"build_seconds": round(time.perf_counter() - start, 3),
                 "build": f"one g++ translation unit for the {len(projects)} task project(s) of this bundle", **_compiler()}
        for task, sources in with_progress(ctx, projects.items(), "HLS C simulation"):
            q_inputs, expected = vectors[task]
            start = time.perf_counter()
            got, log = csim.run_binary(sources, exe, q_inputs, Path(scratch) / task, batched=True)
            seconds = round(time.perf_counter() - start, 3)
            worst = _check(task, f"tasks/{task}/hls", got, expected)
            records[task] = {"ran": True, "samples": len(q_inputs), "data": source, "max_lsb_difference": worst,
                             "exact": worst == 0, "seconds": seconds, **built,
                             "pipelined_iterations": cycles_from_log(log),
                             "against": "edgemtl's int8 reference executor (run_reference)",
                             "provenance": prov("simulated", source="g++ C simulation of the generated HLS C++",
                                                detail=f"{'bit-exact' if worst == 0 else f'within {worst} LSB'}: the int8 "
                                                       f"reference executor's outputs on {len(q_inputs)} real samples")}
    return records


def _label_int8_metric(entry: dict, record: dict | None) -> None:
    """Say what the int8 metric rests on: the reference executor's outputs, which the C simulation was (or was not)
    compared with, on far fewer samples."""
    int8 = entry.get("int8") or {}
    if not int8.get("ok") or "metric_int8" not in int8:
        return
    matched = (f"; the HLS C simulation matches it {'bit for bit' if record['exact'] else 'within 1 LSB'} on "
               f"{record['samples']} samples" if record else "; the HLS C simulation was not run")
    int8["metric_int8_source"] = f"edgemtl's int8 reference executor on {int8.get('metrics_data', '?')}{matched}"


def switchable_hls_step(ctx: FlowContext) -> Skipped | None:
    """MoE models: one HLS C++ design serving every task (the task id, an s_axilite register, selects the task's
    router rows, expert set, requantisation tables and head), C-simulated for every task on the same samples.

    The samples run interleaved (each task in turn on a sample: every run right after a task switch), then task by
    task (steady state), so the record has the first inference after a switch next to steady state for the same
    sample and task, and a value that leaked from one task into the next would show as a mismatch. Every output must
    equal the task's int8 reference (ALLOWED_LSB) or the compile fails. The per-task designs stay: a design that
    cannot serve every task (tasks that quantize the input differently) is recorded as not built."""
    if not takes_model(ctx):
        return Skipped(NOT_MOE)
    graphs = {task: graph for task, graph in ctx.state.int_graphs.items()
              if (ctx.manifest["tasks"][task].get("hls_cpp") or {}).get("ok")}
    if len(graphs) < 2:
        return Skipped("one task: its own design (tasks/<task>/hls) is the design")
    images, source = _held_out(ctx)
    folder = ctx.bundle / SWITCHABLE_HLS
    try:
        sources = multitask.generate_multitask_hls(graphs, folder, SWITCHABLE_TOP)
    except EdgemtlError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        ctx.manifest.setdefault("moe", {})["switchable_hls"] = {"ok": False, "error": str(exc)}
        return None
    tasks = sources.tasks
    q_inputs = quantize_input(graphs[tasks[0]], images)
    expected = {task: run_reference(graph, q_inputs)[graph.output] for task, graph in graphs.items()}
    samples = range(len(q_inputs))   # every task in turn on each sample, then each task twice on each sample
    runs = [(t, s) for s in samples for t in tasks] + [(t, s) for t in tasks for s in samples for _ in range(2)]
    multitask.write_tb_data(sources, q_inputs[[s for _, s in runs]], [t for t, _ in runs],
                            [expected[t][s] for t, s in runs])
    record: dict[str, Any] = {
        "ok": True, "project": SWITCHABLE_HLS, "top": SWITCHABLE_TOP, "task_ids": {t: k for k, t in enumerate(tasks)},
        "task_register": "task (s_axilite)", "shared_nodes": len(sources.shared), "switched_nodes": sources.switched,
        "task_only_nodes": {t: len(v) for t, v in sources.task_only.items()},
        "expert_rows": {layer: {"stored": len({r for rows in ids.values() for r in rows}),
                                "per_task": {t: len(rows) for t, rows in ids.items()}}
                        for layer, ids in sources.moe_rows.items()},
        "rom_bytes": sum(n * bits for n, bits in sources.rom_bits) // 8,
        "per_task_designs_rom_bytes": sum(g.weight_bytes() for g in graphs.values()),
        "rom_provenance": prov("static", source="edgemtl HLS C++ generator",
                               detail="the ROM arrays this design declares, against every task graph's parameters"),
        "next": f"cd {SWITCHABLE_HLS} && vitis_hls -f build_prj.tcl (Vitis 2024.1+: vitis-run --mode hls --tcl "
                "build_prj.tcl)",
        "not_verified": NOT_VERIFIED}
    missing = _simulator_missing()
    cycles: list[int] = []
    if missing is not None:
        record["csim"] = {"built": False, "ran": False, "reason": missing}
    else:
        record["csim"], cycles = _simulate_switchable(sources, q_inputs, runs, expected, source)
        record["switching"] = switch_cycles(runs, cycles)
    record["estimate"] = estimate_multitask(sources, fabric_from_target(ctx.target), cycles).to_dict()
    ctx.manifest.setdefault("moe", {})["switchable_hls"] = record
    return None


def _simulate_switchable(sources: multitask.MultiTaskSources, q_inputs: np.ndarray, runs: list[tuple[str, int]],
                         expected: dict[str, np.ndarray], source: str) -> tuple[dict[str, Any], list[int]]:
    """Build and run the design's C simulation on `runs` (task, sample); check every output: its record, cycles."""
    with tempfile.TemporaryDirectory(prefix="edgemtl-hls-switch-") as scratch:
        start = time.perf_counter()
        exe = csim.build_csim(sources, defines=["EMH_CYCLES"])
        built = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        outputs, log = csim.run_multitask_binary(sources, exe, q_inputs[[s for _, s in runs]], [t for t, _ in runs],
                                                 Path(scratch))
        seconds = round(time.perf_counter() - start, 3)
    worst = {}
    for task in sources.tasks:
        got = np.stack([out for out, (t, _) in zip(outputs, runs) if t == task])
        want = np.stack([expected[task][s] for t, s in runs if t == task])
        worst[task] = _check(task, SWITCHABLE_HLS, got, want)
    exact = all(w == 0 for w in worst.values())
    record = {"ran": True, "runs": len(runs), "samples": len(q_inputs), "data": source, "max_lsb_difference": worst,
              "exact": exact, "build_seconds": built, "seconds": seconds, **_compiler(),
              "order": "each sample under every task in turn (each run right after a switch), then each task twice on "
                       "each sample (the second run in steady state)",
              "against": "edgemtl's int8 reference executor (run_reference), per task",
              "provenance": prov("simulated", source="g++ C simulation of the generated HLS C++",
                                 detail=f"{'bit-exact' if exact else 'within 1 LSB'}: every task's int8 reference "
                                        f"outputs on {len(q_inputs)} real samples, interleaved across tasks")}
    return record, cycles_from_log(log)


def switch_cycles(runs: list[tuple[str, int]], cycles: list[int]) -> dict[str, Any]:
    """Per task, the C simulation's cycles of a run right after another task against the same sample right after
    itself (steady state): the FPGA's first-inference-after-switch cost."""
    after: dict[tuple[str, int], int] = {}
    steady: dict[tuple[str, int], int] = {}
    for index, ((task, sample), count) in enumerate(zip(runs, cycles)):
        previous = runs[index - 1][0] if index else None
        (steady if previous == task else after).setdefault((task, sample), count)
    pairs = [(key, after[key], steady[key]) for key in after if key in steady]
    per_task = {}
    for task in dict.fromkeys(t for t, _ in runs):
        ratios = [a / s for (t, _), a, s in pairs if t == task]
        if ratios:
            per_task[task] = {"pairs": len(ratios), "max_ratio": max(ratios),
                              "after_switch_cycles": [a for (t, _), a, _ in pairs if t == task],
                              "steady_cycles": [s for (t, _), _, s in pairs if t == task]}
    return {"per_task": per_task, "max_ratio": max((v["max_ratio"] for v in per_task.values()), default=None),
            "definition": "C simulation cycles (pipelined loop iterations) of a task's run right after another "
                          "task's, over the same task on the same sample right after itself",
            "provenance": prov("simulated", source="g++ C simulation of the generated HLS C++ (EMH_CYCLES)")}
