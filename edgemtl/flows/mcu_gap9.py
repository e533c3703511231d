"""The MCU flow (gap9): int8 integer graphs per task, Deeploy's tiled code, our portable C checked bit for bit.

Steps: load_data -> analyse -> partition_experts -> quantize_int8 -> check_budget -> export_int8_onnx ->
deeploy_codegen -> c_codegen -> verify_c_host -> verify_c_qemu -> mcu_estimates -> board_kit. quantize_int8 tries its
calibration remedies until each task is within its accuracy budget (flows/budget.py), or the compile fails.

The numpy reference executor of each task's integer graph is the ground truth: the generated C must give
exactly its integers on real samples, compiled with the host gcc (a mismatch fails the compile) and, when the
RISC-V cross compiler and qemu are installed, for rv32imac under qemu-system-riscv32 (per-layer retired
instructions recorded as "simulated"). Deeploy runs in its own venv where present; layers it cannot map are
listed, never fatal. Deeploy's generated C is not run (deeploy-pulp on PyPI has no kernel library): what is
checked instead is the integer ONNX handed to it, rewritten with standard ops and evaluated by onnxruntime on the
same real samples (`deeploy.onnx_check`); Deeploy's Generic C is compiled and run only where its kernel sources
are on disk (`EDGEMTL_DEEPLOY_GENERIC_KERNELS`). Every "bit for bit" in the manifest names its sample count.
A task whose path has an op the int8 backends lack is recorded with that op and the
other tasks go on; if no task can be quantized the compile stops with the first reason.
"""

from __future__ import annotations

from typing import Any

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pydantic import BaseModel, Field

from edgemtl.analysis.mcu_cost import estimate_cycles, place_in_memory, simulated_instructions
from edgemtl.backends.c import generate_c, riscv_tools_missing, run_on_host, run_on_qemu
from edgemtl.backends.c.harness import write_test_vectors
from edgemtl.backends.deeploy import (NUMERICS_COMMAND, NUMERICS_REASON, deeploy_generate, generic_kernels_dir,
                                      run_generic_on_host, unmapped_message)
from edgemtl.backends.deeploy_onnx import (evaluate_standard, export_deeploy_onnx, read_deeploy_metadata,
                                           standard_onnx, unmapped_reason)
from edgemtl.backends.deeploy_split import describe_split, mappable_prefix
from edgemtl.errors import EdgemtlError, VerificationError
from edgemtl.manifest import Section, TaskEntry, manifest_model, prov
from edgemtl.flow import FlowContext, Skipped, Step
from edgemtl.flows.budget import check_budget
from edgemtl.flows.common import analyse, load_verification_data, with_progress
from edgemtl.flows.experts import partition_step
from edgemtl.flows.int8 import int8_step
from edgemtl.model.intgraph import IntGraph, quantize_input, run_reference
from edgemtl.resources import HW_DIR

BOARD_KIT = HW_DIR / "gap9"
QEMU_PROVENANCE = prov("simulated", source="qemu-system-riscv32 rv32imac",
                       detail="one core, no SIMD; retired instructions, not cycles")


def _memory_bytes(ctx: FlowContext, name: str) -> int:
    """A memory's size from the target file: L1 / L2 by name, L3 = the first off-chip RAM."""
    for memory in ctx.target.memory:
        if memory.name == name or (name == "l3" and memory.level == "off-chip"):
            return memory.size_bytes
    raise EdgemtlError(f"target {ctx.target.name!r} lists no memory {name!r}; the gap9 flow needs l1, l2 and an off-chip L3")


def _graphs(ctx: FlowContext) -> dict[str, IntGraph]:
    return ctx.state.int_graphs


# Per-channel int8 post-training quantization of every task path, calibrated on real training images.
quantize_step = int8_step()


def export_step(ctx: FlowContext) -> None:
    """Integer ONNX in Deeploy's format per task (RequantShift, a shape on every tensor)."""
    for task, graph in _graphs(ctx).items():
        relative = f"tasks/{task}/model.int8.onnx"
        exported = export_deeploy_onnx(graph, ctx.bundle / relative)
        ctx.manifest["tasks"][task]["artifacts"]["int8_onnx"] = relative
        ctx.manifest["tasks"][task]["deeploy_mappable"] = {"ok": exported.mappable,
                                                           "unmapped": [asdict(u) for u in exported.unmapped]}


