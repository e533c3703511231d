"""The QONNX graph preparation hls4ml 1.3.0 needs, and what the cleaned graph says about its quantizers.

`_clean` runs hls4ml's documented QONNX preparation (qonnx `cleanup_model`, `ConvertToChannelsLastAndClean`,
`GemmToMatMul`, `cleanup_model` again), then leaves the 4-D outputs channels-last (each trailing Transpose back to
NCHW would buffer a whole frame in io_stream). `_parser_fixes` patches hls4ml's ONNX parser while it converts.

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
import sys
import traceback
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgemtl.backends import hls4ml_ext
from edgemtl.errors import EdgemtlError

_TO_NCHW = [0, 3, 1, 2]


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


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


def _failing_onnx_node(exc: BaseException) -> onnx.NodeProto | None:
    """The innermost ONNX node a traceback was handling (a `node` local that is a NodeProto)."""
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in frame.f_locals.values():
            if isinstance(value, onnx.NodeProto):
                found = value
    return found


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
