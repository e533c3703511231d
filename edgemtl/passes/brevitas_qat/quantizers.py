"""Quantizers into a traced task path: brevitas' graph handlers with power-of-two (fixed-point) maps, per-layer
bit widths, and reading the bit widths and scales back."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from edgemtl.errors import EdgemtlError
from edgemtl.model.contract import TaskPath
from edgemtl.model.spec import ModelSpec
from edgemtl.passes.brevitas_qat.config import QuantConfig
from edgemtl.passes.brevitas_qat.graph import (detach_trailing_resize, detach_trailing_softmax,
                                               fixed_point_prelus, fold_static_shapes, insert_module_after,
                                               insert_output_quantizers, is_averaging, is_reshape, is_resampling,
                                               nearest_upsampling, spatial_means_to_pooling)
from edgemtl.passes.brevitas_qat.path import INPUT_QUANT, OUTPUT_QUANT, QuantTaskPath

with warnings.catch_warnings():  # brevitas warns about optional packages on import
    warnings.simplefilter("ignore")
    import brevitas.nn as qnn
    from brevitas import config as brevitas_config
    from brevitas.core.bit_width import BitWidthConst
    from brevitas.core.utils import StatelessBuffer
    from brevitas.graph.quantize import UNSIGNED_ACT_TUPLE, align_input_quant, preprocess_for_quantize
    from brevitas.graph.quantize_impl import (act_handler, add_output_quant_handler, inp_placeholder_handler,
                                              layer_handler, residual_handler)
    from brevitas.graph.standardize import DisableLastReturnQuantTensor
    from brevitas.quant import Int32Bias
    from brevitas.quant.fixed_point import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint,
                                            Uint8ActPerTensorFixedPoint)
    from brevitas.fx import GraphModule, Node, symbolic_trace

_MODEL_PREFIX = "model."  # FX names of the wrapped contract model's layers start with this


def set_bit_width(module: nn.Module, bits: int) -> None:
    """Set every constant bit width inside a quantizer (before calibration: scales follow the bit width)."""
    for sub in module.modules():
        if isinstance(sub, BitWidthConst):
            sub.bit_width = StatelessBuffer(torch.tensor(float(bits)))


def layer_name(fx_name: str) -> str:
    return fx_name[len(_MODEL_PREFIX):] if fx_name.startswith(_MODEL_PREFIX) else fx_name


def build_quant_graph(model: nn.Module, spec: ModelSpec, task: str,
           config: QuantConfig) -> tuple[GraphModule, dict[str, Any] | None, dict[str, int] | None]:
    """The quantized graph of one task path, and the trailing resize / softmax left to the host (or None)."""
    path = TaskPath(copy.deepcopy(model).eval(), task).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = symbolic_trace(path)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgemtlError(f"task {task!r}: brevitas' fx tracer cannot trace the model for quantization: {detail}") from None
    gm = fold_static_shapes(gm, spec.input.shape)
    host_softmax = detach_trailing_softmax(gm) if config.host_softmax else None
    host_resize = detach_trailing_resize(gm) if config.host_resize else None
    if config.nearest_upsampling:
        nearest_upsampling(gm)
    gm = spatial_means_to_pooling(gm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = preprocess_for_quantize(gm, trace_model=False, relu6_to_relu=True, equalize_iters=0, merge_bn=True)
    leftover_bn = [n for n, m in gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover_bn:
        raise EdgemtlError(f"task {task!r}: BatchNorm {leftover_bn[0]} does not follow a conv/linear and cannot be folded")
    fixed_point_prelus(gm)

    w_bits, a_bits = config.weight_bits, config.act_bits
    act_signed = Int8ActPerTensorFixedPoint.let(bit_width=a_bits)
    act_unsigned = Uint8ActPerTensorFixedPoint.let(bit_width=a_bits)
    output_quant = {"act_quant": Int8ActPerTensorFixedPoint.let(bit_width=config.output_bits),
                    "return_quant_tensor": True}
    insert_output_quantizers(gm, output_quant)

    quant_identity_map = {
        "signed": (qnn.QuantIdentity, {"act_quant": act_signed, "return_quant_tensor": True}),
        "unsigned": (qnn.QuantIdentity, {"act_quant": act_unsigned, "return_quant_tensor": True}),
    }
    quant_act_map = {
        nn.ReLU: (qnn.QuantReLU, {"act_quant": act_unsigned, "return_quant_tensor": True}),
    }

    # brevitas calls a lambda kwarg with (old module, its qualified name): per-layer weight bits
    layer_kwargs = {"weight_quant": Int8WeightPerTensorFixedPoint, "bias_quant": Int32Bias, "return_quant_tensor": True,
                    "weight_bit_width": lambda module, name: int(config.overrides.get(layer_name(name), (w_bits,))[0])}
    compute_layer_map = {cls: (qcls, dict(layer_kwargs)) for cls, qcls in [
        (nn.Conv1d, qnn.QuantConv1d), (nn.Conv2d, qnn.QuantConv2d), (nn.Conv3d, qnn.QuantConv3d),
        (nn.ConvTranspose1d, qnn.QuantConvTranspose1d), (nn.ConvTranspose2d, qnn.QuantConvTranspose2d),
        (nn.ConvTranspose3d, qnn.QuantConvTranspose3d), (nn.Linear, qnn.QuantLinear)]}
    compute_layer_map[nn.AvgPool2d] = None

    # brevitas.graph.quantize.quantize, with a separate input quantizer (input_bits, not act bits).
    ignore_missing = brevitas_config.IGNORE_MISSING_KEYS
    brevitas_config.IGNORE_MISSING_KEYS = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = inp_placeholder_handler(gm, input_quantizer=(qnn.QuantIdentity, {
                "act_quant": Int8ActPerTensorFixedPoint.let(bit_width=config.input_bits), "return_quant_tensor": True}))
            gm = act_handler(gm, layer_map=quant_act_map)
            _requantize_averaged_unsigned(gm, quant_identity_map["unsigned"])
            gm = add_output_quant_handler(gm, quant_identity_map, quant_act_map, UNSIGNED_ACT_TUPLE)
            gm = residual_handler(gm, quant_identity_map, quant_act_map, UNSIGNED_ACT_TUPLE, align_input_quant)
            gm = layer_handler(gm, layer_map=compute_layer_map, quant_identity_map=quant_identity_map,
                               quant_act_map=quant_act_map, unsigned_act_tuple=UNSIGNED_ACT_TUPLE,
                               requantize_output=True)
            gm = DisableLastReturnQuantTensor().apply(gm)
    finally:
        brevitas_config.IGNORE_MISSING_KEYS = ignore_missing
    _rename_input_quant(gm)
    gm.get_submodule(OUTPUT_QUANT).return_quant_tensor = False

    # Act-bit overrides: the quantizer(s) at the layer's output, and every quantizer aligned with them
    # (the inputs of an add or a concatenation share one scale, so they must share the bit width too).
    groups: dict[int, list[nn.Module]] = {}
    for module in gm.modules():
        if hasattr(module, "act_quant") and module.act_quant.fused_activation_quant_proxy is not None:
            scaling = module.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
            groups.setdefault(id(scaling), []).append(module)
    for fx_name, module in _compute_layers(gm):
        override = config.overrides.get(layer_name(fx_name))
        if override is not None:
            for quantizer in _output_quantizers(gm, fx_name):
                scaling = quantizer.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
                for member in groups.get(id(scaling), [quantizer]):
                    set_bit_width(member, int(override[1]))
    return gm, host_resize, host_softmax


def _unsigned_source(gm: GraphModule, node: Node) -> bool:
    """Whether `node` only averages / reshapes the output of an unsigned activation quantizer."""
    while is_resampling(gm, node):
        if not node.args or not isinstance(node.args[0], Node):
            return False
        node = node.args[0]
    if node.op != "call_module":
        return False
    module = gm.get_submodule(node.target)
    return hasattr(module, "act_quant") and module.act_quant.is_signed is False


def _requantize_averaged_unsigned(gm: GraphModule, unsigned_identity: tuple) -> None:
    """Averages of unsigned activations (bilinear resizes, average pools) stay unsigned; brevitas does not
    see through them and would requantize them signed, which also forces the other inputs of a
    concatenation (the skip's ReLU) to signed and wastes a bit. Requantize them unsigned right away."""
    cls, kwargs = unsigned_identity
    for node in list(gm.graph.nodes):
        if not is_averaging(gm, node) or not _unsigned_source(gm, node):
            continue
        end = node
        while len(end.users) == 1 and is_reshape(gm, next(iter(end.users))):
            end = next(iter(end.users))
        users = [gm.get_submodule(u.target) if u.op == "call_module" else None for u in end.users]
        if not all(u is not None and hasattr(u, "act_quant") for u in users):
            insert_module_after(gm, f"{end.name}_unsigned_quant", cls(**kwargs), end)
    gm.graph.lint()


def _rename_input_quant(gm: GraphModule) -> None:
    """brevitas names the input quantizer `<placeholder>_quant`; give it a fixed name."""
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    quant_node = next(iter(placeholder.users))
    module = gm.get_submodule(quant_node.target)
    delattr(gm, quant_node.target)
    gm.add_module(INPUT_QUANT, module)
    quant_node.target = INPUT_QUANT
    gm.recompile()


def _compute_layers(gm: GraphModule) -> list[tuple[str, nn.Module]]:
    return [(n.target, gm.get_submodule(n.target)) for n in gm.graph.nodes
            if n.op == "call_module" and hasattr(gm.get_submodule(n.target), "weight_quant")]


def _output_quantizers(gm: GraphModule, fx_name: str) -> list[nn.Module]:
    """The activation quantizers directly consuming a layer's output."""
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == fx_name)
    found = []
    for user in node.users:
        if user.op == "call_module" and hasattr(gm.get_submodule(user.target), "act_quant"):
            found.append(gm.get_submodule(user.target))
    return found


