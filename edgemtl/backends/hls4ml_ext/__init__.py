"""What edgemtl adds to hls4ml 1.3.0 so edge CNNs beyond its own examples map exactly: PReLU, windowed max pools,
average pools and elementwise functions (sigmoid, tanh, hard-swish ...) as exact tables.

hls4ml has the PReLU kernel but its ONNX handler never reads the slopes; its io_stream pooling asserts
window == stride and no padding; qonnx's channels-last conversion has no AveragePool, so hls4ml's handler refuses
it; its sigmoid / tanh / softplus tables are 1-2 LSB off the quantized model and it has no HardSwish. Each fix is
up to three parts, applied by hls4ml_backend while it prepares and converts a graph:

- ONNX rewrites before conversion: PRelu and the tabulated ops moved onto the channels-last tensor
  (`elementwise_channels_last`; PRelu's slopes become [C]); AveragePool becomes a qonnx channels-last op like MaxPool (`register_qonnx_ops`); an
  elementwise function between two quantizers becomes one `EdgemtlTable` node (`elementwise_tables`): the
  quantized model's output for each input code, run by `TableActivation` (nnet_table_activation_stream.h);
- a parser fix (`fix_parsed_layers`): a PReLU gets its slopes as weights, a MaxPool hls4ml's stream kernel
  cannot run (overlapping windows, padding, ceil mode: end padding that is -inf and never wins) becomes
  `WindowMaxPooling2D`, this package's layer with its own HLS kernel (nnet_window_pool_stream.h, registered
  with the Vitis backend by `register`);
- exact types (`exact_precisions`): the slopes' fixed-point type and a PReLU result type that holds every
  product (edgemtl's quantizer snaps the slopes to a 2^-8 grid: passes/quantize_brevitas.FixedPointPReLU); an
  average pool's result with the window's log2 extra fractional bits (hls4ml would truncate the mean to the
  input's grid, brevitas rounds the exact mean). So the C simulation equals the quantized model bit for bit.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

HEADERS = (Path(__file__).with_name("nnet_window_pool_stream.h"), Path(__file__).with_name("nnet_table_activation_stream.h"))
LAYER = "WindowMaxPooling2D"
TABLE_OP, TABLE_LAYER = "EdgemtlTable", "TableActivation"
TABLE_OPS = ("Sigmoid", "Tanh", "Softplus", "HardSigmoid", "HardSwish")  # exported by nn.Sigmoid, ... nn.Hardswish
MAX_TABLE_BITS = 12  # a table of 2^bits entries per layer
_TO_NCHW = [0, 3, 1, 2]
_FIXED = re.compile(r"^(u?)fixed<(\d+),(-?\d+)")
_registered: set[str] = set()


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --- the ONNX graph, before hls4ml sees it --------------------------------------------------------------


def elementwise_channels_last(model) -> bool:
    """Transpose(NHWC->NCHW) -> PRelu (slopes [C,1,1]) / HardSwish / ... becomes the op on NHWC (PRelu's slopes [C])
    -> Transpose, which qonnx then cancels against the next NCHW->NHWC Transpose (its channels-last pass moves
    Transposes only past the elementwise ops it knows)."""
    changed = False
    for node in list(model.graph.node):
        if node.op_type != "PRelu" and node.op_type not in TABLE_OPS:
            continue
        producer = model.find_producer(node.input[0])
        if (producer is None or producer.op_type != "Transpose" or list(_attr(producer, "perm", [])) != _TO_NCHW
                or len(model.find_consumers(producer.output[0])) != 1):
            continue
        n, c, h, w = model.get_tensor_shape(node.output[0])
        if node.op_type == "PRelu":
            slopes = model.get_initializer(node.input[1])
            if slopes is None or slopes.size not in (1, c):
                continue
            name = f"{node.input[1]}_nhwc"
            model.set_initializer(name, np.asarray(slopes, dtype=np.float32).reshape(-1))
            node.input[1] = name
        nhwc = f"{node.output[0]}_nhwc"
        back = helper.make_node("Transpose", [nhwc], [node.output[0]], perm=_TO_NCHW)
        node.input[0], node.output[0] = producer.input[0], nhwc
        model.graph.node.insert(list(model.graph.node).index(node) + 1, back)
        model.graph.node.remove(producer)
        model.set_tensor_shape(nhwc, [n, h, w, c])
        changed = True
    return changed


def _table_function(node: onnx.NodeProto):  # noqa: ANN202 - a torch function, imported lazily
    """The PyTorch function the quantized model evaluates for an exported elementwise op (float32, as brevitas)."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: N812, PLC0415

    if node.op_type == "HardSigmoid":
        alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
        if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
            return F.hardsigmoid
        return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)
    return {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Softplus": F.softplus, "HardSwish": F.hardswish}.get(node.op_type)


def elementwise_tables(model, quant_grid, quant_type) -> dict[str, str]:
    """Quant -> Sigmoid / Tanh / Softplus / HardSigmoid / HardSwish -> Quant becomes one EdgemtlTable node holding,
    for every input code, the output the quantized model gives (the function in float32, then the second
    quantizer's round-half-even and clamp). `quant_grid(model, node)` is (scale, bits, signed, narrow) of a
    power-of-two Quant, or None; `quant_type(model, node)` its hls4ml type. Runs on the cleaned graph (qonnx does
    not know the op). Returns {table node: its output type}."""
    import torch  # noqa: PLC0415

    types = {}
    for node in list(model.graph.node):
        function = _table_function(node)
        if function is None:
            continue
        source, consumers = model.find_producer(node.input[0]), model.find_consumers(node.output[0]) or []
        if source is None or source.op_type != "Quant" or len(consumers) != 1 or consumers[0].op_type != "Quant":
            continue
        grid_in, grid_out = quant_grid(model, source), quant_grid(model, consumers[0])
        if grid_in is None or grid_out is None or grid_in[1] > MAX_TABLE_BITS:
            continue
        (scale_in, bits, signed, _), (scale_out, bits_out, signed_out, narrow_out) = grid_in, grid_out
        codes = np.arange(2 ** bits)
        values = np.where(signed & (codes >= 2 ** (bits - 1)), codes - 2 ** bits, codes)
        low = -(2 ** (bits_out - 1)) + int(narrow_out) if signed_out else 0
        high = 2 ** (bits_out - 1) - 1 if signed_out else 2 ** bits_out - 1
        with torch.no_grad():
            x = torch.from_numpy((values * scale_in).astype(np.float32))
            table = torch.clamp(torch.round(function(x) / np.float32(scale_out)), low, high) * np.float32(scale_out)
        quantized = consumers[0]
        table_node = helper.make_node(TABLE_OP, [node.input[0]], [quantized.output[0]], name=f"{node.name}_table",
                                      in_width=bits, table=table.double().tolist(), function=node.op_type)
        model.graph.node.insert(list(model.graph.node).index(node), table_node)
        model.graph.node.remove(node)
        model.graph.node.remove(quantized)
        types[table_node.name] = quant_type(model, quantized)
    return types


def _parse_table(node: onnx.NodeProto, input_names: list[str], input_shapes: list, graph) -> dict[str, Any]:  # noqa: ANN001
    """hls4ml's ONNX handler for EdgemtlTable."""
    table = np.asarray(_attr(node, "table"), dtype=np.float64)
    return {"name": node.name, "class_name": TABLE_LAYER, "inputs": input_names[:1], "outputs": list(node.output),
            "n_in": int(np.prod(input_shapes[0][1:])), "in_width": int(_attr(node, "in_width")),
            "table_size": int(table.size), "table_data": table}


def needs_window_pool(node: onnx.NodeProto) -> bool:
    """A MaxPool hls4ml's stream kernels cannot run (padding, ceil mode, or a window that is not its stride)."""
    kernel = list(_attr(node, "kernel_shape", []))
    return (node.op_type == "MaxPool" and len(kernel) == 2 and (any(_attr(node, "pads", [])) or _attr(node, "ceil_mode", 0)
                                                                or list(_attr(node, "strides", kernel)) != kernel))


def pooled_size(size: int, kernel: int, stride: int, begin: int, end: int, ceil_mode: bool) -> int:
    """ONNX / PyTorch pooling output length; in ceil mode the last window must start inside the input or its
    start padding (the end padding ceil mode adds is -inf, like explicit padding)."""
    span = size + begin + end - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size + begin else out


def average_pool_refusal(node: onnx.NodeProto) -> str | None:
    """Why an AveragePool cannot map exactly (None when it can): hls4ml's stream kernel takes windows that tile the
    input, and only a power-of-two window divides exactly in fixed point."""
    kernel = list(_attr(node, "kernel_shape", []))
    if len(kernel) != 2 or any(_attr(node, "pads", [])) or _attr(node, "ceil_mode", 0):
        return "only a 2-D window without padding or ceil_mode streams"
    if list(_attr(node, "strides", kernel)) != kernel:
        return f"strides {list(_attr(node, 'strides', []))} differ from the window {kernel} (hls4ml's stream kernel asserts it)"
    size = kernel[0] * kernel[1]
    if size & (size - 1):
        return f"a {kernel[0]}x{kernel[1]} mean divides by {size}, which fixed point cannot do exactly (use a power of two)"
    return None


def window_pool_refusal(node: onnx.NodeProto) -> str | None:
    """Why even WindowMaxPooling2D cannot take a MaxPool (None when it can)."""
    kernel = list(_attr(node, "kernel_shape", []))
    pads = list(_attr(node, "pads", [0] * 2 * len(kernel)))
    if len(kernel) != 2:
        return f"a {len(kernel)}-D window (the windowed kernel is 2-D)"
    if any(d != 1 for d in _attr(node, "dilations", [1, 1])):
        return "dilated windows"
    if any(p >= k for p, k in zip(pads, kernel * 2)):
        return f"padding {pads} as large as the window {kernel} (a window of padding only)"
    return None


# --- hls4ml's parsed layer list ---------------------------------------------------------------------------


def fix_parsed_layers(layers: list[dict[str, Any]], onnx_model: onnx.ModelProto) -> list[dict[str, Any]]:
    """PReLU layers get their slopes (and lose the slope input); windowed MaxPools become WindowMaxPooling2D."""
    by_name = {n.name: n for n in onnx_model.graph.node}
    constants = {layer["name"]: layer for layer in layers if layer.get("class_name") == "Constant"}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*onnx_model.graph.value_info, *onnx_model.graph.input]}
    used: set[str] = set()
    for layer in layers:
        node = by_name.get(layer.get("name"))
        if node is None:
            continue
        if node.op_type == "PRelu" and len(layer["inputs"]) == 2 and layer["inputs"][1] in constants:
            layer["class_name"], layer["activation"] = "PReLU", "prelu"  # the handler makes it a plain Activation
            slopes = np.asarray(constants[layer["inputs"][1]]["value"], dtype=np.float64).reshape(-1)
            sample = shapes[node.input[0]][1:]
            layer["param_data"] = np.broadcast_to(slopes, sample if slopes.size > 1 else [int(np.prod(sample))]).reshape(-1)
            layer["n_in"] = int(np.prod(sample))
            layer["inputs"] = layer["inputs"][:1]
        elif needs_window_pool(node):
            kernel, pads = list(_attr(node, "kernel_shape")), list(_attr(node, "pads", [0, 0, 0, 0]))
            strides, ceil_mode = list(_attr(node, "strides", kernel)), bool(_attr(node, "ceil_mode", 0))
            _, height, width, _ = shapes[node.input[0]]  # channels-last
            out = [pooled_size(height, kernel[0], strides[0], pads[0], pads[2], ceil_mode),
                   pooled_size(width, kernel[1], strides[1], pads[1], pads[3], ceil_mode)]
            if strides == kernel and not any(pads) and out == [height // kernel[0], width // kernel[1]]:
                continue  # ceil mode that pads nothing: hls4ml's own kernel
            layer["class_name"] = LAYER
            layer["pad_top"], layer["pad_left"] = pads[0], pads[1]
            layer["out_height"], layer["out_width"] = out
        used.update(layer.get("inputs", []))
    return [layer for layer in layers if layer.get("class_name") != "Constant" or layer["name"] in used]


# --- exact types ----------------------------------------------------------------------------------------


def exact_precisions(model, quant_type, table_types: dict[str, str]) -> dict[str, dict[str, str]]:
    """{node: {hls4ml type name: type}} for every PRelu and AveragePool fed by a power-of-two Quant, so that each
    computes exactly what the quantized model does, and for every EdgemtlTable its output quantizer's type
    (`table_types`). `quant_type(model, node)` is the hls4ml type of a Quant node."""
    types = {name: {"result": type_} for name, type_ in table_types.items()}
    for node in model.graph.node:
        if node.op_type not in ("PRelu", "AveragePool"):
            continue
        producer = model.find_producer(node.input[0])
        source = quant_type(model, producer) if producer is not None and producer.op_type == "Quant" else None
        match = _FIXED.match(source or "")
        if match is None:
            continue
        unsigned, width, integer = bool(match.group(1)), int(match.group(2)), int(match.group(3))
        if node.op_type == "AveragePool":
            extra = int(math.log2(math.prod(_attr(node, "kernel_shape"))))  # a power of two (average_pool_refusal)
            types[node.name] = {"result": f"{'u' if unsigned else ''}fixed<{width + extra},{integer}>"}
            continue
        slopes = model.get_initializer(node.input[1])
        fraction = None if slopes is None else _fraction_bits(np.asarray(slopes, dtype=np.float64))
        if fraction is None:
            continue
        slope_integer = max(1, math.ceil(math.log2(float(np.max(np.abs(slopes))) + 2.0 ** -fraction)) + 1)
        sign = 1 if unsigned else 0  # an unsigned input needs a sign bit after the product
        types[node.name] = {"param": f"fixed<{slope_integer + fraction},{slope_integer}>",
                            "result": f"fixed<{width + sign + slope_integer + fraction},{integer + sign + slope_integer}>"}
    return types


def _fraction_bits(values: np.ndarray, limit: int = 24) -> int | None:
    """The fewest fractional bits that hold every value exactly, or None (not a fixed-point value)."""
    for bits in range(limit + 1):
        scaled = values * 2.0 ** bits
        if np.all(scaled == np.round(scaled)):
            return bits
    return None


# --- the qonnx and hls4ml extensions ----------------------------------------------------------------------


def register_qonnx_ops() -> None:
    """AveragePool as a qonnx channels-last op (shape and execution as its MaxPool), so ConvertToChannelsLast moves
    it onto the NHWC tensor hls4ml streams (qonnx 1.0 wraps only Conv, MaxPool and BatchNormalization)."""
    from qonnx.custom_op.channels_last.base_wrapped_op import ChannelsLastWrappedOp  # noqa: PLC0415
    from qonnx.custom_op.channels_last.max_pool import MaxPool_v1  # noqa: PLC0415
    from qonnx.custom_op.registry import add_op_to_domain  # noqa: PLC0415
    from qonnx.transformation import channels_last  # noqa: PLC0415

    if "AveragePool" in channels_last._channelsLast_node_types:
        return

    class AveragePool_v1(MaxPool_v1):  # noqa: N801 - qonnx reads op type and version from the class name
        def get_nodeattr_types(self) -> dict:
            return {**MaxPool_v1.get_nodeattr_types(self), "count_include_pad": ("i", False, 0),
                    "ceil_mode": ("i", False, 0)}

    add_op_to_domain("qonnx.custom_op.channels_last", AveragePool_v1)
    ChannelsLastWrappedOp._channelsLast_node_types = [*ChannelsLastWrappedOp._channelsLast_node_types, "AveragePool"]
    channels_last._channelsLast_node_types.append("AveragePool")




def register(backend_name: str) -> None:
    """Register WindowMaxPooling2D and TableActivation (layer, templates, headers, ONNX handler) with an hls4ml
    backend, and the qonnx ops (once per process)."""
    if backend_name in _registered:
        return
    register_qonnx_ops()
    import hls4ml  # noqa: PLC0415
    from hls4ml.converters.onnx_to_hls import layer_handlers, register_onnx_layer_handler  # noqa: PLC0415
    from hls4ml.model.attributes import Attribute  # noqa: PLC0415
    from hls4ml.model.layers import Layer, register_layer  # noqa: PLC0415

    pool_attributes = ("in_height", "in_width", "out_height", "out_width", "n_filt", "pool_height", "pool_width",
                       "stride_height", "stride_width", "pad_top", "pad_left")

    class WindowMaxPooling2D(Layer):
        _expected_attributes = [Attribute(name) for name in pool_attributes]

        def initialize(self) -> None:
            shape = [self.attributes["out_height"], self.attributes["out_width"], self.attributes["n_filt"]]
            self.add_output_variable(shape, precision=self.get_input_variable().type.precision)  # max is exact

    class TableActivation(Layer):
        _expected_attributes = [Attribute("n_in"), Attribute("in_width"), Attribute("table_size")]

        def initialize(self) -> None:
            self.add_output_variable(self.get_input_variable().shape)
            self.add_weights_variable(name="table", var_name="t{index}", precision=self.get_output_variable().type.precision)

    backend = hls4ml.backends.get_backend(backend_name)
    register_layer(LAYER, WindowMaxPooling2D)
    _register_templates(backend, WindowMaxPooling2D, "window_maxpool2d_config", pool_attributes,
                        "nnet::window_maxpool2d_cl<{input_t}, {output_t}, {config}>({input}, {output});", HEADERS[0])
    register_layer(TABLE_LAYER, TableActivation)
    _register_templates(backend, TableActivation, "table_activation_config", ("n_in", "in_width", "table_size"),
                        "nnet::table_activation<{input_t}, {output_t}, {config}>({input}, {table}, {output});", HEADERS[1],
                        weights=("table",))
    if TABLE_OP not in layer_handlers:
        register_onnx_layer_handler(TABLE_OP, _parse_table)
    for header in HEADERS:
        backend.register_source(header)
    _registered.add(backend_name)


def _register_templates(backend, layer_class: type, base: str, attributes: tuple[str, ...], call: str, header: Path,
                        weights: tuple[str, ...] = ()) -> None:  # noqa: ANN001
    """The config struct (one `static const unsigned` per attribute, deriving from nnet::`base`) and the function
    call (`call`, with each weight array by name) hls4ml writes for a layer of `layer_class`."""
    from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate  # noqa: PLC0415

    config = f"struct config{{index}} : nnet::{base} {{{{\n" + "".join(
        f"    static const unsigned {name} = {{{name}}};\n" for name in attributes) + "}};\n"

    class ConfigTemplate(LayerConfigTemplate):
        def __init__(self) -> None:
            super().__init__(layer_class)

        def format(self, node) -> str:  # noqa: ANN001
            return config.format(**self._default_config_params(node))

    class FunctionTemplate(FunctionCallTemplate):
        def __init__(self) -> None:
            super().__init__(layer_class, include_header=[f"nnet_utils/{header.name}"])

        def format(self, node) -> str:  # noqa: ANN001
            arrays = {name: node.get_weights(name).name for name in weights}
            return call.format(**{**self._default_function_params(node), **arrays})

    backend.register_template(ConfigTemplate)
    backend.register_template(FunctionTemplate)
