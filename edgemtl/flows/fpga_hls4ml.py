"""The FPGA flow (zcu104): power-of-two QAT per task, QONNX, hls4ml C simulation, FINN and roofline estimates; for a
mixture-of-experts model, int8 integer graphs and edgemtl's own HLS C++ instead (flows/fpga_hls_cpp.py).

Steps: load_data -> analyse -> partition_experts -> hls4ml_op_check -> quantize_brevitas -> check_budget ->
export_qonnx -> hls4ml_csim -> quantize_int8 -> check_int8_budget -> hls_cpp_csim -> hls_cpp_switchable -> estimates ->
board_kit. QAT
climbs the mixed-precision ladder (passes/brevitas_qat/ladder.py) until each task is within its accuracy budget
(flows/budget.py). The hls4ml steps skip an MoE model (hls4ml cannot express its data-dependent expert dispatch) and
the int8 / HLS C++ steps skip any other, each saying why.
Everything up to synthesis runs here; synthesis, the bitstream and the board need Vitis/Vivado and a ZCU104 (the
bundle's hw/README.md gives the exact commands). A task hls4ml cannot map is recorded with the op that stopped it and
the other tasks go on; a C simulation that differs from the quantized model in any value (HLS C++: by more than 1 LSB
from the integer reference), or a g++ testbench whose run differs from the C simulation, fails the compile (without
g++ the manifest says the testbench or C simulation was not built, and why).
"""

from __future__ import annotations

from typing import Any

import json
import shutil

import torch

from pydantic import BaseModel, Field

from edgemtl.analysis.fpga_cost import estimate_model
from edgemtl.flows.op_support import task_support
from edgemtl.backends.finn import finn_estimates
from edgemtl.backends.hls4ml_backend import build_hls_project, build_testbench, csim_check
from edgemtl.manifest import Section, TaskEntry, manifest_model
from edgemtl.model.onnx_export import export_task
from edgemtl.backends.qonnx_export import check_exports, export_qcdq, export_qonnx, inference_cost
from edgemtl.errors import EdgemtlError, VerificationError
from edgemtl.flow import FlowContext, Skipped, Step
from edgemtl.flows.common import analyse, load_verification_data, task_list, task_model, with_progress
from edgemtl.flows.budget import budget_record, budget_settings, check_budget, compile_budget
from edgemtl.flows.experts import partition_step_at
from edgemtl.flows.fpga_hls_cpp import (NOT_MOE, PRECISION as MOE_PRECISION, hls_cpp_step,
                                        quantize_step as int8_quantize_step, switchable_hls_step, takes_model)
from edgemtl.flows.fpga_hls_cpp import check_options  # noqa: F401 - this flow's options check (flows.check_flow_options)
from edgemtl.flows.passes import pass_step
from edgemtl.passes.base import PassResult
from edgemtl.passes.layer_bits import write_layer_bits
from edgemtl.passes.quantize_brevitas import QuantConfig, QuantTaskPath, grid_align, output_lsb
from edgemtl.resources import HW_DIR

BOARD_KIT = HW_DIR / "zcu104"
LAYER_BITS = "layer_bits.json"   # every task's shipped widths, as --layer-bits FILE.json reads them back
HLS4ML_SKIP = ("mixture-of-experts model: hls4ml and FINN cannot express its data-dependent expert dispatch; "
               "quantize_int8 and hls_cpp_csim compile it instead")


def _precision(ctx: FlowContext) -> str:
    """The precision deployed: the hls4ml path's (--precision, else the target's first), int8 for an MoE model."""
    return MOE_PRECISION if takes_model(ctx) else ctx.options.precision or ctx.target.precisions[0]


def _fabric_clock_mhz(ctx: FlowContext) -> float:
    return next(c.clock_mhz for c in ctx.target.compute if c.kind == "fpga-fabric")


def op_check_step(ctx: FlowContext) -> Skipped | None:
    """Each task's float graph against hls4ml's ONNX handlers, before QAT (skipped for MoE models).

    A task with an op hls4ml lacks is recorded with that op and left out of QAT and HLS (its float ONNX and roofline
    estimate stay); if every task has one, the compile stops here with the first."""
    if takes_model(ctx):
        return Skipped(HLS4ML_SKIP)
    support = task_support(ctx.loaded.model, ctx.loaded.spec, ctx.target, task_list(ctx))
    refused = {task: reason for task, reason in support.items() if reason is not None}
    for task, reason in refused.items():
        ctx.manifest["tasks"][task]["hls4ml"] = {"ok": False, "error": reason, "checked": "before QAT"}
    if refused and len(refused) == len(task_list(ctx)):
        raise EdgemtlError(next(iter(refused.values())))
    ctx.state.hls4ml_refused = refused
    return None


