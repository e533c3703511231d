"""hls4ml backend: one task's QONNX graph -> an hls4ml Vitis `io_stream` project, checked by C simulation.

`build_hls_project` cleans the QONNX graph the way hls4ml's QONNX frontend documents (qonnx `cleanup_model`,
`ConvertToChannelsLastAndClean`, `GemmToMatMul`, `cleanup_model` again), converts it with the Vitis backend
and `io_stream`, writes the project and compiles its bit-accurate C++ emulation (g++, ~12 s).

Precision scheme. Every type hls4ml can derive is left `auto`: hls4ml turns each power-of-two `Quant` node
into the result type of the layer before it (`ufixed<8,1,RND_CONV,SAT>` for an unsigned 8-bit quantizer of
scale 2^-7, `RND_CONV` = brevitas' round-half-even, `SAT`/`SAT_SYM` = its clamp) and folds the weight
quantizers into the weight types; its `infer_precision_types` pass then sizes each conv / dense / add /
concat accumulator exactly (input bits + weight bits + log2(fan-in) and the fractional bits of both), so no
accumulator can overflow or round. What is left over - float biases, pooling results, the model-wide
fallback - gets `precision` (default `fixed<32,16>`, hls4ml's own `fixed<16,6>` overflows and truncates).
The graph input gets the input quantizer's own type, so the float -> fixed conversion in the C++ wrapper
rounds exactly as the quantizer does (a wide input type would first truncate and then round again).
Only power-of-two scales and quantized biases are exact in hls4ml: a float-scale quantizer (e.g.
`Int8ActPerTensorFloat`) can leave an output off by a constant factor, and a float bias is rounded to
`precision` (16 fractional bits), which flips an output near a rounding tie by 1 LSB. edgemtl's quantizer
makes neither (fixed-point quantizers, `Int32Bias`), so `csim_check` demands equality: 0 LSB on every value
of every sample (measured on the tiny mtl-cnn, 32 real samples per task path: 0 LSB on all five paths at
w4a4 and on scene, depth, segmentation at w8a8); a mismatch fails naming the likely cause.

Layout: the HLS top function takes the input channels-last (NHWC, a pixel stream) and gives 4-D outputs
channels-last too (the trailing Transposes back to NCHW are dropped: in io_stream each would buffer a whole
frame); `csim_check` and `build_testbench` transpose to and from the NCHW layout of the quantized model.

What hls4ml 1.3.0 needs beyond the documented cleaning (each checked by C simulation against brevitas):
Resize with constant `sizes` -> `scales`; `ReduceMean` over H, W -> GlobalAveragePool; Resize and global
pools moved onto the channels-last tensor (qonnx leaves them between Transposes) and their H / W / C read
from NHWC while hls4ml parses (it swaps a Resize's H and W, and reads a global pool's dims as NCHW); a
one-element Resize roi and value_info for every initializer (its parser looks both up); fresh initializer
names before each qonnx cleanup (its renaming can collide); IR 10 for the single-node models qonnx runs in
ONNX Runtime (onnx 1.23 stamps IR 14, ONNX Runtime 1.31 reads up to 13); a per-tensor Quant after a flatten /
permute moved before them (hls4ml's stream `linear` assumes equal beats in and out). PReLU and windowed max pools
go through edgemtl's hls4ml extension (hls4ml_ext). Refused, in one line naming the op and the task: ops without
an hls4ml ONNX handler (e.g. Abs) and any non-nearest Resize - hls4ml has no bilinear kernel, so mtl-cnn's dense
heads (bilinear upsampling) do not map.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgemtl.backends import hls4ml_ext
from edgemtl.errors import EdgemtlError, VerificationError

DEFAULT_PRECISION = "fixed<32,16>"
BACKEND = "Vitis"
IO_TYPE = "io_stream"
PROJECT_NAME = "myproject"
# The RESULTS_LOG stream of hls4ml's testbench, whose default 6 significant digits would round the outputs.
_TB_LOG_STREAM = "std::ofstream fout(RESULTS_LOG);"
# A constant-factor error: the least-squares scale hls ~ s * reference is off 1 by more than this ...
CONSTANT_FACTOR_TOLERANCE = 1e-2
# ... fits the HLS output to within this relative residual (quantization noise aside) ...
CONSTANT_FACTOR_FIT = 0.1
# ... and explains the error: |hls - s ref| is at most this fraction of |hls - ref| (an offset is not a factor).
CONSTANT_FACTOR_EXPLAINS = 0.3
_TO_NCHW = [0, 3, 1, 2]
_PRECISION = re.compile(r"^(ap_)?u?(fixed<\d+,-?\d+(,\w+){0,3}>|int<\d+>)$")
_CHANNELS_LAST_DOMAIN = "qonnx.custom_op.channels_last"


@dataclass
class HlsProject:
    """A written and compiled hls4ml project for one task path."""

    task: str
    hls_model: Any  # hls4ml.model.ModelGraph, compiled (predict() works)
    out_dir: Path
    precision_table: dict[str, dict[str, str]]  # layer -> {type name: precision}, as hls4ml emitted them
    seconds: float  # clean + convert + write + compile
    part: str
    clock_period_ns: float
    hls4ml_version: str
    clean_onnx: Path  # the cleaned channels-last QONNX graph hls4ml converted
    input_shape: tuple[int, ...]  # one sample, the quantized model's layout (NCHW)
    input_channels_last: bool  # the HLS top function takes NHWC
    outputs: list[str]  # the QONNX graph's output names, in the HLS top function's order
    output_shapes: dict[str, tuple[int, ...]]  # one sample, the quantized model's layout
    output_channels_last: dict[str, bool]  # the HLS output is NHWC
    non_power_of_two_quants: list[str] = field(default_factory=list)  # "node (scale s)" of float-scale Quants
    float_biases: list[str] = field(default_factory=list)  # Conv / Gemm nodes with an unquantized, nonzero bias
    default_precision: str = DEFAULT_PRECISION  # what the float biases and other left-over types got
    log: str = ""  # hls4ml's console output
    last_csim: dict[str, Any] | None = None  # inputs / HLS outputs of the last csim_check, for the testbench

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "out_dir": str(self.out_dir), "part": self.part,
                "clock_period_ns": self.clock_period_ns, "backend": BACKEND, "io_type": IO_TYPE,
                "hls4ml": self.hls4ml_version, "seconds": round(self.seconds, 2), "outputs": list(self.outputs),
                "precision": self.precision_table, "non_power_of_two_quants": list(self.non_power_of_two_quants)}


# ---------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------


def _import_hls4ml(task: str) -> Any:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            import hls4ml  # noqa: PLC0415
    except ImportError as exc:
        raise EdgemtlError(f"task {task!r}: the zcu104 flow needs hls4ml ({exc}); install hls4ml==1.3.0") from None
    return hls4ml


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def build_hls_project(qonnx_path: Path, out_dir: Path, task: str, part: str, clock_period_ns: float,
                      precision: str | None = None) -> HlsProject:
    """Clean, configure, convert (Vitis, io_stream), write and compile one task's QONNX graph.

    An op hls4ml 1.3.0 cannot map is one EdgemtlError line naming the op type, the node and the task.
    """
    hls4ml = _import_hls4ml(task)
    hls4ml_ext.register(BACKEND)
    start = time.perf_counter()
    qonnx_path, out_dir = Path(qonnx_path), Path(out_dir).resolve()
    if not qonnx_path.is_file():
        raise EdgemtlError(f"task {task!r}: QONNX graph {qonnx_path} does not exist")
    default_precision = (precision or DEFAULT_PRECISION).replace(" ", "")
    if not _PRECISION.match(default_precision):
        raise EdgemtlError(f"task {task!r}: precision {precision!r} is not an hls4ml fixed-point type; "
                           "write e.g. fixed<32,16> (total bits, integer bits)")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()

    original = onnx.load(str(qonnx_path))
    model, input_channels_last, output_channels_last = _clean(original, task, log)
    table_types = hls4ml_ext.elementwise_tables(model, _quant_grid, _quant_type)
    clean_path = out_dir / f"{qonnx_path.stem}_hls4ml_clean.onnx"
    onnx.save(model.model, str(clean_path))
    _precheck_ops(model.model, task, hls4ml.__version__)
    clean_outputs = [o.name for o in model.graph.output]
    original_outputs = [o.name for o in original.graph.output]
    rename = dict(zip(clean_outputs, original_outputs))

    try:
        with _quiet(log), _parser_fixes():
            config = hls4ml.utils.config_from_onnx_model(model.model, granularity="name", backend=BACKEND,
                                                         default_precision=default_precision)
            _set_input_precision(config, model)
            for name, types in hls4ml_ext.exact_precisions(model, _quant_type, table_types).items():
                config.setdefault("LayerName", {}).setdefault(name, {}).setdefault("Precision", {}).update(types)
            hls_model = hls4ml.converters.convert_from_onnx_model(
                model.model, output_dir=str(out_dir), project_name=PROJECT_NAME, backend=BACKEND,
                io_type=IO_TYPE, part=part, clock_period=clock_period_ns, hls_config=config)
    except EdgemtlError:
        raise
    except Exception as exc:  # hls4ml raises bare Exceptions / RuntimeErrors / KeyErrors
        raise _unmappable(exc, model.model, task, hls4ml.__version__) from None

    try:
        with _quiet(log):
            hls_model.compile()  # writes the project, then builds the C++ emulation library
    except Exception as exc:
        detail = _one_line(exc)
        raise EdgemtlError(f"task {task!r}: compiling the hls4ml C simulation in {out_dir} failed: {detail}; "
                           f"see {out_dir}/build_lib.sh and its g++ output") from None

    # hls4ml orders its outputs as their producer nodes appear in the graph (not as graph.output does)
    produced = [node.output[0] for node in model.graph.node if node.output and node.output[0] in rename]
    hls_outputs = [rename[name] for name in produced]
    sizes = [int(np.prod(v.shape)) for v in hls_model.get_output_variables()]
    orig_shapes = _output_shapes(original)
    if len(hls_outputs) != len(sizes) or any(int(np.prod(orig_shapes[n])) != s for n, s in zip(hls_outputs, sizes)):
        raise EdgemtlError(f"task {task!r}: cannot match hls4ml's outputs {hls_model.outputs} (sizes {sizes}) "
                           f"to the graph outputs {original_outputs}")
    input_shape = tuple(_shape(_graph_inputs(original)[0])[1:])
    seconds = time.perf_counter() - start
    return HlsProject(
        task=task, hls_model=hls_model, out_dir=out_dir, precision_table=precision_table(hls_model), seconds=seconds,
        part=part, clock_period_ns=float(clock_period_ns), hls4ml_version=hls4ml.__version__,
        clean_onnx=clean_path, input_shape=input_shape, input_channels_last=input_channels_last,
        outputs=hls_outputs, output_shapes={name: orig_shapes[name] for name in hls_outputs},
        output_channels_last={rename.get(k, k): v for k, v in output_channels_last.items()},
        non_power_of_two_quants=_non_power_of_two_quants(model.model), float_biases=_float_biases(original),
        default_precision=default_precision, log=log.getvalue())


@contextlib.contextmanager
def _quiet(log: io.StringIO):
    """hls4ml prints its progress: keep it in the project log, off the console."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore")
        yield


