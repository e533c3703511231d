"""MTCNN's output network (ONet), to compile the weights facenet-pytorch ships (data/onet.pt, a plain state_dict).

This is the factory a user writes for a state_dict: the same layer names as facenet_pytorch/models/mtcnn.py (so the
package's weights load strictly), returning the three heads by name. facenet-pytorch itself is not imported (it
imports torchvision). `--model-factory onet:mtcnn_onet`.
"""

from __future__ import annotations

import torch
from torch import nn


class MtcnnONet(nn.Module):
    """MTCNN's output network as facenet-pytorch 2.6.0 declares it (facenet_pytorch/models/mtcnn.py: same layer
    names, so the package's own data/onet.pt state_dict loads strictly), returning its three heads by name. The
    package itself is not imported (it imports torchvision): this is the factory a user writes for a state_dict.
    Caffe-era layers: PReLU after every conv / dense layer, max pools in ceil mode, a permute (Transpose) before
    the dense layers, a Softmax on the face score."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, kernel_size=3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, kernel_size=3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, kernel_size=3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, kernel_size=2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
        self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return {"face": self.softmax6_1(self.dense6_1(x)), "box": self.dense6_2(x), "landmarks": self.dense6_3(x)}


def mtcnn_onet() -> nn.Module:
    return MtcnnONet()