def _bits(quantizer: nn.Module) -> int:
    return int(round(float(quantizer.act_quant.bit_width() if hasattr(quantizer, "act_quant") else
                           quantizer.weight_quant.bit_width())))


def layer_bit_widths(qmodel: QuantTaskPath) -> dict[str, dict[str, int]]:
    """Compute layer (model's own names) -> weight bits and the bits of the quantizer at its output."""
    gm = qmodel.graph_module
    out = {}
    for fx_name, module in _compute_layers(gm):
        entry = {"weight_bits": _bits(module)}
        quantizers = _output_quantizers(gm, fx_name)
        if quantizers:
            entry["act_bits"] = _bits(quantizers[0])
        out[layer_name(fx_name)] = entry
    return out


def quantizer_scales(qmodel: QuantTaskPath) -> dict[str, float]:
    """Every weight and activation scale of the path, by module (for power-of-two checks; bias scales are
    input scale x weight scale, visible as `Quant` nodes in the QONNX export)."""
    scales: dict[str, float] = {}
    qmodel.eval()
    with torch.no_grad():
        for name, module in qmodel.graph_module.named_modules():
            if hasattr(module, "quant_weight") and getattr(module, "weight_quant", None) is not None \
                    and module.weight_quant.is_quant_enabled:
                scales[f"{name}.weight"] = float(module.quant_weight().scale.detach().reshape(-1)[0])
            if hasattr(module, "act_quant") and module.act_quant.is_quant_enabled:
                scales[f"{name}.act"] = float(module.act_quant.scale().detach())
    return scales


