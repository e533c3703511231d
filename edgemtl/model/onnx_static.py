"""Constant shape arguments bound into the converted graph, so `torch.export` (the cost analysis) can trace it.

onnx2torch passes a Reshape's shape, a Slice's starts/ends/axes/steps and a Resize's scales/sizes as tensors at run
time and reads them with `.numpy()` / `.tolist()` / `torch.any`, which fake tensors refuse. When those tensors are
initializers (constants, as in every exported CNN after constant folding), this pass replaces the module by one
holding plain Python values with the same semantics. The result is checked against ONNX Runtime by the importer.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import fx, nn


class StaticReshape(nn.Module):
    """ONNX Reshape with a constant shape (0 copies the input's dimension, -1 is inferred)."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [x.shape[i] if size == 0 else size for i, size in enumerate(self.shape)])


class StaticSlice(nn.Module):
    """ONNX Slice with constant starts / ends / axes / steps, as onnx2torch computes them."""

    def __init__(self, flip_dims: list[int], pos_slices: list[slice], neg_slices: list[Any]) -> None:
        super().__init__()
        self.flip_dims, self.pos_slices, self.neg_slices = flip_dims, pos_slices, neg_slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_dims:
            x = torch.flip(x, dims=self.flip_dims)
        if self.pos_slices:
            x = x[tuple(self.pos_slices)]
        if self.neg_slices:
            x = x[tuple(self.neg_slices)]
        return x


class StaticResize(nn.Module):
    """ONNX Resize with constant scales or sizes: `interpolate` over the spatial dims."""

    def __init__(self, mode: str, align_corners: bool | None, scales: list[float] | None, sizes: list[int] | None):
        super().__init__()
        self.mode, self.align_corners, self.scales, self.sizes = mode, align_corners, scales, sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=self.sizes, scale_factor=self.scales, mode=self.mode,
                                         align_corners=self.align_corners)


def bind_constant_arguments(graph_module: fx.GraphModule, batch_first: bool = False) -> list[str]:
    """Rewrite in place; returns the op types bound (for the import record). `batch_first`: the graph was exported
    with batch 1, so a constant reshape starting with 1 means "the batch" and keeps the input's first dimension."""
    bound = []
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module":
            continue
        module = graph_module.get_submodule(node.target)
        constants = _constant_arguments(graph_module, node)
        if constants is None:
            continue
        replacement = _static_module(module, constants, batch_first)
        if replacement is None:
            continue
        name = f"{node.target}_static"
        graph_module.add_submodule(name, replacement)
        with graph_module.graph.inserting_after(node):
            new = graph_module.graph.call_module(name, args=(node.args[0],))
        node.replace_all_uses_with(new)
        graph_module.graph.erase_node(node)
        bound.append(type(module).__name__.removeprefix("Onnx"))
    graph_module.graph.eliminate_dead_code()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return sorted(set(bound))


def _static_module(module: nn.Module, constants: dict[str, Any], batch_first: bool) -> nn.Module | None:
    """The static equivalent of one onnx2torch module, or None when this pass does not cover it."""
    from onnx2torch.node_converters.reshape import OnnxReshape as reshape
    from onnx2torch.node_converters.resize import OnnxResize as resize, _onnx_mode_to_torch_mode as torch_mode
    from onnx2torch.node_converters.slice import OnnxSlice as slice_, _get_slices as get_slices

    if isinstance(module, reshape) and constants.get("shape") is not None:
        shape = [int(v) for v in constants["shape"].tolist()]
        return StaticReshape([0, *shape[1:]] if batch_first and shape[:1] == [1] else shape)
    if isinstance(module, slice_) and constants.get("starts") is not None and constants.get("ends") is not None:
        flip, pos, neg = get_slices(constants["starts"].tolist(), constants["ends"].tolist(), constants.get("axes"),
                                    constants.get("steps"))
        return StaticSlice([int(d) for d in flip], [_plain(s) for s in pos], [_plain(s) for s in neg])
    if isinstance(module, resize):
        roi, scales, sizes = (constants.get(k) for k in ("roi", "scales", "sizes"))
        scales = scales if scales is not None and scales.nelement() else None
        sizes = sizes if sizes is not None and sizes.nelement() else None
        if (roi is not None and roi.nelement() and not module.ignore_roi) or (scales is None) == (sizes is None):
            return None
        values = (scales if scales is not None else sizes).tolist()
        if scales is not None and values[:2] != [1.0, 1.0]:
            return None
        return StaticResize(torch_mode(module.onnx_mode, len(values) - 2), module.align_corners,
                            [float(v) for v in values[2:]] if scales is not None else None,
                            [int(v) for v in values[2:]] if sizes is not None else None)
    return None


def _constant_arguments(graph_module: fx.GraphModule, node: fx.Node) -> dict[str, Any] | None:
    """The node's arguments by parameter name, when every one after the data input is an initializer (or absent)."""
    module = graph_module.get_submodule(node.target)
    names = [n for n in inspect.signature(module.forward).parameters]
    if not node.args or len(node.args) > len(names):
        return None
    named = {**dict(zip(names[1:], node.args[1:])), **node.kwargs}
    values: dict[str, Any] = {}
    for name, arg in named.items():
        if arg is None:
            values[name] = None
        elif isinstance(arg, fx.Node) and arg.op == "get_attr":
            values[name] = _attribute(graph_module, arg.target)
        else:
            return None
    return values


def _attribute(graph_module: fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(graph_module.get_submodule(owner) if owner else graph_module, name)


def _plain(item: Any) -> Any:
    """A slice of Python ints (onnx2torch builds them from numpy scalars), anything else unchanged."""
    if not isinstance(item, slice):
        return item
    return slice(*(None if v is None else int(v) for v in (item.start, item.stop, item.step)))