def deeploy_step(ctx: FlowContext) -> None:
    """Deeploy's tiled cluster code at the target's L1 / L2 / L3 sizes: for the whole task where its PULPOpen
    platform maps every layer ("scope": "whole"), else for the task's mappable prefix ("scope": "prefix", see
    `deeploy_split`; the rest runs in our portable C), or for nothing ("scope": "none") when the first layer is
    unmapped. With a prefix, `ok` and the memory map are Deeploy's for the prefix, `reason` / `unmapped` still name
    the layers that kept the whole task out, and `prefix_reason` says why Deeploy failed on the prefix, if it did.
    `generic` is Deeploy's Generic platform (untiled reference kernels) on the same ONNX, in `deeploy/generic/`,
    and, for a prefix, its per-layer verdict on the whole task graph (`generic.whole_graph.rejected`)."""
    l1, l2, l3 = (_memory_bytes(ctx, level) for level in ("l1", "l2", "l3"))
    for task, graph in _graphs(ctx).items():
        entry = ctx.manifest["tasks"][task]
        relative = f"tasks/{task}/deeploy"
        unmapped = [{"layer": n.name, "op": n.op, "reason": reason} for n in graph.nodes
                    if (reason := unmapped_reason(n, graph))]
        split = mappable_prefix(graph) if unmapped else None
        if not unmapped:
            onnx_path, record = ctx.bundle / entry["artifacts"]["int8_onnx"], {"scope": "whole"}
        elif split is None:
            onnx_path = ctx.bundle / entry["artifacts"]["int8_onnx"]  # Deeploy refuses it, naming the layers
            record = {"scope": "none", "layers_in_deeploy": [], "layers_elsewhere": [n.name for n in graph.nodes],
                      "prefix_macs_share": 0.0,
                      "note": f"Deeploy cannot map the task's first layer: all of it runs in our portable C "
                              f"(tasks/{task}/c)"}
        else:
            prefix, outputs = split
            described = describe_split(graph, prefix, outputs)
            onnx_relative = f"tasks/{task}/model.prefix.int8.onnx"
            onnx_path = export_deeploy_onnx(prefix, ctx.bundle / onnx_relative, outputs).path
            entry["artifacts"]["int8_onnx_prefix"] = onnx_relative
            names = ", ".join(f"{o['deeploy_name']} = {o['tensor']}" for o in described.outputs)
            record = {"scope": "prefix", "layers_in_deeploy": described.layers_in_deeploy,
                      "layers_elsewhere": described.layers_elsewhere, "prefix_macs_share": described.macs_share,
                      "prefix_macs": described.prefix_macs, "task_macs": described.task_macs,
                      "prefix_outputs": described.outputs, "prefix_onnx": onnx_relative,
                      "note": f"Deeploy's code covers the {len(described.layers_in_deeploy)} layers in "
                              f"layers_in_deeploy ({described.macs_share:.0%} of the task's MACs) and writes {names} "
                              f"(NCHW). The {len(described.layers_elsewhere)} layers in layers_elsewhere, from the "
                              f"first one Deeploy cannot map on, run in our portable C (tasks/{task}/c, which "
                              f"implements and verifies the whole task); the glue feeding Deeploy's outputs to those "
                              f"C layers is not generated."}
        whole = ctx.bundle / entry["artifacts"]["int8_onnx"] if record["scope"] == "prefix" else None
        result = deeploy_generate(onnx_path, ctx.bundle / relative, l1, l2, l3_bytes=l3, generic_whole_onnx=whole)
        generic = result.get("generic") or {}
        if generic.get("ok"):
            entry["artifacts"]["deeploy_generic"] = f"{relative}/generic"
        if result.get("ok"):
            entry["artifacts"]["deeploy"] = relative
        elif generic.get("ok"):  # PULPOpen failed, Generic's code stays
            for path in (ctx.bundle / relative).iterdir():
                if path.is_dir() and path.name != "generic":
                    shutil.rmtree(path)
                elif path.is_file():
                    path.unlink()
        else:
            shutil.rmtree(ctx.bundle / relative, ignore_errors=True)
        if split is not None and result.get("available"):
            if not result.get("ok"):
                record["prefix_reason"] = result.get("reason")
            result = {**result, "unmapped": unmapped, "reason": unmapped_message(unmapped)}
        elif split is not None:  # no Deeploy venv: its reason stays, the layers that keep the whole out are listed
            result = {**result, "unmapped": unmapped}
        entry["deeploy"] = {k: v for k, v in result.items() if k not in ("onnx_path", "out_dir")} | record
        _deeploy_numerics(ctx, task, graph, onnx_path, entry["deeploy"])