def _shape(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _output_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {o.name: tuple(_shape(o)[1:]) for o in model.graph.output}


def _clean(original: onnx.ModelProto, task: str, log: io.StringIO):
    """hls4ml's documented QONNX preparation, then NHWC outputs; returns (ModelWrapper, in NHWC, out NHWC)."""
    from qonnx.core.modelwrapper import ModelWrapper  # noqa: PLC0415
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean  # noqa: PLC0415
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul  # noqa: PLC0415
    from qonnx.util.cleanup import cleanup_model  # noqa: PLC0415

    inputs = _graph_inputs(original)
    if len(inputs) != 1:
        raise EdgemtlError(f"task {task!r}: the hls4ml flow takes a graph with one input, "
                           f"got {len(inputs)} ({', '.join(i.name for i in inputs)})")
    try:
        with _quiet(log), _onnx_ir_for_onnxruntime():
            model = cleanup_model(_unique_initializer_names(ModelWrapper(_copy(original))), override_inpsize=1)
            _quant_before_data_moves(model)
            model = ModelWrapper(_reduce_mean_to_pool(_sizes_to_scales(model.model)))
            model = cleanup_model(_unique_initializer_names(model))
            model = model.transform(ConvertToChannelsLastAndClean(make_input_channels_last=True))
            # qonnx leaves Resize, GlobalAveragePool, PRelu and HardSwish channels-first between Transposes
            if _resize_channels_last(model) | _global_pool_channels_last(model) | hls4ml_ext.elementwise_channels_last(model):
                model = cleanup_model(_unique_initializer_names(model))
                model = model.transform(ConvertToChannelsLastAndClean(make_input_channels_last=True))
            model = model.transform(GemmToMatMul())
            model = cleanup_model(_unique_initializer_names(model))
            _drop_noop_transposes(model)
            _drop_output_reshapes(model)
            model, outputs_nhwc = _drop_output_transposes(model)
            model = cleanup_model(_unique_initializer_names(model))
            _resize_roi_for_hls4ml(model)
            _initializer_value_infos(model)
    except EdgemtlError:
        raise
    except Exception as exc:
        node = _failing_onnx_node(exc)
        where = f" at ONNX op {node.op_type!r} (node {node.name or '?'})" if node is not None else ""
        raise EdgemtlError(f"task {task!r}: qonnx could not prepare the graph for hls4ml{where}: "
                           f"{_one_line(exc)}") from None
    in_nhwc = len(_shape(model.graph.input[0])) == 4 and len(_shape(inputs[0])) == 4
    return model, in_nhwc, outputs_nhwc


def _quant_before_data_moves(model) -> None:
    """Reshape / Flatten / Transpose -> per-tensor Quant becomes Quant -> the same moves (they commute). hls4ml
    streams a Quant as an elementwise `linear` that assumes its input and output beats hold as many values; after
    a flatten they do not (a pixel in, the whole vector out), so it read one beat of many and the C simulation
    went wrong (MTCNN: PReLU -> permute -> flatten -> quantized dense input)."""
    for quant in list(model.graph.node):
        params = _quant_params(model, quant) if quant.op_type == "Quant" else None
        if params is None or any(np.size(p) != 1 for p in params):
            continue
        moves, producer = [], model.find_producer(quant.input[0])
        while (producer is not None and producer.op_type in ("Reshape", "Flatten", "Transpose")
               and len(model.find_consumers(producer.output[0])) == 1):
            moves.append(producer)
            producer = model.find_producer(producer.input[0])
        if not moves:
            continue
        first, last = moves[-1], moves[0]  # in data order
        quantized = f"{quant.output[0]}_before_moves"
        quant.input[0], last.output[0], quant.output[0], first.input[0] = first.input[0], quant.output[0], quantized, quantized
        model.graph.node.remove(quant)
        model.graph.node.insert(list(model.graph.node).index(first), quant)


def _unique_initializer_names(model):
    """Give initializers fresh names before a qonnx cleanup. Its GiveReadableTensorNames renames only tensors
    with value_info, so after a reordering (channels-last moves the input Quant behind the weight Quants)
    a new `Quant_0_param0` can collide with an initializer that still has that name."""
    for k, init in enumerate(list(model.graph.initializer)):
        model.rename_tensor(init.name, f"edgemtl_init_{k}")
    return model


def _resize_roi_for_hls4ml(model) -> None:
    """Resize's `roi` (ignored unless coordinate_transformation_mode is tf_crop_and_resize) as a one-element
    constant: hls4ml looks up the shape of every input (an omitted one, '', has none) and tests the roi's truth
    value (an error for an empty or a multi-element array)."""
    for k, node in enumerate(model.graph.node):
        if (node.op_type != "Resize" or len(node.input) < 3
                or _attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"):
            continue
        roi = model.get_initializer(node.input[1]) if node.input[1] else None
        if node.input[1] and (roi is None or roi.size == 1):
            continue
        name = f"{node.name or k}_roi"
        model.set_initializer(name, np.zeros(1, dtype=np.float32))
        old, node.input[1] = node.input[1], name
        if old and not model.find_consumers(old):
            model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == old))


