"""Rebuild a freshly constructed model at the (pruned) widths stored in a state_dict.

A pruned checkpoint is an ordinary checkpoint: the architecture and config of the original model plus a
state_dict whose tensors have the new shapes (the config's `widths` entry records them for people). On
load, the model is built at its original widths and every layer whose parameters differ in shape is
replaced by a layer of the stored shape, so the same loader serves pruned and unpruned models, zoo or
factory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgemtl.errors import EdgemtlError


def _conv(old: nn.Conv2d, weight: torch.Size) -> nn.Conv2d:
    depthwise = old.groups == old.in_channels == old.out_channels and old.groups > 1
    groups = weight[0] if depthwise else old.groups
    return nn.Conv2d(weight[1] * groups, weight[0], old.kernel_size, old.stride, old.padding, old.dilation, groups,
                     bias=old.bias is not None, padding_mode=old.padding_mode)


def _resized(module: nn.Module, shapes: dict[str, torch.Size]) -> nn.Module | None:
    """A replacement for `module` with the given parameter shapes, or None if nothing changed."""
    own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    if all(name not in shapes or tensor.shape == shapes[name] for name, tensor in own.items()):
        return None
    if isinstance(module, nn.Conv2d):
        return _conv(module, shapes["weight"])
    if isinstance(module, nn.Linear):
        return nn.Linear(shapes["weight"][1], shapes["weight"][0], bias=module.bias is not None)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(module)(shapes["running_mean"][0], module.eps, module.momentum, module.affine,
                            module.track_running_stats)
    if isinstance(module, nn.LayerNorm):
        return nn.LayerNorm(tuple(shapes["weight"]), module.eps, module.elementwise_affine)
    for name, tensor in own.items():  # custom layers: bare parameters and buffers take the stored shape
        if name in shapes and tensor.shape != shapes[name]:
            fresh = torch.zeros(shapes[name], dtype=tensor.dtype)
            if isinstance(tensor, nn.Parameter):
                setattr(module, name, nn.Parameter(fresh, requires_grad=tensor.requires_grad))
            else:
                module.register_buffer(name, fresh)
    return module


def fit_to_state_dict(model: nn.Module, state: dict[str, Any]) -> nn.Module:
    """Replace, in place, every layer whose stored tensors have other shapes than the built model's."""
    for path, module in list(model.named_modules()):
        prefix = f"{path}." if path else ""
        shapes = {k[len(prefix):]: v.shape for k, v in state.items()
                  if k.startswith(prefix) and "." not in k[len(prefix):] and isinstance(v, torch.Tensor)}
        if not shapes:
            continue
        replacement = _resized(module, shapes)
        if replacement is None or replacement is module:
            continue
        if not path:
            raise EdgemtlError("the stored weights change the shape of the model's top-level parameters")
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, attr, replacement)
    return model


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear layer (what a pruned checkpoint records in its config)."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths
