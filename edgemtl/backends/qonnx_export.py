"""Export a quantized task path (from `edgemtl.passes.quantize_brevitas`) to QONNX and to QCDQ ONNX.

- QONNX (`Quant` nodes carrying scale / zero point / bit width) is what FINN and hls4ml read and what
  qonnx's inference-cost analysis understands.
- QCDQ (standard `QuantizeLinear` / `Clip` / `DequantizeLinear`, opset 18) runs in ONNX Runtime.

Both use brevitas' TorchScript exporter (`dynamo=False`, as the repo's float exporter does); the path's
output is a plain tensor already. Graphs are exported at batch 1 (static shapes, what the FPGA flow wants).
`check_exports` runs both graphs on inputs on the input quantizer's grid and compares them with the
brevitas model in units of the output LSB.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgemtl.errors import EdgemtlError, VerificationError
from edgemtl.model.contract import example_input
from edgemtl.model.spec import ModelSpec
from edgemtl.passes.quantize_brevitas import grid_align, output_lsb

QCDQ_OPSET = 18
INPUT_NAME = "input"
MAX_LSB = 1.0  # exported graphs may differ from brevitas by at most one output LSB ...
QCDQ_MAX_SHARE = 0.01  # ... except float-simulated QCDQ on this share of the outputs (see check_exports)


def _task(qmodel: nn.Module) -> str:
    return str(getattr(qmodel, "task", "output"))


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        yield


def _export(kind: str, qmodel: nn.Module, spec: ModelSpec, path: Path, **kwargs: Any) -> Path:
    from brevitas.export import export_onnx_qcdq, export_qonnx

    exporter = export_qonnx if kind == "QONNX" else export_onnx_qcdq
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    task = _task(qmodel)
    was_training = qmodel.training
    qmodel.eval()
    try:
        with _quiet():
            exporter(qmodel, args=example_input(spec, batch=1), export_path=str(path), dynamo=False,
                     input_names=[INPUT_NAME], output_names=[task], **kwargs)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgemtlError(f"{kind} export of task {task!r} failed: {detail}") from None
    finally:
        qmodel.train(was_training)
    return path


def export_qonnx(qmodel: nn.Module, spec: ModelSpec, path: Path) -> Path:
    """The task path as QONNX (`Quant` nodes), batch 1."""
    return _export("QONNX", qmodel, spec, path)


def export_qcdq(qmodel: nn.Module, spec: ModelSpec, path: Path) -> Path:
    """The task path as standard QCDQ ONNX (opset 18), batch 1; ONNX Runtime runs it."""
    path = _export("QCDQ", qmodel, spec, path, opset_version=QCDQ_OPSET)
    onnx.checker.check_model(str(path))
    return path


def _qonnx_model(path: Path):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(ModelWrapper(str(path)))
    return model.transform(InferShapes())


@contextlib.contextmanager
def _single_node_ir_version(path: Path):
    """qonnx runs each standard node in ONNX Runtime as a one-node model made with `onnx.helper.make_model`,
    which stamps onnx's newest IR version (14 with onnx 1.23): ONNX Runtime 1.31 refuses anything above 13,
    so cleanup (constant folding), execution and the cost analysis all fail. Stamp those one-node models
    with the IR version of the exported graph (torch's exporter wrote it; ONNX Runtime loads it)."""
    import qonnx.core.onnx_exec as onnx_exec

    ir_version = int(onnx.load(str(path), load_external_data=False).ir_version)
    original = onnx_exec.qonnx_make_model

    def make_model(graph, **kwargs):
        model = original(graph, **kwargs)
        model.ir_version = min(model.ir_version, ir_version)
        return model

    onnx_exec.qonnx_make_model = make_model
    try:
        yield
    finally:
        onnx_exec.qonnx_make_model = original


def run_qonnx(path: Path, images: np.ndarray) -> np.ndarray:
    """qonnx's reference executor, one sample at a time (the graph is exported at batch 1)."""
    from qonnx.core.onnx_exec import execute_onnx

    with _single_node_ir_version(path):
        model = _qonnx_model(path)
        input_name = model.graph.input[0].name
        output_name = model.graph.output[0].name
        outputs = [execute_onnx(model, {input_name: sample[None].astype(np.float32)})[output_name]
                   for sample in images]
    return np.concatenate(outputs)


def run_qcdq(path: Path, images: np.ndarray) -> np.ndarray:
    """ONNX Runtime (CPU, one thread), one sample at a time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the legacy exporter lists PReLU slopes as inputs: a note per slope, not an error
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {input_name: sample[None].astype(np.float32)})[0] for sample in images])


def check_exports(qmodel: nn.Module, qonnx_path: Path, qcdq_path: Path, images: torch.Tensor) -> dict[str, Any]:
    """Both exported graphs against the brevitas model on grid-aligned real samples (normalised images).

    Returns the max abs difference of each runtime in output LSBs and the share of outputs beyond 1 LSB.
    QONNX (what hls4ml and FINN read) must stay within 1 LSB everywhere. QCDQ in ONNX Runtime simulates
    the quantizers in float with its own accumulation order, so an accumulator that lands on a rounding
    boundary can flip one LSB and carry into later layers: it may exceed 1 LSB on at most
    `QCDQ_MAX_SHARE` of the outputs."""
    task = _task(qmodel)
    aligned = grid_align(qmodel, images)
    qmodel.eval()
    with torch.no_grad():
        reference = qmodel(aligned).numpy()
    lsb = output_lsb(qmodel)
    array = aligned.numpy()
    result: dict[str, Any] = {"task": task, "samples": int(len(array)), "output_lsb": lsb}
    for runtime, run, path in (("qonnx", run_qonnx, qonnx_path), ("onnxruntime", run_qcdq, qcdq_path)):
        try:
            got = run(Path(path), array)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgemtlError(f"task {task!r}: the exported graph fails in {runtime}: {detail}") from None
        if got.shape != reference.shape:
            raise EdgemtlError(f"task {task!r}: {runtime} gives shape {list(got.shape)}, brevitas {list(reference.shape)}")
        error_lsb = np.abs(got.astype(np.float64) - reference) / lsb
        diff_lsb, share = float(np.max(error_lsb)), float(np.mean(~(error_lsb <= MAX_LSB)))  # NaN counts as beyond
        result[f"{runtime}_max_diff_lsb"], result[f"{runtime}_share_beyond_1_lsb"] = diff_lsb, share
        allowed = 0.0 if runtime == "qonnx" else QCDQ_MAX_SHARE
        if not share <= allowed:
            raise VerificationError(f"task {task!r}: {runtime} differs from the brevitas model by up to {diff_lsb:.2f} output LSBs "
                               f"on {share:.1%} of the outputs (allowed beyond 1 LSB: {allowed:.0%})")
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return int(value) if value.is_integer() and math.isfinite(value) else value
    return value


def inference_cost(qonnx_path: Path) -> dict[str, Any]:
    """qonnx's inference-cost analysis of a QONNX graph (original layout, not channels-last).

    Keys as qonnx names them: `op_mac_<in dtype>_<weight dtype>` (MACs per pair of bit widths),
    `mem_w_<dtype>` (weight elements per bit width), `mem_o_<dtype>`, `total_macs`, `total_bops`,
    `total_mem_w_bits`, ...; plus `unsupported` when some op has no cost model."""
    from qonnx.util.inference_cost import inference_cost as qonnx_inference_cost

    with _quiet(), _single_node_ir_version(Path(qonnx_path)):
        costs = qonnx_inference_cost(str(qonnx_path), preprocess=True, discount_sparsity=False)
    return _jsonable(costs["total_cost"])