def _initializer_value_infos(model) -> None:
    """hls4ml's parser looks up every node input's shape in value_info, initializers included."""
    known = {v.name for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    for init in model.graph.initializer:
        if init.name not in known:
            model.graph.value_info.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


@contextlib.contextmanager
def _onnx_ir_for_onnxruntime(ir_version: int = 10):
    """qonnx folds constants by running single nodes in ONNX Runtime, in models `onnx.helper.make_model`
    stamps with onnx's newest IR version (14 in onnx 1.23) which ONNX Runtime 1.31 refuses (max 13); stamp
    IR 10 (opsets <= 21) while qonnx runs."""
    saved = onnx.IR_VERSION
    onnx.IR_VERSION = min(saved, ir_version)
    try:
        yield
    finally:
        onnx.IR_VERSION = saved


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (some exporters list both)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _sizes_to_scales(model: onnx.ModelProto) -> onnx.ModelProto:
    """Resize with a constant `sizes` input (what `F.interpolate(size=...)` exports) -> constant `scales`
    (hls4ml reads only scales). Needs the input's static shape; anything else is left for hls4ml to judge."""
    inits = {t.name: t for t in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        return model
    shapes = {v.name: _shape(v) for v in [*inferred.graph.value_info, *inferred.graph.input]}
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3] or node.input[3] not in inits:
            continue
        in_shape = shapes.get(node.input[0])
        sizes = numpy_helper.to_array(inits[node.input[3]]).astype(np.float64)
        if not in_shape or len(in_shape) != len(sizes) or not all(in_shape[1:]):
            continue
        in_shape = [1, *in_shape[1:]]
        sizes[0] = 1
        scales = (sizes / np.asarray(in_shape, dtype=np.float64)).astype(np.float32)
        name = f"{node.name or node.output[0]}_scales"
        model.graph.initializer.append(numpy_helper.from_array(scales, name))
        roi = f"{node.name or node.output[0]}_roi"
        if not node.input[1]:
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), roi))
        inputs = [node.input[0], node.input[1] or roi, name]
        del node.input[:]
        node.input.extend(inputs)
    return model