def _deeploy_numerics(ctx: FlowContext, task: str, graph: IntGraph, onnx_path: Path, record: dict) -> None:
    """What is and is not known about the numbers of the code Deeploy generated, written into `record`.

    Known, on the real samples the C is checked on: the integer ONNX handed to Deeploy, in standard ops, under
    onnxruntime (an evaluator that is not ours) equals the reference executor bit for bit (else the compile
    fails: an export bug), and how far Generic's arithmetic (no RequantizedAdd fusion) would be from it. Not known:
    what Deeploy's C computes, unless Deeploy's Generic kernel sources are on disk. A Deeploy test folder
    (network.onnx + inputs.npz + outputs.npz of one real sample) and the command that runs it are left for the
    user with Deeploy's repository."""
    scope = record.get("scope")
    record.update(numerics_checked=False, numerics_reason=record.get("numerics_reason") or NUMERICS_REASON)
    if scope == "none":
        record["onnx_check"] = {"ran": False, "reason": "Deeploy takes no layer of this task"}
        return
    tensors = [graph.output] if scope == "whole" else [o["tensor"] for o in record["prefix_outputs"]]
    q_inputs = quantize_input(graph, _c_samples(ctx))
    values = run_reference(graph, q_inputs, keep_all=True)
    expected = [values[t] for t in tensors]
    record["onnx_check"] = _onnx_check(task, onnx_path, q_inputs, expected)

    folder, relative = ctx.bundle / f"tasks/{task}/deeploy_test", f"tasks/{task}/deeploy_test"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "network.onnx")
    np.savez(folder / "inputs.npz", input_0=q_inputs[:1].astype(np.int64))
    np.savez(folder / "outputs.npz", **{f"output_{i}": e[:1].astype(np.int64) for i, e in enumerate(expected)})
    ctx.manifest["tasks"][task]["artifacts"]["deeploy_test"] = relative
    record["numerics_command"] = {platform: command.format(test_dir=f"$BUNDLE/{relative}")
                                  for platform, command in NUMERICS_COMMAND.items()}
    record["numerics_test_folder"] = {
        "folder": relative, "samples": 1,
        "note": "Deeploy's test folder layout (network.onnx = the ONNX given to Deeploy, inputs.npz, outputs.npz = "
                "the reference executor's output for real sample 0); BUNDLE is this bundle's absolute path",
        "runner_rounds_add": _runner_rounds_add(onnx_path)}

    generic = record.get("generic") or {}
    kernels = generic_kernels_dir()
    if generic.get("ok") and kernels is not None:
        generic_dir = ctx.bundle / f"tasks/{task}/deeploy/generic"
        with tempfile.TemporaryDirectory(prefix="edgemtl-deeploy-") as scratch:
            got = run_generic_on_host(generic_dir, q_inputs, read_deeploy_metadata(onnx_path), Path(scratch), kernels)
        differing = sum(int((g.reshape(e.shape) != e).sum()) for g, e in zip(got, expected))
        generic.update(numerics_checked=True, numerics_reason=None, numerics={
            "samples": len(q_inputs), "bit_exact": differing == 0, "values_differing": differing,
            "values": int(sum(e.size for e in expected)), "kernels": str(kernels),
            "compiler": "gcc -std=gnu11 -O1", "against": "edgemtl's int8 reference executor",
            "provenance": prov("measured", source="Deeploy's Generic C with Deeploy's kernels",
                               detail="compiled and run with host gcc")})
    elif generic.get("ok"):
        generic.update(numerics_checked=False, numerics_reason=f"{NUMERICS_REASON}; set "
                       f"EDGEMTL_DEEPLOY_GENERIC_KERNELS to a Deeploy checkout's TargetLibraries/Generic to run it")


