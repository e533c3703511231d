"""Quantization-aware training of one task path with brevitas, power-of-two (fixed-point) scales only.

For the FPGA target every task is compiled as its own path (shared backbone + that task's head). The pass
builds that path as a brevitas model with brevitas' own graph tools:

1. brevitas' fx backport traces `TaskPath(model, task)`; shape arithmetic that does not depend on the batch (the
   `skip.shape[-2:]` an interpolation targets) is folded into constants, and spatial means become
   `AdaptiveAvgPool2d + flatten` (brevitas' own `MeanMethodToAdaptiveAvgPool2d` fails when `dim=` is a
   keyword).
2. `brevitas.graph.quantize.preprocess_for_quantize` turns functionals into modules and folds every
   BatchNorm into the preceding conv / linear (hls4ml and FINN want it folded).
3. Two signed output quantizers (`output_bits`) are inserted: one at the graph output, so the path has a
   defined output LSB, and one right after the head's last compute layer when a resize / reshape
   separates it from the output (otherwise brevitas would requantize the prediction at activation bits).
4. brevitas' graph handlers (`inp_placeholder_handler`, `act_handler`, `residual_handler`,
   `layer_handler` ...) quantize the graph with custom fixed-point maps: the input at `input_bits`
   (`Int8ActPerTensorFixedPoint`), ReLUs unsigned (`Uint8ActPerTensorFixedPoint`), requantizations
   before adds / concatenations / compute layers aligned to shared power-of-two scales, conv / linear
   weights `Int8WeightPerTensorFixedPoint` at the weight bits, biases `Int32Bias` (input scale x weight
   scale: a power of two too).
5. Activation ranges are calibrated on real images (`calibration_mode`), then the path is fine-tuned
   (QAT) on that task's loss with AdamW.

Why power-of-two: hls4ml (and FINN's thresholding) is only exact with power-of-two scales; a
non-power-of-two scale made one head wrong by a constant factor.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgemtl.data import TaskData
from edgemtl.errors import EdgemtlError, first_line
from edgemtl.evaluate import evaluate
from edgemtl.model.contract import TaskPath, example_input
from edgemtl.model.losses import supervised_loss
from edgemtl.model.spec import ModelSpec

with warnings.catch_warnings():  # brevitas warns about optional packages on import
    warnings.simplefilter("ignore")
    import brevitas.nn as qnn
    from brevitas import config as brevitas_config
    from brevitas.core.bit_width import BitWidthConst
    from brevitas.core.utils import StatelessBuffer
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.graph.quantize import UNSIGNED_ACT_TUPLE, align_input_quant, preprocess_for_quantize
    from brevitas.graph.quantize_impl import (act_handler, add_output_quant_handler, inp_placeholder_handler,
                                              layer_handler, residual_handler)
    from brevitas.graph.standardize import DisableLastReturnQuantTensor
    from brevitas.quant import Int32Bias
    from brevitas.quant.fixed_point import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint,
                                            Uint8ActPerTensorFixedPoint)
    from brevitas.quant_tensor import QuantTensor
    # brevitas' graph transforms test `isinstance(node, brevitas.Node)`: on a torch.fx graph they
    # silently do nothing (no BatchNorm merged), so tracing must use brevitas' own fx backport.
    from brevitas.backport.fx.interpreter import Interpreter
    from brevitas.fx import GraphModule, Node, map_arg, symbolic_trace

PRECISIONS: dict[str, tuple[int, int]] = {"w4a4": (4, 4), "w8a8": (8, 8)}
PRELU_SLOPE_BITS = 8  # fractional bits of a PReLU slope (FixedPointPReLU): 1/256 steps
INPUT_QUANT = "input_quant"
OUTPUT_QUANT = "output_quant"
HEAD_OUTPUT_QUANT = "head_output_quant"
# Sign-preserving ops that average values (resizes, average pools) and ops that only move them.
_AVERAGING_FUNCTIONS = {F.interpolate}
_AVERAGING_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool1d, nn.AvgPool2d,
                      nn.AvgPool3d, nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
_RESHAPE_MODULES = (nn.Flatten, nn.Identity)
_COMPUTE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.Linear)
_MODEL_PREFIX = "model."  # FX names of the wrapped contract model's layers start with this


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths and the QAT budget.

    `overrides`: layer name (as in the float model, e.g. "heads.depth.predict") -> (weight bits, act
    bits), where act bits are those of the quantizer at the layer's output; quantizers aligned with it
    (the other inputs of the same add / concatenation) get the same bit width, since they share a scale.
    `first` and `last` name each task path's first and last compute layer (low-bit networks usually keep
    those at 8 bits: they see the raw input and make the prediction).
    """

    precision: str = "w4a4"
    input_bits: int = 8
    output_bits: int = 8
    overrides: dict[str, tuple[int, int]] = field(default_factory=dict)
    qat_steps: int = 300
    lr: float = 1e-3
    batch_size: int = 32
    calibration_samples: int = 64
    seed: int = 0
    # hls4ml has no bilinear Resize: resample with nearest neighbours instead (QAT then adapts the layers)
    nearest_upsampling: bool = False
    # a resize that ends the path (a dense head upsampling its prediction) leaves the quantized graph and runs
    # on the host exactly as in the float model (QuantTaskPath.host_resize; `fabric` is the graph without it)
    host_resize: bool = False
    # a softmax that ends the path (class scores) runs on the host too: hls4ml's table-based Softmax is not
    # bit-accurate, and the argmax a classifier reports does not depend on it (QuantTaskPath.host_softmax)
    host_softmax: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgemtlError(f"unknown precision {self.precision!r}: valid precisions are {', '.join(PRECISIONS)}")
        for name, bits in {"input_bits": self.input_bits, "output_bits": self.output_bits}.items():
            if not 2 <= int(bits) <= 16:
                raise EdgemtlError(f"{name} must lie in 2..16, got {bits}")
        for layer, pair in self.overrides.items():
            if len(tuple(pair)) != 2 or not all(2 <= int(b) <= 16 for b in pair):
                raise EdgemtlError(f"the override of layer {layer!r} must be (weight bits, act bits) in 2..16, got {pair}")
        if self.qat_steps < 0 or self.batch_size < 1 or self.calibration_samples < 1:
            raise EdgemtlError("qat_steps must be >= 0, batch_size and calibration_samples >= 1")

    @property
    def weight_bits(self) -> int:
        return PRECISIONS[self.precision][0]

    @property
    def act_bits(self) -> int:
        return PRECISIONS[self.precision][1]