def _resize_channels_last(model) -> bool:
    """Transpose(NHWC->NCHW) -> Resize -> ... becomes Resize on NHWC (scales permuted) -> Transpose -> ...,
    which qonnx then cancels against the next NCHW->NHWC Transpose: hls4ml's Resize expects channels-last
    data with scales in NHWC order."""
    changed = False
    for node in list(model.graph.node):
        if node.op_type != "Resize" or len(node.input) < 3 or not node.input[2]:
            continue
        scales = model.get_initializer(node.input[2])
        producer = model.find_producer(node.input[0])
        if (scales is None or scales.size != 4 or producer is None or producer.op_type != "Transpose"
                or list(_attr(producer, "perm", [])) != _TO_NCHW or len(model.find_consumers(producer.output[0])) != 1):
            continue
        nhwc_in = producer.input[0]
        n, c, h, w = model.get_tensor_shape(node.output[0])
        resized = f"{node.output[0]}_nhwc"
        new_scales = f"{node.input[2]}_nhwc"
        model.set_initializer(new_scales, np.asarray(scales, dtype=np.float32)[[0, 2, 3, 1]])
        node.input[0], node.input[2] = nhwc_in, new_scales
        back = helper.make_node("Transpose", [resized], [node.output[0]], perm=_TO_NCHW)
        node.output[0] = resized
        model.graph.node.insert(list(model.graph.node).index(node) + 1, back)
        model.graph.node.remove(producer)
        model.set_tensor_shape(resized, [n, h, w, c])
        changed = True
    return changed


def _reduce_mean_to_pool(model: onnx.ModelProto) -> onnx.ModelProto:
    """ReduceMean over H and W of an NCHW tensor (`x.mean(dim=(2, 3))`, which the dynamo exporter also emits
    for AdaptiveAvgPool2d(1)) -> GlobalAveragePool (+ Flatten without keepdims): hls4ml has no ReduceMean."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        return model
    ranks = {v.name: len(_shape(v)) for v in [*inferred.graph.value_info, *inferred.graph.input]}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1] in inits:
            axes = inits[node.input[1]].tolist()
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        keep = bool(_attr(node, "keepdims", 1))
        name = node.name or node.output[0]
        index = list(model.graph.node).index(node)
        pooled = node.output[0] if keep else f"{name}_pooled"
        replacement = [helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=f"{name}_gap")]
        if not keep:
            replacement.append(helper.make_node("Flatten", [pooled], [node.output[0]], axis=1, name=f"{name}_flatten"))
        model.graph.node.remove(node)
        for k, new in enumerate(replacement):
            model.graph.node.insert(index + k, new)
    return model


def _global_pool_channels_last(model) -> bool:
    """Transpose(NHWC->NCHW) -> GlobalAveragePool becomes GlobalAveragePool on NHWC -> Transpose; the parser
    fix in `_parser_fixes` then reads its NHWC dims (hls4ml's handler assumes NCHW dims but
    runs a channels-last kernel)."""
    changed = False
    for node in list(model.graph.node):
        if node.op_type not in ("GlobalAveragePool", "GlobalMaxPool"):
            continue
        producer = model.find_producer(node.input[0])
        if (producer is None or producer.op_type != "Transpose" or list(_attr(producer, "perm", [])) != _TO_NCHW
                or len(model.find_consumers(producer.output[0])) != 1):
            continue
        n, h, w, c = model.get_tensor_shape(producer.input[0])
        pooled = f"{node.output[0]}_nhwc"
        back = helper.make_node("Transpose", [pooled], [node.output[0]], perm=_TO_NCHW)
        node.input[0], node.output[0] = producer.input[0], pooled
        model.graph.node.insert(list(model.graph.node).index(node) + 1, back)
        model.graph.node.remove(producer)
        model.set_tensor_shape(pooled, [n, 1, 1, c])
        changed = True
    return changed


@contextlib.contextmanager
def _parser_fixes():
    """While hls4ml parses: a global pool or Resize fed by a channels-last tensor gets its dimensions from NHWC
    (hls4ml 1.3.0 reads a global pool's as if NCHW and swaps a Resize's H and W, then streams channels-last);
    PReLU gets its slopes and a windowed MaxPool edgemtl's kernel (hls4ml_ext.fix_parsed_layers)."""
    import hls4ml.converters as converters  # noqa: PLC0415

    onnx_to_hls = sys.modules["hls4ml.converters.onnx_to_hls"]  # the package attribute is the function

    original = onnx_to_hls.parse_onnx_model

    def parse(onnx_model):  # noqa: ANN001, ANN202
        layers, inputs, outputs = original(onnx_model)
        shapes = {v.name: _shape(v) for v in [*onnx_model.graph.value_info, *onnx_model.graph.input]}
        producers = {o: n for n in onnx_model.graph.node for o in n.output}
        by_name = {n.name: n for n in onnx_model.graph.node}
        constants = {layer["name"]: layer for layer in layers if layer.get("class_name") == "Constant"}
        for layer in layers:
            node = by_name.get(layer.get("name"))
            if node is None or node.op_type not in ("GlobalAveragePool", "GlobalMaxPool", "Resize"):
                continue
            producer = producers.get(node.input[0])
            shape = shapes.get(node.input[0], [])
            if len(shape) != 4 or (producer is not None and producer.op_type == "Transpose"):
                continue  # not a channels-last tensor
            if node.op_type == "Resize":
                # hls4ml reads H as in_width and W as in_height and scales[1] / [2] as width / height
                # factors: right only for square maps. Give it H, W and the scales as [1, sW, sH, 1].
                key = onnx_to_hls.replace_char_inconsitency(node.input[2]) if len(node.input) > 2 else ""
                scales = constants.get(key)
                if scales is None or np.size(scales["value"]) != 4:
                    continue
                value = np.array(scales["value"], dtype=np.float64).copy()
                value[[1, 2]] = value[[2, 1]]
                scales["value"] = value
                layer["in_height"], layer["in_width"], layer["n_chan"] = shape[1], shape[2], shape[3]
                layer["out_height"], layer["out_width"] = shape[1], shape[2]
            else:
                layer["in_height"], layer["in_width"], layer["n_filt"] = shape[1], shape[2], shape[3]
        return hls4ml_ext.fix_parsed_layers(layers, onnx_model), inputs, outputs

    onnx_to_hls.parse_onnx_model = parse
    converters.parse_onnx_model = parse
    try:
        yield
    finally:
        onnx_to_hls.parse_onnx_model = original
        converters.parse_onnx_model = original


