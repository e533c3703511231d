"""Models the zoo does not have, importable as `--model-factory custom_models:<function>` in tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPEC_YAML = """\
input: {shape: [3, 32, 32], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
tasks:
  - {name: seg, kind: segmentation, output_shape: [3, 32, 32]}
  - {name: depth, kind: depth, output_shape: [1, 32, 32]}
"""


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TwoHeadUNet(nn.Module):
    """U-Net-like encoder-decoder with skip concatenations and two heads; no `task=` keyword. The depth head
    is relative (divided by each image's largest value: a ReduceMax in ONNX, which the int8 path does not take: the
    test model for a task one target refuses while the other paths compile)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.enc1, self.enc2 = _block(3, width), _block(width, 2 * width)
        self.bottleneck = _block(2 * width, 2 * width)
        self.dec2 = _block(4 * width, width)
        self.dec1 = _block(2 * width, width)
        self.seg = nn.Conv2d(width, 3, 1)
        self.depth = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(b, scale_factor=2.0), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], dim=1))
        return {"seg": self.seg(d1), "depth": _relative(F.softplus(self.depth(d1)))}


def _relative(depth: torch.Tensor) -> torch.Tensor:
    return depth / (depth.amax(dim=(2, 3), keepdim=True) + 1e-3)


def unet_two_heads() -> nn.Module:
    torch.manual_seed(0)
    return TwoHeadUNet()


def not_a_module() -> str:
    return "oops"


def raises() -> nn.Module:
    raise RuntimeError("the weights folder is not mounted")


HEADS_SPEC_YAML = """\
input: {shape: [3, 32, 32], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
tasks:
  - {name: age, kind: regression, output_shape: [1]}
  - {name: pose, kind: regression, output_shape: [3]}
  - {name: anchors, kind: raw, output_shape: [6, 8, 8]}
  - {name: landmarks, kind: raw, output_shape: [5, 2]}
"""


class RegressionAndRawHeads(nn.Module):
    """Heads as real detectors and estimators have them: a rank-1 regression of one value and of three, a dense
    raw map (anchors over an 8 x 8 grid) and a multi-dimensional raw output reshaped from a dense layer."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.backbone = nn.Sequential(_block(3, width), nn.MaxPool2d(2), _block(width, 2 * width), nn.MaxPool2d(2))
        self.anchors = nn.Conv2d(2 * width, 6, 1)
        self.age, self.pose, self.landmarks = nn.Linear(2 * width, 1), nn.Linear(2 * width, 3), nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
        return {"age": self.age(pooled), "pose": self.pose(pooled), "anchors": self.anchors(features),
                "landmarks": self.landmarks(pooled).reshape(-1, 5, 2)}


def regression_and_raw_heads() -> nn.Module:
    torch.manual_seed(0)
    return RegressionAndRawHeads()


UPSAMPLING_SPEC_YAML = """\
input: {shape: [3, 16, 16], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
tasks:
  - {name: up, kind: raw, output_shape: [2, 16, 16]}
  - {name: value, kind: regression, output_shape: [1]}
"""


class UpsamplingAndValue(nn.Module):
    """A learnt upsampling head (ConvTranspose, which hls4ml lacks) beside a pooled regression head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.up, self.value = nn.ConvTranspose2d(8, 2, 2, stride=2), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {"up": self.up(f), "value": self.value(f.mean((2, 3)))}


def upsampling_and_value() -> nn.Module:
    torch.manual_seed(0)
    return UpsamplingAndValue()
