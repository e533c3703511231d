"""An example of YOUR model: a small encoder-decoder with a segmentation and a depth head. Nothing edgemtl-specific
in it: `forward(x)` returns `{task: tensor}`, and `build()` is the factory edgemtl imports (`--model-factory models:build`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SegDepthNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.stem = _block(3, width)
        self.down1, self.down2 = _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2)
        self.up2, self.up1 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.seg = nn.Conv2d(width, classes, 1)
        self.depth = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        u2 = self.up2(torch.cat([F.interpolate(s2, scale_factor=2.0), s1], dim=1))
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2.0), s0], dim=1))
        return {"seg": self.seg(u1), "depth": F.softplus(self.depth(u1))}


def build() -> nn.Module:
    return SegDepthNet()