def _qat_config(ctx: FlowContext) -> QuantConfig:
    """The target precision as the mixed-precision ladder's start, the compile's accuracy budget, widths pinned by a
    --layer-bits file, and the rewrites hls4ml and the board's PS need (nearest upsampling in the PL, a final resize /
    softmax on the PS)."""
    return QuantConfig(precision=_precision(ctx), qat_steps=ctx.options.qat_steps, overrides=ctx.options.layer_bits,
                       **budget_settings(ctx), pinned=ctx.options.task_layer_bits, nearest_upsampling=True, host_resize=True, host_softmax=True)


# what a task over its budget after the whole ladder (every rung up to w8a8 with more QAT) can try next
NEXT_TRY = "more --qat-steps (each rung's cap)"
NEXT_TRY_PINNED = "more 8-bit layers in the --layer-bits file, or more --qat-steps"


def _keep_quantized(ctx: FlowContext, result: PassResult[QuantTaskPath]) -> None:
    """Each task's QAT record and budget record; the widths every task shipped with in layer_bits.json (what
    --layer-bits FILE.json pins)."""
    ctx.state.quantized = dict(result.paths)
    budget = compile_budget(ctx)
    for task, record in result.record.tasks.items():
        entry = ctx.manifest["tasks"][task]
        entry["quantization"] = record.to_dict()
        spec = ctx.loaded.spec.task(task)
        labelled = spec.metric in record.metric_quant
        entry["budget"] = budget_record(
            budget, task, metric=spec.metric if labelled else None, higher_is_better=spec.higher_is_better,
            metric_float=record.metric_float[spec.metric] if labelled else None,
            metric_quant=record.metric_quant[spec.metric] if labelled else None, loss=record.relative_loss,
            remedies=[{"name": row["rung"], **{k: v for k, v in row.items() if k != "rung"}} for row in record.rungs],
            shipped=next((row["rung"] for row in record.rungs if row["shipped"]), record.precision),
            next_try=NEXT_TRY_PINNED if ctx.options.task_layer_bits.get(task) else NEXT_TRY,
            unseen=record.unseen)
    write_layer_bits(ctx.bundle / LAYER_BITS, ctx.loaded.model, ctx.loaded.spec, {
        task: {"precision": record.precision, "layers": record.overrides} for task, record in result.record.tasks.items()})
    ctx.manifest["layer_bits"] = {"file": LAYER_BITS, "pin_with": f"edgemtl compile ... --layer-bits {LAYER_BITS}"}


# brevitas QAT of every task path hls4ml accepted, at the target precision (skipped for MoE models, said why)
quantize_step = pass_step(
    "quantize_brevitas", config=_qat_config, keep=_keep_quantized,
    tasks=lambda ctx: [t for t in task_list(ctx) if t not in ctx.state.hls4ml_refused],
    skip=lambda ctx: HLS4ML_SKIP if takes_model(ctx) else None)
quantize_step.__doc__ = f"{quantize_step.__doc__} (skipped for MoE models)"


def _grid_samples(ctx: FlowContext, qmodel: torch.nn.Module, count: int) -> torch.Tensor:
    data = ctx.state.data
    if data is None:
        raise EdgemtlError("the zcu104 flow checks its graphs on real samples: pass --data (see docs/own-model.md)")
    return grid_align(qmodel, torch.from_numpy(data.normalise(data.images[:count])))


def export_step(ctx: FlowContext) -> Skipped | None:
    """QONNX + QCDQ per task, checked against brevitas; qonnx's inference cost (skipped for MoE models).

    A task hls4ml refused gets its float ONNX instead."""
    if takes_model(ctx):
        return Skipped(HLS4ML_SKIP)
    for task in task_list(ctx):
        entry = ctx.manifest["tasks"][task]
        if task not in ctx.state.quantized:
            relative = f"tasks/{task}/model.onnx"
            export_task(task_model(ctx, task), ctx.loaded.spec, task, ctx.bundle / relative)
            entry["artifacts"] = {"onnx": relative}
            continue
        qmodel = ctx.state.quantized[task].fabric
        qonnx, qcdq = f"tasks/{task}/model.qonnx.onnx", f"tasks/{task}/model.qcdq.onnx"
        export_qonnx(qmodel, ctx.loaded.spec, ctx.bundle / qonnx)
        export_qcdq(qmodel, ctx.loaded.spec, ctx.bundle / qcdq)
        entry["artifacts"] = {"qonnx": qonnx, "qcdq": qcdq}
        entry["export_check"] = check_exports(qmodel, ctx.bundle / qonnx, ctx.bundle / qcdq,
                                              _grid_samples(ctx, qmodel, ctx.options.verify_samples))
        entry["inference_cost"] = inference_cost(ctx.bundle / qonnx)
    return None


