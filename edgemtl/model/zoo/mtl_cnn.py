"""`mtl-cnn`: a ResNet-style shared encoder with one light decoder per task.

Residual stages with BatchNorm couple channels across layers (what channel pruning must respect); the
dense heads also concatenate a stride-2 skip from the first stage (a concatenation coupling). Task heads
are built from the spec's tasks, so the same architecture serves any task list.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgemtl.model.spec import DENSE_KINDS, ModelSpec, TaskSpec
from edgemtl.model.widths import DEFAULT_MULTIPLIERS, WidthOptions, WidthSpace

DEFAULT_CONFIG: dict[str, Any] = {"width": 16, "blocks": [1, 1, 1], "head_width": 16}


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Encoder(nn.Module):
    """Stem (stride 2) and three residual stages at strides 2, 4, 8; returns the skip and the deepest map."""

    def __init__(self, in_channels: int, width: int, blocks: list[int]) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_channels, width, stride=2)
        stages, cin = [], width
        for i, count in enumerate(blocks):
            cout = width * 2**i
            layers = [BasicBlock(cin, cout, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(cout, cout, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.skip_channels = width
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        skip = x = self.stages[0](x)
        for stage in self.stages[1:]:
            x = stage(x)
        return skip, x


class DenseHead(nn.Module):
    """Deep features -> upsample to the skip's resolution -> concat skip -> refine -> full resolution."""

    def __init__(self, in_channels: int, skip_channels: int, width: int, out_channels: int, out_size: list[int]) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, width)
        self.fuse = conv_bn_relu(width + skip_channels, width)
        self.predict = nn.Conv2d(width, out_channels, 1)
        self.out_size = tuple(out_size)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(deep), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, skip], dim=1))
        return F.interpolate(self.predict(x), size=self.out_size, mode="bilinear", align_corners=False)


class GlobalHead(nn.Module):
    """Global average pool + linear: classification logits or regression values."""

    def __init__(self, in_channels: int, out_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out_features)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return self.fc(deep.mean(dim=(2, 3)))


class MultiTaskCNN(nn.Module):
    """Shared encoder + one head per task; `forward(x, task=t)` runs only the encoder and head `t`."""

    def __init__(self, spec: ModelSpec, width: int, blocks: list[int], head_width: int) -> None:
        super().__init__()
        self.encoder = Encoder(spec.input.shape[0], width, blocks)
        self.heads = nn.ModuleDict({t.name: self._head(t, head_width) for t in spec.tasks})

    def _head(self, task: TaskSpec, head_width: int) -> nn.Module:
        if task.kind in DENSE_KINDS:
            return DenseHead(self.encoder.out_channels, self.encoder.skip_channels, head_width,
                             task.output_shape[0], task.output_shape[1:])
        return GlobalHead(self.encoder.out_channels, task.output_shape[0])

    def forward(self, x: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        skip, deep = self.encoder(x)
        names = list(self.heads) if task is None else [task]
        return {name: self.heads[name](skip, deep) for name in names}


def build(spec: ModelSpec, config: dict[str, Any]) -> MultiTaskCNN:
    return MultiTaskCNN(spec, int(config["width"]), [int(b) for b in config["blocks"]], int(config["head_width"]))


def width_space(spec: ModelSpec, multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS) -> WidthSpace:
    """The slimmable width space of this architecture for `spec`: one stage per residual stage (the stem joins stage 0,
    whose identity shortcut adds the stem's output: one coupled width) and one decoder per task (a dense head's
    reduce and fuse layers; a global head is a single linear layer with no width of its own, so only 1.0)."""
    config = {**DEFAULT_CONFIG, **spec.config}
    width, blocks, head_width = int(config["width"]), list(config["blocks"]), int(config["head_width"])
    stages = {f"stage{i}": WidthOptions(channels=width * 2**i, multipliers=multipliers,
                                        modules=(("encoder.stem",) if i == 0 else ()) + (f"encoder.stages.{i}",))
              for i in range(len(blocks))}
    decoders = {t.name: WidthOptions(channels=head_width, multipliers=multipliers,
                                     modules=(f"heads.{t.name}.reduce", f"heads.{t.name}.fuse"))
                if t.kind in DENSE_KINDS else WidthOptions(channels=0, multipliers=(1.0,))
                for t in spec.tasks}
    return WidthSpace(stages=stages, decoders=decoders)