def _onnx_check(task: str, onnx_path: Path, q_inputs: np.ndarray, expected: list[np.ndarray]) -> dict:
    """The ONNX handed to Deeploy, in standard ops (`standard_onnx`), under onnxruntime against the reference on
    every sample, bit for bit; with Generic's arithmetic, a prediction of how far Generic's C would be off."""
    import onnxruntime

    model = standard_onnx(onnx_path, "pulpopen")
    got = evaluate_standard(model, q_inputs, "onnxruntime")
    evaluator = f"onnxruntime {onnxruntime.__version__}"
    if not all(np.array_equal(g, e) for g, e in zip(got, expected)):
        # onnxruntime's integer kernels differ by CPU: a second, independent evaluator decides
        got = evaluate_standard(model, q_inputs, "onnx.reference")
        evaluator = "onnx.reference (onnxruntime disagreed with the reference executor and with it)"
        wrong = sum(int((g != e).sum()) for g, e in zip(got, expected))
        if wrong:
            raise VerificationError(f"task {task!r}: the integer ONNX handed to Deeploy ({onnx_path.name}) differs from the "
                               f"reference executor in {wrong} values under onnx.reference; this is an export bug, "
                               f"please report it")
    generic = evaluate_standard(standard_onnx(onnx_path, "generic"), q_inputs, "onnxruntime")
    differing = sum(int((g != e).sum()) for g, e in zip(generic, expected))
    values = int(sum(e.size for e in expected))
    return {"ran": True, "samples": len(q_inputs), "bit_exact": True, "evaluator": evaluator,
            "what": "the integer ONNX handed to Deeploy, RequantShift rewritten as standard ops with the arithmetic "
                    "of Deeploy's PULPOpen kernels (Conv/Gemm as ConvInteger/MatMulInteger), against edgemtl's int8 "
                    "reference executor: checks the export, not Deeploy's code",
            "generic_semantics": {
                "bit_exact": differing == 0, "values_differing": differing, "values": values,
                "provenance": prov("estimated", source="the same evaluation with Generic's arithmetic",
                                   detail="predicted: deeploy-pulp 0.2.1's GenericOptimizer does not fuse RequantShift "
                                          "-> Add into RequantizedAdd, so the scaled inputs of an add are clipped to "
                                          "int8 first")}}