@dataclass
class QuantRecord:
    """What quantizing one task path did and cost."""

    task: str
    precision: str
    input_bits: int
    output_bits: int
    metric_float: dict[str, float]
    metric_quant: dict[str, float]
    qat_steps: int
    calibration_samples: int
    seconds: float                  # the whole pass (build, calibration, QAT, both evaluations)
    qat_seconds: float
    layers: dict[str, dict[str, int]]  # compute layer -> {"weight_bits", "act_bits"} (act: its output's quantizer)
    output_lsb: float
    host_resize: dict[str, Any] | None = None  # F.interpolate arguments of the resize left to the host
    host_softmax: dict[str, int] | None = None  # {"dim": d} of the softmax left to the host (d counts the batch)
    fixed_point_prelus: list[str] = field(default_factory=list)  # PReLUs whose slopes are on the 2^-8 grid

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["qat_seconds_per_step"] = self.qat_seconds / self.qat_steps if self.qat_steps else 0.0
        return out


class QuantTaskPath(nn.Module):
    """One task's quantized path: normalised image in, that task's tensor out (a plain tensor).

    With `host_resize` / `host_softmax`, the quantized graph ends before the path's final resize / softmax,
    which are applied here in float exactly as the original model does them; `fabric` is the graph alone: what
    is exported, compiled to hardware and checked LSB for LSB."""

    def __init__(self, graph: GraphModule, task: str, host_resize: dict[str, Any] | None = None,
                 host_softmax: dict[str, int] | None = None) -> None:
        super().__init__()
        self.graph_module = graph
        self.task = task
        self.host_resize = host_resize
        self.host_softmax = host_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.graph_module(x)
        out = out.value if isinstance(out, QuantTensor) else out
        out = F.interpolate(out, **self.host_resize) if self.host_resize else out
        return torch.softmax(out, **self.host_softmax) if self.host_softmax else out

    @property
    def fabric(self) -> QuantTaskPath:
        return QuantTaskPath(self.graph_module, self.task) if self.host_resize or self.host_softmax else self

    @property
    def input_quant(self) -> nn.Module:
        return self.graph_module.get_submodule(INPUT_QUANT)

    @property
    def output_quant(self) -> nn.Module:
        return self.graph_module.get_submodule(OUTPUT_QUANT)