def _drop_noop_transposes(model) -> None:
    """A Transpose that moves at most one non-unit axis (the [N,1,1,C] -> [N,C,1,1] after a global pool) only
    feeding Flatten / Reshape does nothing to the data order: bypass it (hls4ml's Transpose would get the
    pool's 1-D output and a 3-D permutation)."""
    for node in list(model.graph.node):
        if node.op_type != "Transpose":
            continue
        shape = model.get_tensor_shape(node.input[0]) or []
        consumers = model.find_consumers(node.output[0]) or []
        if (len(shape) < 3 or sum(d != 1 for d in shape[1:]) > 1 or not consumers
                or any(c.op_type not in ("Flatten", "Reshape") for c in consumers)
                or node.output[0] in {o.name for o in model.graph.output}):
            continue
        for consumer in consumers:
            consumer.input[0] = node.input[0]
        model.graph.node.remove(node)


def _drop_output_reshapes(model) -> None:
    """A Reshape of a (batch, features) tensor into a graph output (landmarks as [5, 2]; brevitas may re-quantize
    after it) only relabels the stream hls4ml writes flat anyway: bypass it; the host side reshapes the flat
    output to the graph's shape. (hls4ml 1.3.0 stops at such a Reshape with a KeyError on its name.)"""
    outputs = {o.name for o in model.graph.output}
    for node in list(model.graph.node):
        source = node.input[0] if node.input else ""
        shape = model.get_tensor_shape(source) or []
        consumers = model.find_consumers(node.output[0]) or []
        requant = consumers[0] if len(consumers) == 1 and consumers[0].op_type == "Quant" else None
        final = requant.output[0] if requant is not None else node.output[0] if not consumers else ""
        if node.op_type != "Reshape" or len(shape) != 2 or final not in outputs or source in outputs:
            continue
        model.graph.node.remove(node)
        if requant is not None:
            requant.input[0] = source
        else:
            producer = model.find_producer(source)
            producer.output[list(producer.output).index(source)] = final
        for vi in list(model.graph.value_info):
            if vi.name in (node.output[0], final):
                model.graph.value_info.remove(vi)
        model.set_tensor_shape(final, shape)


def _drop_output_transposes(model):
    """Remove NHWC->NCHW Transposes that only feed graph outputs (each buffers a frame in io_stream)."""
    outputs = {o.name: o for o in model.graph.output}
    nhwc: dict[str, bool] = {name: False for name in outputs}
    for node in list(model.graph.node):
        if (node.op_type != "Transpose" or node.output[0] not in outputs or list(_attr(node, "perm", [])) != _TO_NCHW
                or node.input[0] in outputs or model.find_producer(node.input[0]) is None
                or model.get_initializer(node.input[0]) is not None):
            continue
        source, target = node.input[0], node.output[0]
        shape = model.get_tensor_shape(source)
        model.graph.node.remove(node)
        for other in model.graph.node:
            for i, name in enumerate(other.input):
                if name == source:
                    other.input[i] = target
            for i, name in enumerate(other.output):
                if name == source:
                    other.output[i] = target
        for vi in list(model.graph.value_info):
            if vi.name in (source, target):
                model.graph.value_info.remove(vi)
        model.set_tensor_shape(target, shape)
        nhwc[target] = True
    return model, nhwc


def _set_input_precision(config: dict[str, Any], model) -> None:
    """Give the graph input the type of the power-of-two Quant it feeds, so the float input rounds once."""
    name = model.graph.input[0].name
    consumers = model.find_consumers(name)
    if len(consumers) != 1 or consumers[0].op_type != "Quant":
        return
    quant = _quant_type(model, consumers[0])
    if quant is not None:
        config.setdefault("LayerName", {}).setdefault(name, {}).setdefault("Precision", {})["result"] = quant