def _runner_rounds_add(onnx_path: Path) -> list[str]:
    """RequantShift nodes whose add is not a multiple of mul: Deeploy's test generator (DeeployTest/
    generateNetwork.py, v0.2.1) inserts EmulateCMSISRequantPass, which rounds add to one, so its run of the test
    folder can differ from outputs.npz there for that reason alone."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    init = {t.name: numpy_helper.to_array(t).astype(np.int64) for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "RequantShift":
            mul, add = init[node.input[1]], init[node.input[2]]
            if np.any(np.where(mul == 0, add != 0, add % np.where(mul == 0, 1, mul) != 0)):
                names.append(node.name)
    return names


def c_step(ctx: FlowContext) -> None:
    """Portable C99 per task (static arena from the liveness plan, weights as const arrays) + test vectors."""
    samples = _c_samples(ctx)
    for task, graph in _graphs(ctx).items():
        relative = f"tasks/{task}/c"
        sources = generate_c(graph, ctx.bundle / relative, prefix="network")
        q_inputs = quantize_input(graph, samples)
        expected = run_reference(graph, q_inputs)[graph.output]
        write_test_vectors(graph, ctx.bundle / relative / "test_vectors.h", q_inputs, expected)
        entry = ctx.manifest["tasks"][task]
        entry["artifacts"]["c"] = relative
        entry["c"] = {"files": sorted(p.name for p in (ctx.bundle / relative).iterdir()),
                      "arena": sources.plan.to_dict() | {"provenance": prov("static", source="edgemtl liveness plan")},
                      "test_vectors": len(q_inputs)}
        ctx.state.c_vectors[task] = (q_inputs, expected)


def _c_samples(ctx: FlowContext) -> np.ndarray:
    data = ctx.state.data
    if data is None:
        raise EdgemtlError("the gap9 flow checks its C on real samples: pass --data (see docs/own-model.md)")
    count = min(ctx.options.c_samples, len(data))
    return data.normalise(data.images[:count]).astype(np.float64)


def verify_host_step(ctx: FlowContext) -> None:
    """The host-compiled C against the reference executor, bit for bit; any difference fails the compile."""
    with tempfile.TemporaryDirectory(prefix="edgemtl-c-") as scratch:
        for task, graph in with_progress(ctx, _graphs(ctx).items(), "gcc + run"):
            q_inputs, expected = ctx.state.c_vectors[task]
            outputs = run_on_host(graph, q_inputs, Path(scratch) / task)
            _check_exact(task, "host gcc", outputs, expected)
            ctx.manifest["tasks"][task]["c"]["host"] = {"samples": len(q_inputs), "bit_exact": True,
                                                        "compiler": "gcc -std=c99 -O2",
                                                        "against": "edgemtl's int8 reference executor"}


def verify_qemu_step(ctx: FlowContext) -> Skipped | None:
    """The rv32imac build under qemu, bit for bit, with per-layer retired instructions (skipped, said why, without tools)."""
    missing = riscv_tools_missing() or ("no qemu samples asked for (qemu_samples=0)"
                                        if ctx.options.qemu_samples < 1 else None)
    if missing:
        for task in _graphs(ctx):
            ctx.manifest["tasks"][task]["c"]["qemu"] = {"skipped": missing}
            _label_int8_metrics(ctx.manifest["tasks"][task])
        return Skipped(missing)
    with tempfile.TemporaryDirectory(prefix="edgemtl-rv32-") as scratch:
        for task, graph in with_progress(ctx, _graphs(ctx).items(), "qemu rv32"):
            entry = ctx.manifest["tasks"][task]["c"]
            q_inputs, expected = ctx.state.c_vectors[task]
            count = min(ctx.options.qemu_samples, len(q_inputs))
            run = run_on_qemu(graph, q_inputs[:count], Path(scratch) / task, timeout_s=600)
            _check_exact(task, "qemu rv32imac", run.outputs, expected[:count])
            entry["qemu"] = {"samples": count, "bit_exact": True, "provenance": QEMU_PROVENANCE,
                             "against": "edgemtl's int8 reference executor",
                             "instructions": simulated_instructions(graph, run.layer_instructions)}
    for task in _graphs(ctx):
        _label_int8_metrics(ctx.manifest["tasks"][task])


def _label_int8_metrics(entry: dict) -> None:
    """Say what the int8 metrics rest on, with every sample count: they are the reference executor's on the
    metric samples; the C was compared with it on far fewer (host, qemu)."""
    int8, c = entry.get("int8") or {}, entry.get("c") or {}
    if not int8.get("ok") or "metric_int8" not in int8:
        return
    checks = [f"{c['host']['samples']} (host gcc)"] if c.get("host", {}).get("bit_exact") else []
    if c.get("qemu", {}).get("bit_exact"):
        checks.append(f"{c['qemu']['samples']} (qemu rv32)")
    matched = (f"; the generated C matches it bit for bit on {' and '.join(checks)} samples" if checks
               else "; the generated C was not compared")
    int8["metric_int8_source"] = f"edgemtl's int8 reference executor on {int8.get('metrics_data', '?')}{matched}"


def _check_exact(task: str, where: str, outputs: np.ndarray, expected: np.ndarray) -> None:
    outputs = outputs.reshape(expected.shape)
    if not np.array_equal(outputs, expected):
        wrong = np.argwhere(outputs != expected)
        sample = int(wrong[0][0])
        raise VerificationError(f"task {task!r}: the generated C on {where} differs from the reference executor in "
                           f"{len(wrong)} values (first in sample {sample}); this is a backend bug, please report it")


def estimates_step(ctx: FlowContext) -> None:
    """L2/L3 placement and the cluster cycle / energy estimate per task, labelled as estimates."""
    for task, graph in _graphs(ctx).items():
        entry = ctx.manifest["tasks"][task]
        entry["memory_placement"] = place_in_memory(graph, ctx.target).to_dict()
        entry["cycle_estimate"] = estimate_cycles(graph, ctx.target).to_dict()


def board_kit_step(ctx: FlowContext) -> None:
    """The GAP SDK Makefile + main.c harness and its README, for the user with the GAP9 SDK and a board."""
    shutil.copytree(BOARD_KIT, ctx.bundle / "hw", dirs_exist_ok=True)
    ctx.manifest["board_kit"] = {"folder": "hw", "readme": "hw/README.md",
                                 "next": "make -f hw/Makefile clean all run platform=gvsoc NETWORK_DIR=tasks/<task>/c "
                                         "(then platform=board); see hw/README.md"}


STEPS: list[Step] = [
    ("load_data", load_verification_data),
    ("analyse", analyse),
    ("partition_experts", partition_step),
    ("quantize_int8", quantize_step),
    ("check_budget", check_budget),
    ("export_int8_onnx", export_step),
    ("deeploy_codegen", deeploy_step),
    ("c_codegen", c_step),
    ("verify_c_host", verify_host_step),
    ("verify_c_qemu", verify_qemu_step),
    ("mcu_estimates", estimates_step),
    ("board_kit", board_kit_step),
]


class Gap9Task(TaskEntry):
    """The GAP9 flow's task entry: int8 graph, Deeploy, generated C with its checks, the cost model."""

    int8: Section | None = Field(None, description="int8 quantization record and metrics (or agreement)")
    deeploy_mappable: Section | None = None
    deeploy: Section | None = Field(None, description="Deeploy's generated code, tiling and static allocation")
    c: Section | None = Field(None, description="portable C: files, arena, host and qemu bit-exactness")
    memory_placement: Section | None = Field(None, description="L1/L2/L3 placement (estimated)")
    cycle_estimate: Section | None = Field(None, description="GAP9 cycles, latency, energy (estimated)")


class Gap9Extra(BaseModel):
    board_kit: dict[str, Any] | None = Field(None, description="the hw/ folder and the next command to run")


MANIFEST = manifest_model(Gap9Task, Gap9Extra)