# ----------------------------------------------------------------------------------------------- tracing


def _fold_static_shapes(gm: GraphModule, input_shape: list[int]) -> GraphModule:
    """Replace shape arithmetic that gives the same ints at batch 1 and batch 2 by constants."""
    runs = []
    for batch in (1, 2):
        values: dict[Node, Any] = {}

        class _Recorder(Interpreter):
            def run_node(self, node: Node) -> Any:
                values[node] = result = super().run_node(node)
                return result

        with torch.no_grad():
            _Recorder(gm).run(torch.zeros(batch, *input_shape))
        runs.append(values)

    def is_static(value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, torch.Size)):
            return True
        return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)

    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method") or node not in runs[0]:
            continue
        first, second = runs[0][node], runs[1][node]
        if not (is_static(first) and is_static(second)) or first != second:
            continue
        constant = tuple(first) if isinstance(first, (torch.Size, list)) else first
        for user in list(node.users):
            user.args = map_arg(user.args, lambda a, n=node, c=constant: c if a is n else a)
            user.kwargs = map_arg(user.kwargs, lambda a, n=node, c=constant: c if a is n else a)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _spatial_means_to_pooling(gm: GraphModule, input_rank: int = 4) -> GraphModule:
    """`x.mean((2, 3))` / `torch.mean(x, dim=(-2, -1))` on 4-d maps -> AdaptiveAvgPool2d(1) (+ flatten)."""
    count = 0
    for node in list(gm.graph.nodes):
        is_method = node.op == "call_method" and node.target == "mean"
        is_function = node.op == "call_function" and node.target is torch.mean
        if not (is_method or is_function) or not node.args:
            continue
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dim is None or not isinstance(dim, (tuple, list)) or len(dim) != 2:
            continue
        if sorted(d % input_rank for d in dim) != [2, 3] or node.kwargs.get("dtype") is not None:
            continue
        name = f"spatial_mean_pool_{count}"
        count += 1
        gm.add_module(name, nn.AdaptiveAvgPool2d(1))
        with gm.graph.inserting_before(node):
            pooled = gm.graph.call_module(name, args=(node.args[0],))
            replacement = pooled if keepdim else gm.graph.call_function(torch.flatten, args=(pooled, 1))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.recompile()
    gm.graph.lint()
    return gm


def _detach_trailing_resize(gm: GraphModule) -> dict[str, Any] | None:
    """Remove an F.interpolate that produces the graph's output; returns its arguments (None if there is none)."""
    result = _output_node(gm)
    if not (result.op == "call_function" and result.target is F.interpolate and isinstance(result.args[0], Node)):
        return None
    names = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
    arguments = {**dict(zip(names, result.args[1:])), **result.kwargs}
    if arguments.get("antialias") or arguments.get("recompute_scale_factor"):
        return None  # not the plain resize a host runtime reproduces
    if arguments.get("size") is not None:
        arguments["size"] = list(arguments["size"])
    result.replace_all_uses_with(result.args[0])
    gm.graph.erase_node(result)
    gm.recompile()
    return {k: arguments[k] for k in names[:4] if arguments.get(k) is not None}


def _detach_trailing_softmax(gm: GraphModule) -> dict[str, int] | None:
    """Remove a softmax (module, function or method) that produces the graph's output; returns {"dim": d}."""
    result = _output_node(gm)
    dim = None
    if result.op == "call_module" and isinstance(gm.get_submodule(result.target), nn.Softmax):
        dim = gm.get_submodule(result.target).dim
    elif (result.op == "call_function" and result.target in (F.softmax, torch.softmax)) or (
            result.op == "call_method" and result.target == "softmax"):
        dim = result.kwargs.get("dim", result.args[1] if len(result.args) > 1 else None)
    if not isinstance(dim, int) or not isinstance(result.args[0], Node):
        return None
    result.replace_all_uses_with(result.args[0])
    gm.graph.erase_node(result)
    gm.recompile()
    return {"dim": dim}


class FixedPointPReLU(nn.PReLU):
    """PReLU whose slopes lie on a 2^-PRELU_SLOPE_BITS grid (rounded, straight-through gradient in QAT).

    brevitas leaves a PReLU in float between quantizers; hls4ml's PReLU multiplies in fixed point, so the
    quantized model and the C simulation agree bit for bit only when the slopes are exact fixed-point values.
    Exported, the slopes are one constant (ONNX PRelu)."""

    def snapped_weight(self) -> torch.Tensor:
        scale = 2.0 ** PRELU_SLOPE_BITS
        snapped = torch.round(self.weight * scale) / scale
        return self.weight + (snapped - self.weight).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.value if isinstance(x, QuantTensor) else x
        weight = self.snapped_weight()
        return F.prelu(x, weight.detach() if torch.onnx.is_in_onnx_export() else weight)