def _quant_params(model_proto_or_wrapper, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    get = getattr(model_proto_or_wrapper, "get_initializer", None)
    if get is None:
        inits = {t.name: t for t in model_proto_or_wrapper.graph.initializer}

        def get(name):  # noqa: ANN001, ANN202
            return numpy_helper.to_array(inits[name]) if name in inits else None
    values = [get(name) for name in node.input[1:4]]
    if any(v is None for v in values):
        return None
    return tuple(np.asarray(v, dtype=np.float64) for v in values)  # scale, zero point, bit width


def _is_power_of_two(scale: np.ndarray) -> bool:
    flat = scale.ravel()
    if flat.size == 0 or not np.all(flat == flat[0]) or flat[0] <= 0:
        return False
    return bool(np.frexp(flat[0])[0] == 0.5)


def _quant_type(model, node: onnx.NodeProto) -> str | None:
    """The ap_fixed type hls4ml gives a power-of-two Quant (mirrors hls4ml's QuantToActivation)."""
    params = _quant_params(model, node)
    if params is None:
        return None
    scale, zeropt, bits = params
    if not _is_power_of_two(scale) or np.any(zeropt != 0) or bits.size != 1:
        return None
    signed, narrow = bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0))
    rounding = {"ROUND": "RND_CONV", "FLOOR": "TRN"}.get(str(_attr(node, "rounding_mode", "ROUND")).upper())
    if rounding is None or (narrow and not signed):
        return None
    width = math.ceil(float(bits.item()))
    integer = width + int(np.frexp(scale.ravel()[0])[1]) - 1
    saturation = "SAT_SYM" if narrow else "SAT"
    return f"{'fixed' if signed else 'ufixed'}<{width},{integer},{rounding},{saturation}>"


def _quant_grid(model, node: onnx.NodeProto) -> tuple[float, int, bool, bool] | None:
    """(scale, bits, signed, narrow) of a round-half-even power-of-two Quant with integer bits, or None."""
    params = _quant_params(model, node)
    if params is None or _quant_type(model, node) is None or "RND_CONV" not in _quant_type(model, node):
        return None
    scale, _, bits = params
    if float(bits.item()) != round(float(bits.item())):
        return None
    return float(scale.ravel()[0]), int(bits.item()), bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0))


def _non_power_of_two_quants(model: onnx.ModelProto) -> list[str]:
    found = []
    for node in model.graph.node:
        if node.op_type != "Quant":
            continue
        params = _quant_params(model, node)
        if params is not None and not _is_power_of_two(params[0]):
            scale = params[0].ravel()
            shown = f"{scale[0]:.6g}" if np.all(scale == scale[0]) else f"{scale.size} per-channel values"
            found.append(f"{node.name} (scale {shown})")
    return found


def _float_biases(model: onnx.ModelProto) -> list[str]:
    """Conv / Gemm nodes whose bias is a nonzero float initializer (no Quant node in front of it)."""
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in inits:
            if np.any(numpy_helper.to_array(inits[node.input[2]])):
                found.append(node.name or node.output[0])
    return found


def csim_provenance(samples: int) -> str:
    return f"simulated (hls4ml C simulation, bit-accurate: equal to the quantized model on {samples} samples)"


def precision_table(hls_model: Any) -> dict[str, dict[str, str]]:
    """Layer name -> {type name (result_t, accum_t, weight_t ...): precision} as hls4ml will emit them."""
    table = {}
    for layer in hls_model.get_layers():
        table[layer.name] = {name: str(t.precision) for name, t in sorted(layer.types.items())}
    return table


# --- ops hls4ml cannot map -----------------------------------------------------------------------------

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


def _failing_onnx_node(exc: BaseException) -> onnx.NodeProto | None:
    """The innermost ONNX node a traceback was handling (a `node` local that is a NodeProto)."""
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in frame.f_locals.values():
            if isinstance(value, onnx.NodeProto):
                found = value
    return found


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


# ---------------------------------------------------------------------------------------------------------
# C simulation
# ---------------------------------------------------------------------------------------------------------


def _per_output(value: Any, outputs: list[str], what: str, task: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        missing = [o for o in outputs if o not in value]
        if missing:
            raise EdgemtlError(f"task {task!r}: {what} has no entry for output(s) {', '.join(missing)}")
        return {o: value[o] for o in outputs}
    if isinstance(value, (list, tuple)):
        if len(value) != len(outputs):
            raise EdgemtlError(f"task {task!r}: {what} has {len(value)} entries for {len(outputs)} outputs")
        return dict(zip(outputs, value))
    if len(outputs) != 1 and what == "reference":
        raise EdgemtlError(f"task {task!r}: the HLS model has {len(outputs)} outputs ({', '.join(outputs)}): "
                           "pass the reference as a dict by output name")
    return {o: value for o in outputs}


def _hls_inputs(project: HlsProject, inputs: np.ndarray) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float64)
    if x.shape[1:] != project.input_shape:
        raise EdgemtlError(f"task {project.task!r}: csim inputs have shape {x.shape[1:]} per sample, "
                           f"the graph takes {project.input_shape} (NCHW)")
    if project.input_channels_last:
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x.reshape(x.shape[0], -1))


def _from_hls(project: HlsProject, name: str, flat: np.ndarray) -> np.ndarray:
    shape = project.output_shapes[name]
    n = flat.shape[0]
    if project.output_channels_last.get(name) and len(shape) == 3:
        c, h, w = shape
        return flat.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return flat.reshape(n, *shape)


