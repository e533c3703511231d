"""Which ONNX ops hls4ml 1.3.0 maps, and the one-line refusal (op, node, task, why, what to use instead) for the rest:
before QAT on the float graph (`float_graph_refusal`), before converting the cleaned graph (`_precheck_ops`) and from
whatever hls4ml raised while converting (`_unmappable`)."""

from __future__ import annotations

import contextlib
import io
import re
import traceback
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgemtl.backends import hls4ml_ext
from edgemtl.backends.hls4ml_graph import _attr, _failing_onnx_node, _one_line
from edgemtl.errors import EdgemtlError


def _import_hls4ml(task: str) -> Any:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            import hls4ml  # noqa: PLC0415
    except ImportError as exc:
        raise EdgemtlError(f"task {task!r}: the zcu104 flow needs hls4ml ({exc}); install hls4ml==1.3.0") from None
    return hls4ml


_SKIPPED = {"Dropout", "Identity"}  # hls4ml's parser drops these
_HINTS = {
    "Resize": "hls4ml implements only nearest-neighbour Resize with constant scales (no bilinear kernel): "
              "use nearest upsampling by an integer factor",
    "ReduceMean": "use AdaptiveAvgPool2d(1) (GlobalAveragePool) for a spatial mean",
    "MaxPool": "a 2-D window with padding smaller than the window",
    "AveragePool": "a window of 2x2, 4x4 ... at its own stride, a strided conv, or GlobalAveragePool",
    "Softmax": "end the task path with the softmax (the flow then applies it on the ARM cores), or compile for gap9",
    "Gemm": "qonnx GemmToMatMul should have lowered it",
    "Concat": "hls4ml concatenates at most two tensors of rank <= 3 per node",
    "Add": "hls4ml adds two tensors of the same shape per node",
}


def _supported_ops() -> set[str]:
    from hls4ml.converters.onnx_to_hls import get_supported_onnx_layers  # noqa: PLC0415

    return (set(get_supported_onnx_layers()) - {hls4ml_ext.TABLE_OP}) | _SKIPPED  # ONNX's ops, not edgemtl's own


# Ops of a task's float graph that the preparation turns into ops hls4ml has, or into edgemtl's layers (hls4ml_ext).
_REWRITTEN = {"Gemm", "ReduceMean", *hls4ml_ext.TABLE_OPS}


# What the operator table says of ops hls4ml has a handler for but cannot take in every form (_known_failure).
HANDLER_LIMITS = {"PRelu": "yes, slopes on a 2^-8 grid (edgemtl's parser fix; its handler drops them)",
                  "MaxPool": "yes; overlapping, padded or ceil_mode windows by edgemtl's kernel (hls4ml_ext)",
                  "AveragePool": "yes, windows that tile the input with a power-of-two size (edgemtl's qonnx op)",
                  "Resize": "yes, nearest by integer factors",
                  "Softmax": "only ending a task path: applied on the ARM cores (hls4ml's is table-based, not bit-accurate)",
                  **dict.fromkeys(hls4ml_ext.TABLE_OPS, "yes, an exact table over the input codes (edgemtl's, between "
                                                        "two quantizers)")}


def _known_failure(node: onnx.NodeProto) -> str | None:
    """Why hls4ml 1.3.0 cannot take a node whose op it has a handler for (each found by running it)."""
    if node.op_type == "MaxPool":
        return hls4ml_ext.window_pool_refusal(node)
    if node.op_type == "AveragePool":
        return hls4ml_ext.average_pool_refusal(node)
    if node.op_type in hls4ml_ext.TABLE_OPS:  # still there: not between two quantizers edgemtl can tabulate
        return (f"hls4ml's {node.op_type} samples a table on its own grid (1-2 LSB off the quantized model, measured); "
                f"edgemtl makes it exact only between two power-of-two quantizers of <= {hls4ml_ext.MAX_TABLE_BITS} bits")
    if node.op_type == "Softmax":
        return ("hls4ml's Softmax uses exp / inverse tables and is not bit-accurate to the quantized model "
                "(measured 23 LSB off at 8 bits)")
    return None