def _fixed_point_prelus(gm: GraphModule) -> None:
    """Every nn.PReLU of the traced path becomes a FixedPointPReLU with the same (snapped) slopes."""
    for name, module in list(gm.named_modules()):
        if type(module) is nn.PReLU:
            fixed = FixedPointPReLU(module.num_parameters)
            fixed.weight = module.weight
            parent, _, leaf = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, fixed)


def _nearest_upsampling(gm: GraphModule) -> None:
    """Every F.interpolate resamples with nearest neighbours (no align_corners, which nearest refuses)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is F.interpolate:
            node.kwargs = {**{k: v for k, v in node.kwargs.items() if k != "align_corners"}, "mode": "nearest"}
            if len(node.args) > 3:  # positional mode / align_corners
                node.args = node.args[:3]
    gm.recompile()


def _is_averaging(gm: GraphModule, node: Node) -> bool:
    if node.op == "call_function":
        return node.target in _AVERAGING_FUNCTIONS
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), _AVERAGING_MODULES)


def _is_reshape(gm: GraphModule, node: Node) -> bool:
    if node.op == "call_function":
        return node.target in _RESHAPE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RESHAPE_METHODS
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), _RESHAPE_MODULES)


def _is_resampling(gm: GraphModule, node: Node) -> bool:
    """Ops between the head's last compute layer and the output that only resample or move values."""
    return _is_averaging(gm, node) or _is_reshape(gm, node)


def _insert_module_after(gm: GraphModule, name: str, module: nn.Module, node: Node) -> Node:
    gm.add_module(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args=(node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    gm.recompile()
    return new


def _output_node(gm: GraphModule) -> Node:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, Node):
        raise EdgemtlError("the task path must return a single tensor to be quantized")
    return result


def _insert_output_quantizers(gm: GraphModule, output_quant: dict[str, Any]) -> None:
    """The graph output's quantizer, and one after the head's last compute layer if ops lie in between."""
    result = _output_node(gm)
    producer = result
    while _is_resampling(gm, producer) and isinstance(producer.args[0], Node) and len(producer.users) == 1:
        producer = producer.args[0]
    if producer is not result and producer.op == "call_module" and isinstance(
            gm.get_submodule(producer.target), _COMPUTE_LAYERS) and len(producer.users) == 1:
        _insert_module_after(gm, HEAD_OUTPUT_QUANT, qnn.QuantIdentity(**output_quant), producer)
    _insert_module_after(gm, OUTPUT_QUANT, qnn.QuantIdentity(**output_quant), result)


# ------------------------------------------------------------------------------------------- quantizers


def _set_bit_width(module: nn.Module, bits: int) -> None:
    """Set every constant bit width inside a quantizer (before calibration: scales follow the bit width)."""
    for sub in module.modules():
        if isinstance(sub, BitWidthConst):
            sub.bit_width = StatelessBuffer(torch.tensor(float(bits)))


def _layer_name(fx_name: str) -> str:
    return fx_name[len(_MODEL_PREFIX):] if fx_name.startswith(_MODEL_PREFIX) else fx_name


def _build(model: nn.Module, spec: ModelSpec, task: str,
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
    gm = _fold_static_shapes(gm, spec.input.shape)
    host_softmax = _detach_trailing_softmax(gm) if config.host_softmax else None
    host_resize = _detach_trailing_resize(gm) if config.host_resize else None
    if config.nearest_upsampling:
        _nearest_upsampling(gm)
    gm = _spatial_means_to_pooling(gm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = preprocess_for_quantize(gm, trace_model=False, relu6_to_relu=True, equalize_iters=0, merge_bn=True)
    leftover_bn = [n for n, m in gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover_bn:
        raise EdgemtlError(f"task {task!r}: BatchNorm {leftover_bn[0]} does not follow a conv/linear and cannot be folded")
    _fixed_point_prelus(gm)

    w_bits, a_bits = config.weight_bits, config.act_bits
    act_signed = Int8ActPerTensorFixedPoint.let(bit_width=a_bits)
    act_unsigned = Uint8ActPerTensorFixedPoint.let(bit_width=a_bits)
    output_quant = {"act_quant": Int8ActPerTensorFixedPoint.let(bit_width=config.output_bits),
                    "return_quant_tensor": True}
    _insert_output_quantizers(gm, output_quant)

    quant_identity_map = {
        "signed": (qnn.QuantIdentity, {"act_quant": act_signed, "return_quant_tensor": True}),
        "unsigned": (qnn.QuantIdentity, {"act_quant": act_unsigned, "return_quant_tensor": True}),
    }
    quant_act_map = {
        nn.ReLU: (qnn.QuantReLU, {"act_quant": act_unsigned, "return_quant_tensor": True}),
    }

    # brevitas calls a lambda kwarg with (old module, its qualified name): per-layer weight bits
    layer_kwargs = {"weight_quant": Int8WeightPerTensorFixedPoint, "bias_quant": Int32Bias, "return_quant_tensor": True,
                    "weight_bit_width": lambda module, name: int(config.overrides.get(_layer_name(name), (w_bits,))[0])}
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
        override = config.overrides.get(_layer_name(fx_name))
        if override is not None:
            for quantizer in _output_quantizers(gm, fx_name):
                scaling = quantizer.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
                for member in groups.get(id(scaling), [quantizer]):
                    _set_bit_width(member, int(override[1]))
    return gm, host_resize, host_softmax


def _unsigned_source(gm: GraphModule, node: Node) -> bool:
    """Whether `node` only averages / reshapes the output of an unsigned activation quantizer."""
    while _is_resampling(gm, node):
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
        if not _is_averaging(gm, node) or not _unsigned_source(gm, node):
            continue
        end = node
        while len(end.users) == 1 and _is_reshape(gm, next(iter(end.users))):
            end = next(iter(end.users))
        users = [gm.get_submodule(u.target) if u.op == "call_module" else None for u in end.users]
        if not all(u is not None and hasattr(u, "act_quant") for u in users):
            _insert_module_after(gm, f"{end.name}_unsigned_quant", cls(**kwargs), end)
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
        out[_layer_name(fx_name)] = entry
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


# ---------------------------------------------------------------------------------------------- public API


def _task_images(data: TaskData, count: int, seed: int) -> torch.Tensor:
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].numpy()
    return torch.from_numpy(data.normalise(data.images[index]))


def _batches_forever(data: TaskData, batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from data.batches(batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


def _metric(predict_one, task_spec, data: TaskData) -> dict[str, float]:
    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {task_spec.name: predict_one(images)}

    return evaluate(predict, [task_spec], data)[task_spec.name]


def _resolve_edge_layers(model: nn.Module, spec: ModelSpec, task: str,
                         overrides: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Replace the `first` / `last` aliases by this task path's first / last compute layer, in execution order."""
    if not {"first", "last"} & set(overrides):
        return dict(overrides)
    names, order = {m: n for n, m in model.named_modules() if isinstance(m, _COMPUTE_LAYERS)}, []
    hooks = [m.register_forward_hook(lambda module, *_: order.append(names[module])) for m in names]
    try:
        with torch.no_grad():
            TaskPath(model, task).eval()(example_input(spec, batch=1))
    finally:
        for hook in hooks:
            hook.remove()
    resolved = {name: bits for name, bits in overrides.items() if name not in ("first", "last")}
    for alias, layer in (("first", order[0]), ("last", order[-1])):
        if alias in overrides:
            resolved.setdefault(layer, overrides[alias])
    return resolved


def quantize_task(model: nn.Module, spec: ModelSpec, task: str, train_data: TaskData, val_data: TaskData,
                  config: QuantConfig = QuantConfig()) -> tuple[QuantTaskPath, QuantRecord]:
    """Quantize one task path: calibrate on real images, then QAT on that task's loss; returns the path."""
    if task not in spec.task_names:
        raise EdgemtlError(f"unknown task {task!r}: this model has {', '.join(spec.task_names)}")
    config = replace(config, overrides=_resolve_edge_layers(model, spec, task, config.overrides))
    all_layers = {n for n, m in model.named_modules() if isinstance(m, _COMPUTE_LAYERS)}
    unknown = sorted(set(config.overrides) - all_layers)
    if unknown:
        raise EdgemtlError(f"bit-width overrides name unknown layer(s) {', '.join(unknown)}")
    task_spec = spec.task(task)
    start = time.perf_counter()
    torch.manual_seed(config.seed)

    float_path = TaskPath(model, task).eval()
    metric_float = _metric(float_path, task_spec, val_data)

    graph, host_resize, host_softmax = _build(model, spec, task, config)
    qmodel = QuantTaskPath(graph, task, host_resize, host_softmax)

    calibration = _task_images(train_data, min(config.calibration_samples, len(train_data)), config.seed)
    _calibrate(qmodel, calibration, config.batch_size)
    _check_quantized_path_runs(qmodel, calibration[:2])

    qat_start = time.perf_counter()
    if config.qat_steps:
        _qat(qmodel, task_spec, train_data, config)
    qat_seconds = time.perf_counter() - qat_start
    qmodel.eval()

    metric_quant = _metric(qmodel, task_spec, val_data)
    record = QuantRecord(
        task=task, precision=config.precision, input_bits=config.input_bits, output_bits=config.output_bits,
        metric_float=metric_float, metric_quant=metric_quant, qat_steps=config.qat_steps,
        calibration_samples=int(len(calibration)), seconds=time.perf_counter() - start, qat_seconds=qat_seconds,
        layers=layer_bit_widths(qmodel), output_lsb=output_lsb(qmodel), host_resize=host_resize,
        host_softmax=host_softmax, fixed_point_prelus=[_layer_name(name) for name, module in graph.named_modules()
                                                       if isinstance(module, FixedPointPReLU)],
    )
    return qmodel, record


def _check_quantized_path_runs(qmodel: QuantTaskPath, images: torch.Tensor) -> None:
    """Calibration runs unquantized; an op brevitas cannot apply to quantized tensors surfaces here, as one line."""
    try:
        with torch.no_grad():
            qmodel.eval()(images)
    except Exception as exc:  # brevitas raises TypeError / RuntimeError from inside the traced graph
        call = next((line.strip() for line in str(exc).splitlines() if " = " in line), "")
        raise EdgemtlError(f"task {qmodel.task!r}: brevitas cannot run its quantized path ({first_line(exc)}"
                           f"{'; at ' + call if call else ''}): compile the other tasks with --tasks, "
                           "or this one for another target") from None
    finally:
        qmodel.train()


def _calibrate(qmodel: QuantTaskPath, images: torch.Tensor, batch_size: int) -> None:
    """Activation ranges from real images with brevitas' `calibration_mode`.

    brevitas 0.13.4 records and restores each proxy's `observer_only` flags one proxy at a time; a
    tensor quantizer shared by two proxies (a concatenation's aligned inputs share one) is recorded a second
    time after the first proxy already switched it to observer-only, so it stays observer-only afterwards:
    it passes values through unrounded while still reporting its scale, and exported graphs (which do
    round) then disagree. Every quantizer was live before calibration, so switch them all back on."""
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for chunk in images.split(batch_size):
            qmodel(chunk)
    for module in qmodel.modules():
        if getattr(module, "observer_only", False):
            module.observer_only = False
    qmodel.eval()


def _qat(qmodel: QuantTaskPath, task_spec, data: TaskData, config: QuantConfig) -> None:
    """AdamW on weights (weight decay 1e-4) and on the learned log2 scales (no weight decay: decay would
    pull every scale towards 1); cosine-decayed learning rate."""
    decay, no_decay = [], []
    for name, param in qmodel.named_parameters():
        (no_decay if "_quant" in name else decay).append(param)
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, config.qat_steps)))))
    batches = _batches_forever(data, config.batch_size, config.seed)
    qmodel.train()
    for _ in range(config.qat_steps):
        images, targets = next(batches)
        loss = supervised_loss(task_spec, qmodel(images), targets[task_spec.name], task_spec.name in data.distilled)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(qmodel.parameters(), 5.0)
        optimiser.step()
        schedule.step()
    qmodel.eval()


def grid_align(qmodel: QuantTaskPath, images: torch.Tensor) -> torch.Tensor:
    """Normalised images snapped onto the input quantizer's grid (what every runtime then sees exactly)."""
    quantizer = qmodel.input_quant
    was_training = quantizer.training
    quantizer.eval()
    with torch.no_grad():
        out = quantizer(images)
    quantizer.train(was_training)
    return (out.value if isinstance(out, QuantTensor) else out).detach().clone()


def output_lsb(qmodel: QuantTaskPath) -> float:
    """One LSB of the path's output: the output quantizer's (power-of-two) scale."""
    with torch.no_grad():
        return float(qmodel.output_quant.act_quant.scale().detach())
