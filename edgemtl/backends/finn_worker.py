"""FINN estimate worker: runs INSIDE the finn-plus venv (`.venv-finn`), never imported by edgemtl.

Interface (version 1), called by `edgemtl.backends.finn` as a subprocess:

    .venv-finn/bin/python finn_worker.py REQUEST.json RESULT.json

REQUEST: {"version": 1, "qonnx_path", "task", "part", "clock_mhz", "target_fps": [..], "work_dir"}.
RESULT:  {"version": 1, "ok": true, "finn_version", "nodes_unmapped": [...], "step_seconds": {...},
          "by_fps": {"<fps>": {...totals, cycles per layer, fps, latency...}}}
      or {"version": 1, "ok": false, "reason": "<one line>", "step": "<the FINN step that failed>"}.

What it does: an estimate-only dataflow build (FINN's `estimate_only_dataflow_steps`, no HLS, no Vivado)
with four extra steps for the graphs edgemtl's brevitas pass exports:
- `step_prepare_qonnx` (first): refuses a non-nearest Resize (FINN's only resampling layer is
  UpsampleNearestNeighbour) and folds the 32-bit bias Quant nodes into float biases (qonnx's
  ExtractBiasFromConv cannot take brevitas' bias quantizers, see `_fold_bias_quant`).
- `step_move_past_fork` (after streamlining): moves scale (Mul/Add) and layout (Transpose, Reshape/Flatten)
  nodes past the branch point where task heads fork off the shared trunk, then streamlines again so every
  head absorbs its own (without it the heads' MatMuls stay unmapped, or FINN's flatten removal rewires only
  one head and leaves the other reading a tensor nothing produces, which this worker checks after every step).
- `step_streamline_joins`: moves equal scales and transposes past residual Adds, skip Concats and nearest
  Resizes, so they become integer ElementwiseAdd / StreamingConcat / upsampling layers.
- `step_resize_and_pool_to_hw`: nearest Resize -> UpsampleNearestNeighbour and GlobalAveragePool ->
  GlobalAccPool with its 1/(H*W) absorbed into the next thresholds, which FINN's step_convert_to_hw misses.
When the graph has several outputs and one is named like the
request's task, only that head is built. After conversion, any node left outside FINN's hardware layers
other than layout/scale ops at the graph's ends is a refusal (a float model would otherwise "pass" with its
convolutions silently left to the host). The fps-independent front (QONNX -> FINN ->
streamline -> HW layers -> specialised layers) runs once; folding and the estimate reports run once per
target fps. Only the standard library is imported at module level; FINN is booted in `_boot_finn`.

Booting FINN outside its CLI (finn-plus 1.6.1): `XILINX_VIVADO` must name a (dummy) Vivado path, FINN's
dummy settings must be initialised (`FINN_BUILD_DIR` absolute, `FINN_SETTINGS` pointing at a file that
does not exist so no user settings leak in), and the simulator names of `finn.xsi` are pre-set before
the builder is imported (the builder does `from finn.xsi import SimEngine`, whose lazy lookup would
otherwise try to compile the XSI simulator against Vivado).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Run as a script, Python puts this file's folder first on sys.path, where edgemtl's own `onnxruntime.py`
# would shadow the real onnxruntime that qonnx imports. The caller also passes `-P`; this covers a direct run.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if (str(Path(p).resolve()) if p else str(Path.cwd())) != _HERE]

PROTOCOL_VERSION = 1
DUMMY_VIVADO = "/opt/edgemtl-dummy/Xilinx/Vivado/2024.2"  # never executed: estimate-only builds
XSI_NAMES = ("SimEngine", "locate_glbl", "compile_sim_obj", "get_simkernel_so", "load_sim_obj",
             "reset_rtlsim", "close_rtlsim", "rtlsim_multi_io")

FRONT_STEPS = ["step_prepare_qonnx", "step_qonnx_to_finn", "step_tidy_up", "step_streamline", "step_move_past_fork",
               "step_streamline_joins", "step_resize_and_pool_to_hw", "step_convert_to_hw",
               "step_minimize_bit_width_initial", "step_create_dataflow_partition", "step_specialize_layers"]
JOIN_ROUNDS = 6  # step_streamline_joins: at most this many rounds (each ends with FINN's Streamline)
MOVABLE_PAST_FORK = ("Mul", "Add", "Transpose", "Reshape", "Flatten")
# Nodes that may stay outside the FINN partition at the graph's ends (the host does them); anything else left
# unmapped (a float Conv/MatMul/Gemm, a LayerNorm, a Gather...) means FINN did not take the model.
ALLOWED_UNMAPPED = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast",
                    "Mul", "Add", "Sub", "Div")
PER_FPS_STEPS = ["step_target_fps_parallelization", "step_apply_folding_config", "step_minimize_bit_width",
                 "step_generate_estimate_reports"]


class StepFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step, self.reason = step, reason


def _xsi_unavailable(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("RTL simulation is not available in edgemtl's estimate-only FINN worker")


def _boot_finn(work_dir: Path) -> None:
    os.environ.setdefault("XILINX_VIVADO", DUMMY_VIVADO)
    os.environ["FINN_BUILD_DIR"] = str((work_dir / "finn_build").resolve())
    os.environ["FINN_SETTINGS"] = str((work_dir / "finn_settings_unused.yaml").resolve())
    os.environ.setdefault("NUM_DEFAULT_WORKERS", "1")
    Path(os.environ["FINN_BUILD_DIR"]).mkdir(parents=True, exist_ok=True)
    from finn.util.settings import initialize_dummy_settings

    initialize_dummy_settings()
    import finn.xsi

    for name in XSI_NAMES:
        setattr(finn.xsi, name, _xsi_unavailable)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:400] if text else type(exc).__name__


def step_move_past_fork(model: Any, cfg: Any) -> Any:
    """Multi-head graphs: after streamlining, scale (Mul/Add) and layout (Transpose, Reshape/Flatten) nodes
    on the shared trunk's output stop at the branch point: FINN's reorder passes only move a node with a
    single consumer. Copy each of them into every branch (innermost first: the fork moves up one node per
    round), then streamline again so each head absorbs its own scales and flattening."""
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup
    from finn.transformation.streamline.reorder import MoveOpPastFork

    moved = False
    for _ in range(16):
        forks = [n for n in model.graph.node if n.op_type in MOVABLE_PAST_FORK and model.is_fork_node(n)
                 and not model.is_join_node(n)]
        if not forks:
            break
        model = model.transform(MoveOpPastFork(list(MOVABLE_PAST_FORK)))
        moved = True
    if moved:
        model = build_dataflow_step_lookup["step_streamline"](model, cfg)
    return model


BIAS_CONSUMERS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def step_prepare_qonnx(model: Any, cfg: Any) -> Any:
    """Before FINN's QONNX conversion: refuse resizes FINN has no layer for, fold bias quantizers (after qonnx's
    cleanup, which step_qonnx_to_finn runs first too: it turns Constant nodes into initializers)."""
    from qonnx.util.cleanup import cleanup_model

    _refuse_unsupported_resize(model)
    return _fold_bias_quant(cleanup_model(model))


def _refuse_unsupported_resize(model: Any) -> None:
    """FINN's only resampling layer is UpsampleNearestNeighbour (InferUpsample): a bilinear Resize (edgemtl's
    dense heads unless quantized with nearest_upsampling=True) would only fail after a minute of streamlining."""
    from qonnx.util.basic import get_by_name

    for node in model.graph.node:
        if node.op_type in ("Resize", "Upsample"):
            mode = get_by_name(node.attribute, "mode")
            mode = mode.s.decode() if mode is not None else "nearest"
            if mode != "nearest":
                raise StepFailed("step_prepare_qonnx",
                                 f"no FINN hardware layer for {node.op_type} mode {mode!r} (node {node.name}): FINN "
                                 "only has nearest-neighbour upsampling (quantize with nearest_upsampling=True)")


def _fold_bias_quant(model: Any) -> Any:
    """Fold the Quant nodes on conv / linear biases into float bias constants, before FINN's QONNX conversion.

    brevitas exports each bias as `Quant(bias, scale = input scale x weight scale, zero point, 32 bits)`, with
    the scalar constants (zero point, bit width) shared by every Quant node of the graph. qonnx's
    ExtractBiasFromConv (first thing ConvertQONNXtoFINN does) reshapes such a bias Quant's parameters in place
    to (1, C, 1, 1): a rank-0 zero point fails ("cannot reshape array of size 1 into shape (1,C,1,1)"), and a
    shared one would be reshaped under every other Quant node. FINN keeps no bias datatype anyway: streamlining
    turns the bias into a float Add that it absorbs into the next MultiThreshold's thresholds. So compute each
    bias Quant once (qonnx's own `int_quant`: integers times the power-of-two scale) and give the conv / Gemm
    that float32 bias, which FINN then handles as it does an unquantized one."""
    import numpy as np
    from qonnx.custom_op.general.quant import quant as int_quant
    from qonnx.util.basic import get_by_name

    folded = 0
    for node in list(model.graph.node):
        if node.op_type != "Quant":
            continue
        params = [model.get_initializer(i) for i in node.input]
        consumers = model.find_consumers(node.output[0])
        if any(p is None for p in params) or not consumers or node.output[0] in [o.name for o in model.graph.output]:
            continue
        if not all(c.op_type in BIAS_CONSUMERS and list(c.input).index(node.output[0]) == BIAS_CONSUMERS[c.op_type]
                   and list(c.input).count(node.output[0]) == 1 for c in consumers):
            continue

        def attr(name: str, default: Any) -> Any:
            found = get_by_name(node.attribute, name)
            return default if found is None else (found.s.decode() if found.type == found.STRING else found.i)

        value, scale, zero_point, bit_width = params
        bias = int_quant(value, scale, zero_point, bit_width, signed=bool(attr("signed", 1)),
                         narrow=bool(attr("narrow", 0)), rounding_mode=attr("rounding_mode", "ROUND"))
        name = model.make_new_valueinfo_name()
        model.set_initializer(name, np.asarray(bias, dtype=np.float32).reshape(value.shape))
        for consumer in consumers:
            consumer.input[BIAS_CONSUMERS[consumer.op_type]] = name
        model.graph.node.remove(node)
        folded += 1
    if folded:
        from qonnx.transformation.general import RemoveUnusedTensors

        model = model.transform(RemoveUnusedTensors())
    print(f"folded {folded} bias Quant node(s) into float biases")
    return model


def _resize_sizes_to_scales(model: Any) -> None:
    """Resize(x, roi, "", sizes) -> Resize(x, roi, scales): FINN's Resize transformations read the scales input
    (AbsorbTransposeIntoResize would otherwise write NHWC scales into the empty input name). torch exports
    F.interpolate(size=...) with sizes, constant once step_tidy_up has folded the Shape/Slice/Concat before it."""
    import numpy as np

    for node in model.get_nodes_by_op_type("Resize"):
        if len(node.input) != 4 or (node.input[2] and model.get_initializer(node.input[2]) is not None):
            continue
        sizes, shape = model.get_initializer(node.input[3]), model.get_tensor_shape(node.input[0])
        if sizes is None or shape is None or len(sizes) != len(shape):
            continue
        name = model.make_new_valueinfo_name()
        model.set_initializer(name, (np.asarray(sizes, dtype=np.float64) / np.asarray(shape)).astype(np.float32))
        node.input[2] = name
        del node.input[3]


def step_streamline_joins(model: Any, cfg: Any) -> Any:
    """Streamline through joins and nearest resizes, which FINN's step_streamline leaves alone: residual
    Adds and skip Concats whose inputs carry the same scalar scale (brevitas aligns them) get it moved past
    the join and absorbed into the next thresholds, the NCHW<->NHWC transposes around them and around each
    nearest Resize are moved / cancelled. Without it a residual Add stays a float ElementwiseAdd behind two
    ElementwiseMul layers with Shuffles (transposes) around it, and a skip Concat of float inputs and the
    conv after it (its Im2Col/MatMul) map to no hardware layer at all. Bounded rounds of FINN's own
    transformations (its exhaustive StreamlinePlus does not terminate on these graphs), each round ending
    with FINN's Streamline, until the graph's op counts stop changing."""
    from collections import Counter

    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.absorb import (AbsorbConsecutiveTransposes, AbsorbTransposeIntoMultiThreshold,
                                                       AbsorbTransposeIntoResize)
    from finn.transformation.streamline.reorder import (MoveMulPastJoinAdd, MoveMulPastJoinConcat,
                                                        MoveTransposePastJoinAdd, MoveTransposePastJoinConcat)
    from qonnx.transformation.infer_data_layouts import InferDataLayouts

    if not any(n.op_type in ("Add", "Concat", "Resize") for n in model.graph.node):
        return model
    _resize_sizes_to_scales(model)
    transformations = (AbsorbTransposeIntoResize, AbsorbTransposeIntoMultiThreshold, MoveMulPastJoinConcat,
                       MoveTransposePastJoinConcat, MoveMulPastJoinAdd, MoveTransposePastJoinAdd,
                       AbsorbConsecutiveTransposes, Streamline)
    for _ in range(JOIN_ROUNDS):
        before = Counter(n.op_type for n in model.graph.node)
        for transformation in transformations:
            model = model.transform(transformation()).transform(InferDataLayouts())
        if Counter(n.op_type for n in model.graph.node) == before:
            break
    return model


def step_resize_and_pool_to_hw(model: Any, cfg: Any) -> Any:
    """Two conversions FINN's step_convert_to_hw does not do (right) on these graphs, before it runs:

    - nearest Resize (integer, NHWC) -> UpsampleNearestNeighbour: FINN's InferUpsample takes Resize nodes,
      but step_convert_to_hw only calls it when the graph has an `Upsample` node (bilinear ones were refused
      in step_prepare_qonnx; InferUpsample itself refuses downsampling).
    - GlobalAveragePool (integer) -> FINN's GlobalAccPool and a scalar Mul by 1/(H*W), then streamline again
      so that Mul moves past the transpose / flatten after it into the next thresholds. step_convert_to_hw
      makes the same split, but after streamlining: the Mul then stays between hardware layers, unmapped
      (scene heads: GlobalAveragePool -> Flatten -> Quant -> Gemm)."""
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup
    from finn.transformation.fpgadataflow.convert_to_hw.global_acc_pool import InferGlobalAccPoolLayer
    from finn.transformation.fpgadataflow.convert_to_hw.upsample import InferUpsample
    from finn.transformation.streamline.absorb import AbsorbConsecutiveTransposes, AbsorbTransposeIntoFlatten
    from qonnx.transformation.infer_data_layouts import InferDataLayouts

    if model.get_nodes_by_op_type("Resize") or model.get_nodes_by_op_type("Upsample"):
        model = model.transform(InferDataLayouts()).transform(InferUpsample())
    if model.get_nodes_by_op_type("GlobalAveragePool"):
        model = model.transform(InferGlobalAccPoolLayer())
        model = build_dataflow_step_lookup["step_streamline"](model, cfg)
        model = model.transform(AbsorbConsecutiveTransposes())
        # the pooled (1, 1, 1, C) map's NHWC -> NCHW transpose before the head's Flatten moves nothing
        model = model.transform(InferDataLayouts()).transform(AbsorbTransposeIntoFlatten())
    return model


def dangling_inputs(model: Any) -> list[str]:
    """Node inputs that nothing produces: a graph a transformation broke (FINN does not check this)."""
    produced = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    produced |= {o for n in model.graph.node for o in n.output}
    return sorted({f"{n.name}:{i}" for n in model.graph.node for i in n.input if i and i not in produced})


def _keep_output(model: Any, task: str) -> Any:
    """A graph with several outputs, one of them named `task`: keep that output and what feeds it."""
    names = [o.name for o in model.graph.output]
    if len(names) < 2 or task not in names:
        return model
    for out in [o for o in model.graph.output if o.name != task]:
        model.graph.output.remove(out)
    needed = {task}
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output):
            needed.update(i for i in node.input if i)
        else:
            model.graph.node.remove(node)
    for init in [i for i in model.graph.initializer if i.name not in needed]:
        model.graph.initializer.remove(init)
    return model


def _run_step(name: str, model: Any, cfg: Any, seconds: dict[str, float], label: str = "") -> Any:
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup

    step = CUSTOM_STEPS[name] if name in CUSTOM_STEPS else build_dataflow_step_lookup[name]
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            model = step(model, cfg)
    except StepFailed:
        raise
    except Exception as exc:  # a step that rejects the model is the answer, not a crash
        raise StepFailed(name, _one_line(exc)) from exc
    finally:
        with open(Path(cfg.output_dir).parent / "finn_steps.log", "a", encoding="utf-8") as f:
            f.write(f"== {name}{label}\n{log.getvalue()}")
    seconds[name + label] = round(time.perf_counter() - start, 3)
    return model


CUSTOM_STEPS = {"step_prepare_qonnx": step_prepare_qonnx, "step_move_past_fork": step_move_past_fork,
                "step_streamline_joins": step_streamline_joins, "step_resize_and_pool_to_hw": step_resize_and_pool_to_hw}


def _config(request: dict[str, Any], output_dir: Path, fps: float | None) -> Any:
    from finn.builder.build_dataflow_config import DataflowBuildConfig, DataflowOutputType

    return DataflowBuildConfig(
        output_dir=str(output_dir),
        synth_clk_period_ns=1000.0 / float(request["clock_mhz"]),
        fpga_part=request["part"],
        target_fps=None if fps is None else max(1, int(round(fps))),
        generate_outputs=[DataflowOutputType.ESTIMATE_REPORTS],
        save_intermediate_models=False,
        auto_fifo_depths=False,
        verify_steps=[],
    )


def _unmapped(model: Any) -> list[str]:
    return [f"{n.name} ({n.op_type})" for n in model.graph.node
            if not n.domain.startswith("finn.custom_op.fpgadataflow")]


def _read_reports(report_dir: Path, clock_mhz: float) -> dict[str, Any]:
    cycles = json.loads((report_dir / "estimate_layer_cycles.json").read_text())
    resources = json.loads((report_dir / "estimate_layer_resources.json").read_text())
    perf = json.loads((report_dir / "estimate_network_performance.json").read_text())
    folding_file = report_dir / "auto_folding_config.json"
    folding = json.loads(folding_file.read_text()) if folding_file.exists() else {}
    total = resources.pop("total", {})
    max_cycles = int(perf["max_cycles"])
    critical = int(perf["critical_path_cycles"])
    return {
        "lut": float(total.get("LUT", 0.0)),
        "bram18": float(total.get("BRAM_18K", 0.0)),
        "uram": float(total.get("URAM", 0.0)),
        "dsp": float(total.get("DSP", 0.0)),
        "cycles_per_layer": {k: int(v) for k, v in cycles.items()},
        # FINN's analytical model charges 0 LUT to some layers (RTL MVAUs on DSPs, several HLS layers): the
        # LUT total is a lower bound, and these are the layers it leaves out
        "layers_without_lut_estimate": sorted(k for k, v in resources.items() if not v.get("LUT")),
        "resources_per_layer": resources,
        "folding": {k: {a: v for a, v in attrs.items() if a in ("PE", "SIMD", "parallel_window")}
                    for k, attrs in folding.items() if isinstance(attrs, dict) and k != "Defaults"},
        "max_cycles": max_cycles,
        "bottleneck_layer": perf.get("max_cycles_node_name", ""),
        "critical_path_cycles": critical,
        "estimated_fps": clock_mhz * 1e6 / max_cycles if max_cycles else 0.0,
        "estimated_latency_ms": critical / (clock_mhz * 1e3),
    }


def estimate(request: dict[str, Any]) -> dict[str, Any]:
    work_dir = Path(request["work_dir"]).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    _boot_finn(work_dir)
    import copy

    import finn
    from qonnx.core.modelwrapper import ModelWrapper

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    version = getattr(finn, "__version__", "")
    if not version:
        from importlib.metadata import version as _v

        version = _v("finn-plus")
    try:
        model = _keep_output(ModelWrapper(str(request["qonnx_path"])), request["task"])
    except Exception as exc:
        return {"ok": False, "step": "load", "reason": f"cannot load {request['qonnx_path']}: {_one_line(exc)}"}
    front_cfg = _config(request, work_dir / "front", None)
    unmapped: list[str] = []
    by_fps: dict[str, Any] = {}
    try:
        for name in FRONT_STEPS:
            model = _run_step(name, model, front_cfg, seconds)
            if name == "step_convert_to_hw":
                unmapped = _unmapped(model)
                left = [n for n in model.graph.node if not n.domain.startswith("finn.custom_op.fpgadataflow")
                        and n.op_type not in ALLOWED_UNMAPPED]
                if left:
                    kinds = ", ".join(sorted({n.op_type for n in left}))
                    raise StepFailed(name, f"no FINN hardware layer for {kinds} (e.g. node {left[0].name}); FINN "
                                           "maps quantized (QONNX Quant) convs, matmuls, pools and activations")
            broken = dangling_inputs(model)
            if broken:
                raise StepFailed(name, f"left the graph broken (inputs nothing produces: {', '.join(broken[:3])})")
        if not model.graph.node:
            raise StepFailed("step_create_dataflow_partition", "no layer maps to FINN hardware")
        for fps in request["target_fps"]:
            key = str(int(fps)) if float(fps).is_integer() else str(float(fps))
            out = work_dir / f"fps_{key}"
            cfg = _config(request, out, fps)
            folded = copy.deepcopy(model)
            for name in PER_FPS_STEPS:
                folded = _run_step(name, folded, cfg, seconds, f"@{key}")
            by_fps[key] = {"target_fps": float(fps),
                           **_read_reports(cfg.get_report_directory(create=False), float(request["clock_mhz"]))}
    except StepFailed as failed:
        return {"ok": False, "step": failed.step, "reason": f"{failed.step}: {failed.reason}",
                "nodes_unmapped": unmapped}
    return {"ok": True, "finn_version": version, "nodes_unmapped": unmapped, "step_seconds": seconds,
            "seconds": round(time.perf_counter() - started, 3), "by_fps": by_fps}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: finn_worker.py REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[1]).read_text())
    if request.get("version") != PROTOCOL_VERSION:
        result: dict[str, Any] = {"ok": False, "step": "protocol",
                                  "reason": f"worker speaks version {PROTOCOL_VERSION}, got {request.get('version')}"}
    else:
        try:
            result = estimate(request)
        except Exception as exc:  # booting FINN itself failed: report it, the caller decides
            traceback.print_exc()
            result = {"ok": False, "step": "boot", "reason": _one_line(exc)}
    result["version"] = PROTOCOL_VERSION
    Path(argv[2]).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