def hls4ml_step(ctx: FlowContext) -> Skipped | None:
    """hls4ml project per task, C-simulated against the quantized model (skipped for MoE models).

    A task hls4ml cannot map is recorded, not fatal."""
    if takes_model(ctx):
        return Skipped(HLS4ML_SKIP)
    clock_ns = 1000.0 / _fabric_clock_mhz(ctx)
    failed = []
    for task, path in with_progress(ctx, ctx.state.quantized.items(), "hls4ml project + C simulation"):
        entry, qmodel = ctx.manifest["tasks"][task], path.fabric
        relative = f"tasks/{task}/hls4ml"
        try:
            project = build_hls_project(ctx.bundle / entry["artifacts"]["qonnx"], ctx.bundle / relative, task,
                                        ctx.target.part, clock_ns)
        except EdgemtlError as exc:  # an op hls4ml cannot map: this task stops here, the others go on
            entry["hls4ml"] = {"ok": False, "error": str(exc)}
            failed.append(task)
            shutil.rmtree(ctx.bundle / relative, ignore_errors=True)
            continue
        images = _grid_samples(ctx, qmodel, ctx.options.csim_samples)
        with torch.no_grad():
            reference = qmodel(images).numpy()
        csim = csim_check(project, images.numpy(), reference, output_lsb(qmodel), task)  # a mismatch is fatal
        testbench = build_testbench(project)
        _require_agreement(task, relative, testbench)
        entry["hls4ml"] = {"ok": True, "project": relative, "csim": csim, "testbench": testbench,
                           "precision": project.precision_table, "seconds": project.seconds}
        entry["artifacts"]["hls4ml"] = relative
        io = _io_description(project, ctx.loaded.spec, task, list(reference.shape[1:]), path.host_resize, path.host_softmax)
        (ctx.bundle / relative / "io.json").write_text(json.dumps(io, indent=2))
    if failed and len(failed) == len(ctx.state.quantized):
        raise EdgemtlError(f"hls4ml could map none of the tasks; first: {ctx.manifest['tasks'][failed[0]]['hls4ml']['error']}")
    return None


def _require_agreement(task: str, where: str, testbench: dict) -> None:
    """A testbench that ran must reproduce the C simulation: the manifest records `matches_csim` as a fact,
    so a run that differs, or gave nothing to compare, fails the compile. Not built (no g++, or g++ failed):
    the record's reason says so and the compile goes on."""
    if not testbench.get("ran") or testbench.get("matches_csim") is True:
        return
    reason = testbench.get("tb_reason")
    if reason is None and testbench.get("tb_max_abs_diff") is not None:
        reason = (f"max |testbench - C simulation| {testbench['tb_max_abs_diff']:.6g} over "
                  f"{testbench.get('tb_samples', '?')} samples")
    raise VerificationError(f"task {task!r}: the g++ testbench of {where} disagrees with the hls4ml C simulation: "
                       f"{reason or 'its run gave no output to compare'}")


def _io_description(project, spec, task: str, output_shape: list[int], host_resize: dict | None,
                    host_softmax: dict | None) -> dict:
    """The streams of the HLS top function, as hw/zcu104/driver.py reads them (ports, shapes, fixed types),
    and the resize / softmax the driver applies on the PS after the output stream, if any."""
    model = project.hls_model

    def stream(variable, name: str, shape: list[int], channels_last: bool) -> dict:
        return {"name": name, "port": variable.name, "shape": shape, "channels_last": channels_last,
                "precision": variable.type.precision.definition_cpp()}

    inputs = [stream(v, "input", spec.input.shape, project.input_channels_last) for v in model.get_input_variables()]
    outputs = [stream(v, task, output_shape, True) for v in model.get_output_variables()]
    for output in outputs:
        output.update({key: value for key, value in (("host_resize", host_resize), ("host_softmax", host_softmax)) if value})
    return {"task": task, "inputs": inputs, "outputs": outputs}


def estimates_step(ctx: FlowContext) -> None:
    """FINN's estimates (its own venv, when present) and edgemtl's roofline at the deployed precision, per task."""
    precision = _precision(ctx)
    for task in with_progress(ctx, task_list(ctx), "FINN and roofline"):
        entry = ctx.manifest["tasks"][task]
        entry["roofline"] = estimate_model(task_model(ctx, task), ctx.loaded.spec, ctx.target, task, precision)
        if "qonnx" in entry.get("artifacts", {}):
            entry["finn"] = finn_estimates(ctx.bundle / entry["artifacts"]["qonnx"], task, ctx.target.part,
                                           _fabric_clock_mhz(ctx), ctx.target.target_fps, ctx.bundle / "work" / "finn" / task,
                                           logic=ctx.target.fabric.model_dump() if ctx.target.fabric else None)
    shutil.rmtree(ctx.bundle / "work", ignore_errors=True)


