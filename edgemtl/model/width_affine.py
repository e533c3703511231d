"""Private per-width affines of a slimmable model: what each narrower width may adjust without moving the widest.

Slimmable networks share every weight across widths, so the layers right after a sliced part serve every width with
one set of weights. Two places suffered measurably (docs/tune.md, "Where the widest loses"):
- a BatchNorm at a narrower width normalises activations that differ from the full width's; slimmable networks give
  each width its own BatchNorm affine (Yu et al., ICLR 2019, "switchable BN");
- a task decoder's output layer (the first layer after the decoder's sliced layers, e.g. a dense head's final 1x1
  conv) must predict from the leading channels alone at every narrower decoder width, which bound the full decoder:
  at 400 steps the slimmable depth decoder lost 4.6% at the widest and 67% at the narrowest against fixed-width models.

Each gets, per narrower width, a scale and a bias per output channel, stored as deltas from the identity
(`y * (1 + scale) + bias`, both zero at the start): `BatchNorm@kept` for a BatchNorm keeping `kept` channels, and
`layer@multiplier` for an output layer at its decoder's multiplier. The widest never uses them, so the full model is
the checkpoint's own weights. Slicing folds them into the layer (the BatchNorm's weight and bias, the output layer's
weight rows and bias), so a sliced model is an ordinary model and every target compiles it unchanged.

They travel with the model as the attribute `WIDTH_AFFINE` (name -> tensor, outside the state_dict, which keeps the
architecture's own keys); an edgemtl checkpoint stores them beside the state_dict.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH_AFFINE = "edgemtl_width_affine"   # model attribute: {key: tensor (2, channels): scale delta, bias}
Affines = dict[str, torch.Tensor]


def norm_key(name: str, kept: int) -> str:
    return f"{name}@{kept}"


def output_key(name: str, multiplier: float) -> str:
    return f"{name}@x{multiplier:g}"


def width_affines(model: nn.Module) -> Affines:
    """The model's private affines (empty if it has none)."""
    return dict(getattr(model, WIDTH_AFFINE, None) or {})


def set_width_affines(model: nn.Module, affines: Affines) -> None:
    if affines:
        setattr(model, WIDTH_AFFINE, {key: value.detach().clone() for key, value in affines.items()})
    elif hasattr(model, WIDTH_AFFINE):
        delattr(model, WIDTH_AFFINE)


class WidthAffine(nn.Module):
    """The affines as trainable parameters (one (2, channels) tensor per key), for slimmable training."""

    def __init__(self, shapes: dict[str, int], initial: Affines | None = None) -> None:
        super().__init__()
        order = sorted(shapes)
        self.values = nn.ParameterList(nn.Parameter(torch.zeros(2, shapes[key])) for key in order)
        self.index = {key: i for i, key in enumerate(order)}
        for key, value in (initial or {}).items():
            if key in self.index and self.values[self.index[key]].shape == value.shape:
                with torch.no_grad():
                    self.values[self.index[key]].copy_(value)

    def get(self, key: str) -> torch.Tensor | None:
        index = self.index.get(key)
        return None if index is None else self.values[index]

    def tensors(self) -> Affines:
        return {key: self.values[i].detach().clone() for key, i in self.index.items()}


def apply_affine(output: torch.Tensor, affine: torch.Tensor, channel_dim: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`output * (1 + scale) + bias` along `channel_dim`; a mask keeps silenced channels at zero."""
    shape = [1] * output.dim()
    shape[channel_dim] = -1
    bias = affine[1] if mask is None else affine[1] * mask.to(affine.dtype)
    return output * (1 + affine[0]).view(shape) + bias.view(shape)


@torch.no_grad()
def fold_norm(norm: nn.modules.batchnorm._BatchNorm, affine: torch.Tensor) -> None:
    """gamma' = gamma (1 + s), beta' = beta (1 + s) + b over the BatchNorm's (leading, kept) channels."""
    scale, bias = 1 + affine[0, :norm.num_features], affine[1, :norm.num_features]
    norm.weight.mul_(scale)
    norm.bias.mul_(scale).add_(bias)


@torch.no_grad()
def fold_output(layer: nn.Module, affine: torch.Tensor) -> None:
    """W' = diag(1 + s) W, b' = b (1 + s) + b_affine on a conv / linear layer's output channels (a bias is added
    where the layer had none)."""
    scale, bias = 1 + affine[0], affine[1]
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(bias))
    layer.bias.mul_(scale).add_(bias)
