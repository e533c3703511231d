"""Tracing a task path with brevitas' fx and rewriting its graph before quantizers go in: static shapes folded,
spatial means as pools, a trailing resize / softmax detached for the host, fixed-point PReLUs, nearest upsampling,
and the output quantizers.

brevitas' graph transforms test `isinstance(node, brevitas.Node)`: on a torch.fx graph they silently do nothing
(no BatchNorm merged), so tracing must use brevitas' own fx backport.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgemtl.errors import EdgemtlError
from edgemtl.passes.brevitas_qat.path import OUTPUT_QUANT, FixedPointPReLU

with warnings.catch_warnings():  # brevitas warns about optional packages on import
    warnings.simplefilter("ignore")
    import brevitas.nn as qnn
    from brevitas.backport.fx.interpreter import Interpreter
    from brevitas.fx import GraphModule, Node, map_arg

HEAD_OUTPUT_QUANT = "head_output_quant"
# Sign-preserving ops that average values (resizes, average pools) and ops that only move them.
_AVERAGING_FUNCTIONS = {F.interpolate}
_AVERAGING_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool1d, nn.AvgPool2d,
                      nn.AvgPool3d, nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
_RESHAPE_MODULES = (nn.Flatten, nn.Identity)
COMPUTE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.Linear)


def fold_static_shapes(gm: GraphModule, input_shape: list[int]) -> GraphModule:
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


def spatial_means_to_pooling(gm: GraphModule, input_rank: int = 4) -> GraphModule:
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


def detach_trailing_resize(gm: GraphModule) -> dict[str, Any] | None:
    """Remove an F.interpolate that produces the graph's output; returns its arguments (None if there is none)."""
    result = output_node(gm)
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


def detach_trailing_softmax(gm: GraphModule) -> dict[str, int] | None:
    """Remove a softmax (module, function or method) that produces the graph's output; returns {"dim": d}."""
    result = output_node(gm)
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


def fixed_point_prelus(gm: GraphModule) -> None:
    """Every nn.PReLU of the traced path becomes a FixedPointPReLU with the same (snapped) slopes."""
    for name, module in list(gm.named_modules()):
        if type(module) is nn.PReLU:
            fixed = FixedPointPReLU(module.num_parameters)
            fixed.weight = module.weight
            parent, _, leaf = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, fixed)


def nearest_upsampling(gm: GraphModule) -> None:
    """Every F.interpolate resamples with nearest neighbours (no align_corners, which nearest refuses)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is F.interpolate:
            node.kwargs = {**{k: v for k, v in node.kwargs.items() if k != "align_corners"}, "mode": "nearest"}
            if len(node.args) > 3:  # positional mode / align_corners
                node.args = node.args[:3]
    gm.recompile()


def is_averaging(gm: GraphModule, node: Node) -> bool:
    if node.op == "call_function":
        return node.target in _AVERAGING_FUNCTIONS
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), _AVERAGING_MODULES)


def is_reshape(gm: GraphModule, node: Node) -> bool:
    if node.op == "call_function":
        return node.target in _RESHAPE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RESHAPE_METHODS
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), _RESHAPE_MODULES)


def is_resampling(gm: GraphModule, node: Node) -> bool:
    """Ops between the head's last compute layer and the output that only resample or move values."""
    return is_averaging(gm, node) or is_reshape(gm, node)


def insert_module_after(gm: GraphModule, name: str, module: nn.Module, node: Node) -> Node:
    gm.add_module(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args=(node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    gm.recompile()
    return new


def output_node(gm: GraphModule) -> Node:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, Node):
        raise EdgemtlError("the task path must return a single tensor to be quantized")
    return result


def insert_output_quantizers(gm: GraphModule, output_quant: dict[str, Any]) -> None:
    """The graph output's quantizer, and one after the head's last compute layer if ops lie in between."""
    result = output_node(gm)
    producer = result
    while is_resampling(gm, producer) and isinstance(producer.args[0], Node) and len(producer.users) == 1:
        producer = producer.args[0]
    if producer is not result and producer.op == "call_module" and isinstance(
            gm.get_submodule(producer.target), COMPUTE_LAYERS) and len(producer.users) == 1:
        insert_module_after(gm, HEAD_OUTPUT_QUANT, qnn.QuantIdentity(**output_quant), producer)
    insert_module_after(gm, OUTPUT_QUANT, qnn.QuantIdentity(**output_quant), result)