def check_int8_budget(ctx: FlowContext) -> Skipped | None:
    """MoE models: every task's int8 path within its accuracy budget, as check_budget (skipped otherwise)."""
    return check_budget(ctx) if takes_model(ctx) else Skipped(NOT_MOE)


def hls_cpp_board_commands(task: str, top: str, project: str | None = None) -> list[str]:
    """From an HLS C++ project (a task's, or with `project` the design serving every task, run as `task`) to
    outputs on the board, run from the bundle: the IP (Vitis HLS), the block design and bitstream
    (hw/hls_cpp_design.tcl), the PYNQ driver (hw/hls_cpp_driver.py); hw/README.md explains."""
    folder = project or f"tasks/{task}/hls"
    run = "python3 hls_cpp_driver.py run edgemtl.bit io.json inputs.npy" + (f" --task {task}" if project else "")
    return [f"(cd {folder} && vitis_hls -f build_prj.tcl)",
            f"vivado -mode batch -source hw/hls_cpp_design.tcl -tclargs {folder}/{top}_prj/solution1/impl/ip {top}", run]


def board_kit_step(ctx: FlowContext) -> None:
    """The block design, PYNQ driver and README for the user with Vivado and a board (io.json: per project)."""
    shutil.copytree(BOARD_KIT, ctx.bundle / "hw", dirs_exist_ok=True)
    ctx.manifest["board_kit"] = {"folder": "hw", "readme": "hw/README.md",
                                 "next": "vitis_hls -f build_prj.tcl in each tasks/<task>/hls4ml, then hw/README.md"}
    if takes_model(ctx):  # the HLS C++ tops: hw/hls_cpp_design.tcl and hw/hls_cpp_driver.py, not the hls4ml kit
        build, design, run = hls_cpp_board_commands("<task>", "<top>")
        tops = {task: entry["hls_cpp"]["top"] for task, entry in ctx.manifest["tasks"].items()
                if isinstance(entry.get("hls_cpp"), dict) and entry["hls_cpp"].get("ok")}
        ctx.manifest["board_kit"].update(
            next=f"{build} (Vitis 2024.1+: vitis-run --mode hls --tcl build_prj.tcl); then {design}; then on the board, "
                 f"with overlay/edgemtl.bit + .hwh, hw/hls_cpp_driver.py and tasks/<task>/hls/io.json: {run} "
                 "(<top>: the task's hls_cpp.top; see hw/README.md)",
            commands={task: hls_cpp_board_commands(task, top) for task, top in tops.items()})
        switchable = (ctx.manifest.get("moe") or {}).get("switchable_hls") or {}
        if switchable.get("ok"):   # one bitstream for every task: --task picks one, select() switches
            ctx.manifest["board_kit"]["switchable_commands"] = hls_cpp_board_commands(
                "<task>", switchable["top"], switchable["project"])


STEPS: list[Step] = [
    ("load_data", load_verification_data),
    ("analyse", analyse),
    ("partition_experts", partition_step_at(_precision)),
    ("hls4ml_op_check", op_check_step),
    ("quantize_brevitas", quantize_step),
    ("check_budget", check_budget),
    ("export_qonnx", export_step),
    ("hls4ml_csim", hls4ml_step),
    ("quantize_int8", int8_quantize_step),
    ("check_int8_budget", check_int8_budget),
    ("hls_cpp_csim", hls_cpp_step),
    ("hls_cpp_switchable", switchable_hls_step),
    ("estimates", estimates_step),
    ("board_kit", board_kit_step),
]


class FpgaTask(TaskEntry):
    """The FPGA flow's task entry: QAT, QONNX export, hls4ml project and C simulation, estimates; for an MoE model
    the int8 record and the HLS C++ project with its C simulation instead of the first three."""

    quantization: Section | None = Field(None, description="brevitas QAT record: precision, steps, metrics, rungs")
    export_check: Section | None = None
    inference_cost: Section | None = Field(None, description="qonnx inference cost of the QONNX graph")
    hls4ml: Section | None = Field(None, description="HLS project, C simulation and g++ testbench vs the QAT model")
    int8: Section | None = Field(None, description="MoE models: int8 quantization record and metrics (or agreement)")
    hls_cpp: Section | None = Field(None, description="MoE models: HLS C++ project, MoE on-chip bytes vs the plan, "
                                                      "g++ C simulation vs the int8 reference")
    roofline: Section | None = Field(None, description="edgemtl roofline (estimated)")
    finn: Section | None = Field(None, description="FINN analytical estimates (estimated)")


class FpgaExtra(BaseModel):
    board_kit: dict[str, Any] | None = Field(None, description="the hw/ folder and the next command to run")
    layer_bits: dict[str, Any] | None = Field(None, description="layer_bits.json: every task's shipped widths")


MANIFEST = manifest_model(FpgaTask, FpgaExtra)
