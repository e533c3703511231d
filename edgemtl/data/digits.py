"""A small real-image multi-task set: scikit-learn's bundled handwritten digits, no network needed.

The 1,797 8x8 scans (UCI optical digits, 0-16 grey levels) are scaled to [0, 1] and upsampled bilinearly
to 1 x S x S (S = 32 by default) so convolutional backbones have room to downsample. Four tasks share each
image:

- `digit`: classification, 10 classes.
- `parity`: classification, 2 classes (even, odd) - a second head that needs the same features.
- `mask`: segmentation, 2 classes (background, ink). The labels are derived, not hand-drawn: a pixel is
  ink where the upsampled image exceeds `INK_THRESHOLD`.
- `ink`: regression, 1 value - the mean intensity of the upsampled image.

Splits are 70/15/15, stratified by digit with a fixed `random_state`, so every split holds every digit and
is identical on every machine and run.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from edgemtl.errors import EdgemtlError

DIGIT_NAMES = tuple(str(d) for d in range(10))
PARITY_NAMES = ("even", "odd")
MASK_NAMES = ("background", "ink")
SPLITS = ("train", "val", "test")
INK_THRESHOLD = 0.5
DEFAULT_SIZE = 32
_SPLIT_STATE = 0


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scans as (N, 8, 8) float in [0, 1] and their digits (read once per process)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Indices of each split into the full set: 70% train, then the rest halved into val and test."""
    from sklearn.model_selection import train_test_split

    _, digits = _raw()
    every = np.arange(len(digits))
    train, rest = train_test_split(every, test_size=0.30, stratify=digits, random_state=_SPLIT_STATE)
    val, test = train_test_split(rest, test_size=0.50, stratify=digits[rest], random_state=_SPLIT_STATE)
    return {"train": train, "val": val, "test": test}


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) in [0, 1] -> (N, 1, size, size) float32 in [0, 1], bilinear."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return out.clamp_(0.0, 1.0).numpy()


def load_digits_split(split: str, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images (N, 1, size, size) float32 and the four targets of one split."""
    if split not in SPLITS:
        raise EdgemtlError(f"unknown split {split!r}: valid splits are {', '.join(SPLITS)}")
    if size < 8:
        raise EdgemtlError(f"digits image size must be at least 8 pixels, got {size}")
    scans, digits = _raw()
    index = split_indices()[split]
    images = upsample(scans[index], size)
    digit = digits[index].copy()
    targets = {
        "digit": digit,
        "parity": digit % 2,
        "mask": (images[:, 0] > INK_THRESHOLD).astype(np.int64),
        "ink": images.mean(axis=(1, 2, 3))[:, None].astype(np.float32),
    }
    return images, targets
