"""Lazy, array-like views of a user's samples, so a folder of 10,000 images never sits in memory as float32.

A `SampleReader` yields one sample at a time (an image as stored, uint8 or float in [0, 1], and its labels);
`ImageView` and `TargetView` index a split of it like NumPy arrays (int, slice, index array), which is all the
passes ask of `TaskData.images` / `TaskData.targets`. Decoded samples are cached as stored (uint8 stays uint8),
and images turn into float32 in [0, 1] (resized when the user asked) only for the batch being read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Sample = tuple[np.ndarray, dict[str, np.ndarray]]


class SampleReader:
    """Sample i of a source, read once by `read_one` and kept as stored (files: decoded once, not per batch)."""

    def __init__(self, count: int, read_one: Callable[[int], Sample], cache: bool = True,
                 images: np.ndarray | None = None, labels: dict[str, np.ndarray] | None = None) -> None:
        self.count, self.cache = count, cache
        # all images and labels, when they sit in memory as arrays (npz, built-in): a batch is then one slice
        self.images, self.labels = images, labels
        self._read_one = read_one
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Sample:
        if not self.cache:  # arrays already in memory: slicing them is the read
            return self._read_one(i)
        if i not in self._cache:
            self._cache[i] = self._read_one(i)
        return self._cache[i]


def _positions(index: Any, count: int) -> tuple[np.ndarray, bool]:
    """Positions an index selects in a view of `count` samples, and whether it was a single int."""
    if isinstance(index, (int, np.integer)):
        return np.array([range(count)[int(index)]]), True
    if isinstance(index, slice):
        return np.arange(count)[index], False
    return np.arange(count)[np.asarray(index)], False


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 0-255 -> float32 0-1; float images are taken as already in [0, 1]."""
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32, copy=False)


class ImageView:
    """(N, C, H, W) float32 images in [0, 1] of one split, decoded per access."""

    def __init__(self, reader: SampleReader, indices: np.ndarray, shape: tuple[int, int, int],
                 resize_to: tuple[int, int] | None = None) -> None:
        self.reader, self.indices, self.resize_to = reader, indices, resize_to
        self.shape = (len(indices), *shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: Any) -> np.ndarray:
        positions, single = _positions(index, len(self.indices))
        if self.reader.images is not None and self.resize_to is None:
            images = to_unit_float(self.reader.images[self.indices[positions]])
            return images[0] if single else images
        images = np.empty((len(positions), *self.shape[1:]), dtype=np.float32)
        for row, position in enumerate(positions):
            images[row] = self._image(int(self.indices[position]))
        return images[0] if single else images

    def _image(self, i: int) -> np.ndarray:
        image = to_unit_float(self.reader[i][0])
        if self.resize_to is not None and tuple(image.shape[-2:]) != self.resize_to:
            resized = F.interpolate(torch.from_numpy(image)[None], size=self.resize_to, mode="bilinear",
                                    align_corners=False, antialias=True)
            image = resized[0].clamp_(0, 1).numpy()
        return image


class TargetView:
    """One task's targets of one split, read from the same samples as the images."""

    def __init__(self, reader: SampleReader, indices: np.ndarray, task: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.reader, self.indices, self.task = reader, indices, task
        self.shape, self.dtype = (len(indices), *shape), np.dtype(dtype)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: Any) -> np.ndarray:
        positions, single = _positions(index, len(self.indices))
        if self.reader.labels is not None:
            values = self.reader.labels[self.task][self.indices[positions]].astype(self.dtype, copy=False)
            return values[0] if single else values
        values = np.stack([self.reader[int(self.indices[p])][1][self.task] for p in positions]).astype(self.dtype)
        return values[0] if single else values