def hls_predict(project: HlsProject, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run the compiled C simulation on NCHW float inputs; outputs by name in the quantized model's layout."""
    x = _hls_inputs(project, inputs)
    with _quiet(io.StringIO()):
        raw = project.hls_model.predict(x)
    if len(project.outputs) == 1:
        raw = [raw]
    result = {}
    for name, values in zip(project.outputs, raw):
        result[name] = _from_hls(project, name, np.asarray(values, dtype=np.float64).reshape(x.shape[0], -1))
    return result


def constant_factor(hls: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Least-squares s in hls ~ s * reference; the residual |hls - s ref| relative to |hls| and to the error
    |hls - ref| (small for a scale error, near 1 for an offset or noise)."""
    h, r = np.ravel(hls).astype(np.float64), np.ravel(reference).astype(np.float64)
    rr = float(r @ r)
    if rr == 0.0 or not np.any(h):
        return 1.0, 0.0, 1.0
    s = float(h @ r) / rr
    residual = float(np.linalg.norm(h - s * r))
    error = float(np.linalg.norm(h - r))
    return s, residual / float(np.linalg.norm(h)), (residual / error if error else 1.0)


def csim_check(project: HlsProject, inputs: np.ndarray, reference: Any, lsb: Any, task: str) -> dict[str, Any]:
    """Check that the HLS C simulation equals the quantized model's outputs, value for value, on NCHW inputs.

    `reference`: an array for a one-output graph, else a dict by output name (or a list in `project.outputs`
    order), in the quantized model's layout; `lsb`: the output quantizer's step (float, or per output), to
    report differences in. Equality, not a tolerance: both sides are integers times a power-of-two step, so
    any difference is a real rounding difference. Raises one EdgemtlError line on a constant-factor error (a
    non-power-of-two scale) or any difference; returns samples, max_abs_diff_lsb (0; per sample / output),
    exact, bound_lsb (0), passed, seconds, provenance (naming the sample count).
    """
    start = time.perf_counter()
    refs = _per_output(reference, project.outputs, "reference", task)
    refs = {k: np.asarray(v, dtype=np.float64) for k, v in refs.items()}
    lsbs = {k: float(v) for k, v in _per_output(lsb, project.outputs, "lsb", task).items()}
    x = np.asarray(inputs)
    if x.ndim == len(project.input_shape):
        x = x[None]
    got = hls_predict(project, x)
    samples = x.shape[0]
    if samples == 0:
        raise EdgemtlError(f"task {task!r}: the C simulation check needs at least one sample")
    per_output: dict[str, Any] = {}
    per_sample = np.zeros(samples)
    differing = {}
    for name in project.outputs:
        ref, out, step = refs[name], got[name], lsbs[name]
        if ref.shape != out.shape:
            if ref.size == out.size:
                ref = ref.reshape(out.shape)
            else:
                raise EdgemtlError(f"task {task!r}: reference for {name!r} has shape {ref.shape}, "
                                   f"the HLS model gives {out.shape}")
        if step <= 0:
            raise EdgemtlError(f"task {task!r}: the output LSB for {name!r} must be positive, got {step}")
        diff = np.abs(out - ref) / step
        sample_max = diff.reshape(samples, -1).max(axis=1)
        per_sample = np.maximum(per_sample, sample_max)
        differing[name] = int(np.count_nonzero(out != ref))
        scale, residual, unexplained = constant_factor(out, ref)
        per_output[name] = {"max_abs_diff_lsb": float(sample_max.max()), "values": int(out.size),
                            "differing_values": differing[name],
                            "per_sample_max_abs_diff_lsb": [float(v) for v in sample_max],
                            "scale": scale, "fit_residual": residual}
        if (abs(scale - 1.0) > CONSTANT_FACTOR_TOLERANCE and residual < CONSTANT_FACTOR_FIT
                and unexplained < CONSTANT_FACTOR_EXPLAINS and differing[name]):
            suspects = project.non_power_of_two_quants
            where = f" (Quant nodes {', '.join(suspects[:3])})" if suspects else ""
            raise VerificationError(
                f"task {task!r}: the HLS C simulation differs from the quantized model by a constant factor "
                f"{scale:.4g} (output {name!r}, least-squares fit residual {residual:.1%}, max error "
                f"{sample_max.max():.0f} LSB over {samples} samples); a quantizer scale is not a power of two"
                f"{where}: use brevitas fixed-point quantizers (Int8ActPerTensorFixedPoint, "
                "Int8WeightPerTensorFixedPoint)")
    worst = float(per_sample.max())
    seconds = time.perf_counter() - start
    project.last_csim = {"inputs": np.asarray(x, dtype=np.float64), "outputs": got}
    if any(differing.values()):
        name = max(per_output, key=lambda k: (per_output[k]["max_abs_diff_lsb"], differing[k]))
        raise VerificationError(f"task {task!r}: the HLS C simulation differs from the quantized model by up to "
                           f"{worst:.3g} LSB in {differing[name]} of {per_output[name]['values']} values of output "
                           f"{name!r} ({samples} samples; it must be bit-accurate, 0 LSB): {_mismatch_cause(project)}")
    return {"samples": int(samples), "max_abs_diff_lsb": worst, "exact": True, "bound_lsb": 0.0,
            "per_sample_max_abs_diff_lsb": [float(v) for v in per_sample], "outputs": per_output,
            "passed": True, "seconds": seconds, "provenance": csim_provenance(int(samples))}


def _mismatch_cause(project: HlsProject) -> str:
    if project.non_power_of_two_quants:
        return (f"quantizer scales that are not powers of two ({', '.join(project.non_power_of_two_quants[:3])}) "
                "are not exact in hls4ml")
    if project.float_biases:
        return (f"float biases ({', '.join(project.float_biases[:3])}) are rounded to {project.default_precision} "
                "in hls4ml: quantize them (brevitas Int32Bias)")
    return f"check the per-layer precision in {project.out_dir}/hls4ml_config.yml"


# ---------------------------------------------------------------------------------------------------------
# The generated C++ testbench, built with plain g++
# ---------------------------------------------------------------------------------------------------------


def write_tb_data(project: HlsProject, inputs: np.ndarray, outputs: Mapping[str, np.ndarray]) -> Path:
    """tb_data/tb_input_features.dat and tb_output_predictions.dat, one sample a line, in the HLS layout
    (what `InputData` / `OutputPredictions` would make; the outputs concatenated in top-function order)."""
    folder = project.out_dir / "tb_data"
    folder.mkdir(exist_ok=True)
    x = _hls_inputs(project, inputs)
    flat = []
    for name in project.outputs:
        y = np.asarray(outputs[name], dtype=np.float64)
        if project.output_channels_last.get(name) and y.ndim == 4:
            y = y.transpose(0, 2, 3, 1)
        flat.append(y.reshape(y.shape[0], -1))
    y = np.concatenate(flat, axis=1)
    for path, data in ((folder / "tb_input_features.dat", x), (folder / "tb_output_predictions.dat", y)):
        path.write_text("".join(" ".join(repr(float(v)) for v in row) + " \n" for row in data))
    return folder


def build_testbench(project: HlsProject, inputs: np.ndarray | None = None,
                    outputs: Mapping[str, np.ndarray] | None = None, timeout_s: float = 600) -> dict[str, Any]:
    """Build `myproject_test.cpp` with plain g++ against the bundled ap_types and run it on tb_data.

    Data: `inputs` (NCHW) and `outputs` (by name) if given, else those of the last `csim_check`. The
    testbench is built from a copy whose results log prints every digit (hls4ml's prints 6 significant
    ones), so its run is compared with the C simulation for equality: `matches_csim` is True only when every
    sample's every value is equal, else False with `tb_reason` when the run gave nothing comparable.
    Without g++ (or when g++ fails), returns {"built": False, "reason": ...}.
    """
    gxx = shutil.which("g++")
    if gxx is None:
        return {"built": False, "ran": False, "reason": "g++ not found on PATH"}
    out_dir = project.out_dir
    test_cpp = out_dir / f"{PROJECT_NAME}_test.cpp"
    if not test_cpp.is_file():
        return {"built": False, "ran": False, "reason": f"{test_cpp} missing (hls4ml wrote no testbench)"}
    source = test_cpp.read_text()
    if _TB_LOG_STREAM not in source:
        return {"built": False, "ran": False,
                "reason": f"{test_cpp} has no {_TB_LOG_STREAM!r} to print exact results from (another hls4ml?)"}
    exact_cpp = out_dir / f"{PROJECT_NAME}_test_exact.cpp"
    exact_cpp.write_text(source.replace(_TB_LOG_STREAM, f"{_TB_LOG_STREAM} fout.precision(1000);", 1))
    expected = None
    if inputs is not None:
        expected = dict(outputs) if outputs is not None else hls_predict(project, inputs)
        write_tb_data(project, inputs, expected)
    elif project.last_csim is not None:
        expected = project.last_csim["outputs"]
        write_tb_data(project, project.last_csim["inputs"], expected)
    has_data = (out_dir / "tb_data" / "tb_input_features.dat").is_file()
    log = out_dir / "tb_data" / "csim_results.log"
    log.unlink(missing_ok=True)  # a log from an earlier run must not stand in for this one

    start = time.perf_counter()
    binary = out_dir / "tb_csim"
    weights = out_dir / "firmware" / "weights"
    cmd = [gxx, "-O2", "-std=c++14", f"-I{out_dir / 'firmware' / 'ap_types'}", f"-I{out_dir}",
           f'-DWEIGHTS_DIR="{weights}"', str(exact_cpp), str(out_dir / "firmware" / f"{PROJECT_NAME}.cpp"),
           "-o", str(binary)]
    build = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True, timeout=timeout_s)
    build_s = time.perf_counter() - start
    result: dict[str, Any] = {"built": build.returncode == 0, "ran": False, "build_seconds": build_s,
                              "compiler": gxx, "command": " ".join(cmd), "has_tb_data": has_data}
    if build.returncode != 0:
        result["reason"] = "g++ failed: " + _one_line(build.stderr or build.stdout, 400)
        return result
    start = time.perf_counter()
    run = subprocess.run([str(binary)], cwd=out_dir, capture_output=True, text=True, timeout=timeout_s)
    result.update(ran=True, exit_status=run.returncode, run_seconds=time.perf_counter() - start,
                  seconds=build_s + time.perf_counter() - start, stdout_tail=run.stdout[-2000:])
    if run.returncode != 0:
        result.update(matches_csim=False, tb_reason=f"it exited with status {run.returncode}")
    elif not has_data or expected is None:
        result.update(matches_csim=False, tb_reason="no tb_data to run on (run csim_check first or pass inputs)")
    elif not log.is_file():
        result.update(matches_csim=False, tb_reason=f"it wrote no {log.relative_to(out_dir)}")
    else:
        result.update(_compare_tb_log(project, log, expected))
    return result


def _compare_tb_log(project: HlsProject, log: Path, expected: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """csim_results.log: one line per output per sample, in top-function order, HLS layout, every digit."""
    lines = [line.split() for line in log.read_text().splitlines() if line.strip()]
    n_out = len(project.outputs)
    want = len(np.asarray(expected[project.outputs[0]])) if n_out else 0
    samples = len(lines) // n_out if n_out else 0
    if not n_out or len(lines) != want * n_out:
        return {"tb_samples": samples, "matches_csim": False,
                "tb_reason": f"{len(lines)} lines in the log, expected {want} samples x {n_out} outputs"}
    worst, equal = 0.0, True
    for s in range(samples):
        for k, name in enumerate(project.outputs):
            got = np.asarray([float(v) for v in lines[s * n_out + k]])
            y = np.asarray(expected[name], dtype=np.float64)[s]
            if project.output_channels_last.get(name) and y.ndim == 3:
                y = y.transpose(1, 2, 0)
            y = y.ravel()
            if got.size != y.size:
                return {"tb_samples": samples, "matches_csim": False,
                        "tb_reason": f"output {name!r}: {got.size} values in the log, expected {y.size}"}
            if y.size:
                worst = max(worst, float(np.max(np.abs(got - y))))
                equal = equal and bool(np.array_equal(got, y))
    return {"tb_samples": samples, "tb_max_abs_diff": worst, "matches_csim": samples > 0 and equal}