def float_graph_refusal(float_graph: onnx.ModelProto, task: str) -> EdgemtlError | None:
    """The error naming the first op of a task's float graph (BatchNorm folded, shapes folded) that hls4ml has no
    handler or no working kernel for, or None: checked before QAT, which takes minutes, so such a graph fails in
    seconds. A Softmax that ends the path is not refused: the FPGA flow leaves it to the host."""
    hls4ml = _import_hls4ml(task)
    supported = _supported_ops() | _REWRITTEN
    outputs = {o.name for o in float_graph.graph.output}
    for node in float_graph.graph.node:
        if (node.op_type == "Softmax" and node.output[0] in outputs) or node.op_type in hls4ml_ext.TABLE_OPS:
            continue  # the host applies it / the QAT graph puts it between quantizers: a table
        reason = "no ONNX handler for this op type" if node.op_type not in supported else _known_failure(node)
        if reason is not None:
            return _refuse(task, hls4ml.__version__, node, reason)
    return None


def _refuse(task: str, version: str, node: onnx.NodeProto, reason: str) -> EdgemtlError:
    hint = _HINTS.get(node.op_type)
    tail = f"; {hint}" if hint else ""
    return EdgemtlError(f"task {task!r}: hls4ml {version} cannot map ONNX op {node.op_type!r} "
                        f"(node {node.name or node.output[0]}): {_one_line(reason)}{tail}")


def _precheck_ops(model: onnx.ModelProto, task: str, version: str) -> None:
    """Refuse, before converting, the ops hls4ml 1.3.0 has no handler or kernel for."""
    supported = _supported_ops() | {hls4ml_ext.TABLE_OP}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        reason = "no ONNX handler for this op type" if node.op_type not in supported else _known_failure(node)
        if reason is not None:
            raise _refuse(task, version, node, reason)
        if node.op_type == "Resize":
            mode = _attr(node, "mode", "nearest")
            if mode != "nearest":
                raise _refuse(task, version, node, f"Resize mode {mode!r} is not implemented")
            if len(node.input) != 3 or node.input[2] not in inits:
                raise _refuse(task, version, node, "its scales are not a constant input (sizes or computed)")
            scales = inits[node.input[2]].ravel()
            if scales.size != 4 or np.any(scales < 1) or np.any(scales != np.round(scales)) or scales[0] != 1:
                raise _refuse(task, version, node, f"scales {scales.tolist()} are not integer upsampling factors")
        if node.op_type in {"Concat", "Add", "Sub", "Mul", "Sum", "Max", "Min"} and len(node.input) > 2:
            raise _refuse(task, version, node, f"{len(node.input)} inputs (hls4ml merges two)")


def _failing_layer(exc: BaseException) -> Any:
    """The innermost hls4ml Layer a traceback was handling (as `node`, `self` or `layer`)."""
    from hls4ml.model.layers import Layer  # noqa: PLC0415

    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for key in ("node", "layer", "self"):
            value = frame.f_locals.get(key)
            if isinstance(value, Layer):
                found = value
                break
    return found


def _node_for_layer(model: onnx.ModelProto, layer: Any) -> onnx.NodeProto | None:
    by_name = {n.name: n for n in model.graph.node}
    name = str(getattr(layer, "name", ""))
    if name in by_name:
        return by_name[name]
    for node_name, node in by_name.items():  # hls4ml prefixes / suffixes names (Conv2D_Conv_0, Quant_3_act)
        if node_name and re.search(rf"(^|_){re.escape(node_name)}($|_)", name):
            return node
    return None


def _unmappable(exc: BaseException, model: onnx.ModelProto, task: str, version: str) -> EdgemtlError:
    reason = _one_line(str(exc) or type(exc).__name__)
    reason = re.sub(r"^ERROR:\s*", "", reason)
    match = re.search(r"Unsupported operation type: (\w+)", reason)
    if match:
        node = next((n for n in model.graph.node if n.op_type == match.group(1)), None)
        if node is not None:
            return _refuse(task, version, node, "no ONNX handler for this op type")
    node = _failing_onnx_node(exc)
    if node is None:
        layer = _failing_layer(exc)
        if layer is not None:
            node = _node_for_layer(model, layer)
            if node is None:
                return EdgemtlError(f"task {task!r}: hls4ml {version} cannot map layer {layer.name!r} "
                                    f"({getattr(layer, 'class_name', type(layer).__name__)}): "
                                    f"{type(exc).__name__}: {reason}")
    if node is not None:
        return _refuse(task, version, node, f"{type(exc).__name__}: {reason}")
    return EdgemtlError(f"task {task!r}: hls4ml {version} could not convert the graph: {type(exc).__name__}: {reason}")

