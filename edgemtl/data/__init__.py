"""The built-in multi-task data sets, so every command can train, calibrate and score without downloads.

- `scenes`: procedural indoor rooms with exact segmentation / depth / normals / edges / scene-class labels
  (see `edgemtl.data.scenes`), 3 x 64 x 64 by default, generated from a seed.
- `digits`: scikit-learn's real handwritten digits with digit / parity / ink-mask / ink-amount tasks
  (see `edgemtl.data.digits`), 1 x 32 x 32 by default, fixed stratified splits.

Images are kept in [0, 1]; `TaskData.normalise` applies the `InputSpec` mean/std that a model trained on
the set expects, and `TaskData.batches` yields normalised tensors ready for `forward`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from edgemtl.data import digits as _digits
from edgemtl.data import scenes as _scenes
from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import InputSpec, TaskSpec

DATASETS = ("scenes", "digits")
SPLITS = ("train", "val", "test")
SCENES_DEFAULT_N = {"train": 2000, "val": 256, "test": 256}
DEFAULT_IMAGE_SIZE = {"scenes": 64, "digits": _digits.DEFAULT_SIZE}
# Per-channel mean/std of the default train split (scenes: 2,000 samples of seed 0; digits: 1,257 scans at
# 32 x 32). Fixed constants, so a model's input normalisation does not drift with seed, n or size.
_NORMALISATION = {
    "scenes": ([0.4206, 0.4216, 0.4233], [0.1999, 0.1985, 0.1998]),
    "digits": ([0.3056], [0.3237]),
}


@dataclass(frozen=True)
class TaskData:
    """One split of a data set: raw images, a target array per task, and the specs a model needs."""

    name: str
    split: str
    images: Any  # (N, C, H, W) float32 in [0, 1], not normalised: an array or a lazy `samples.ImageView`
    targets: dict[str, Any]  # task name -> (N, ...) array-like, dtypes as the task kind expects (`labels.target_layout`)
    input: InputSpec
    tasks: list[TaskSpec]
    distilled: frozenset[str] = frozenset()  # tasks whose targets are the float model's outputs, not labels

    @property
    def labelled(self) -> list[str]:
        """Tasks with real labels: the ones a metric can be computed for."""
        return [t for t in self.targets if t not in self.distilled]

    def __len__(self) -> int:
        return len(self.images)

    def in_memory(self) -> "TaskData":
        """The same split with every image and target decoded once into arrays: for code that reads it many times
        (a width search recalibrates and scores on the same batches for every configuration)."""
        every = np.arange(len(self))
        return replace(self, images=np.asarray(self.images[every]),
                       targets={name: np.asarray(target[every]) for name, target in self.targets.items()})

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """(x - mean) / std per channel, for (C, H, W) or (N, C, H, W) images in [0, 1]."""
        mean = np.asarray(self.input.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.input.std, dtype=np.float32).reshape(-1, 1, 1)
        return ((images - mean) / std).astype(np.float32)

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Normalised image batches with their targets; the last batch may be smaller."""
        if batch_size < 1:
            raise EdgemtlError(f"batch size must be at least 1, got {batch_size}")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            x = torch.from_numpy(self.normalise(self.images[index]))
            yield x, {name: torch.from_numpy(np.ascontiguousarray(t[index])) for name, t in self.targets.items()}


def _check(name: str, split: str | None = None) -> None:
    if name not in DATASETS:
        raise EdgemtlError(f"unknown data set {name!r}: valid data sets are {', '.join(DATASETS)}")
    if split is not None and split not in SPLITS:
        raise EdgemtlError(f"unknown split {split!r}: valid splits are {', '.join(SPLITS)}")


def data_spec(name: str, image_size: int | None = None) -> tuple[InputSpec, list[TaskSpec]]:
    """The input spec and default task specs of a data set, without generating or loading any data."""
    _check(name)
    size = DEFAULT_IMAGE_SIZE[name] if image_size is None else image_size
    if size < 8:
        raise EdgemtlError(f"image size must be at least 8 pixels, got {size}")
    mean, std = _NORMALISATION[name]
    if name == "scenes":
        tasks = [
            TaskSpec(name="segmentation", kind="segmentation", output_shape=[5, size, size],
                     class_names=list(_scenes.CLASS_NAMES)),
            TaskSpec(name="depth", kind="depth", output_shape=[1, size, size]),
            TaskSpec(name="normals", kind="normals", output_shape=[3, size, size]),
            TaskSpec(name="edges", kind="edges", output_shape=[1, size, size]),
            TaskSpec(name="scene", kind="classification", output_shape=[3], class_names=list(_scenes.SCENE_NAMES)),
        ]
        return InputSpec(shape=[3, size, size], mean=mean, std=std), tasks
    tasks = [
        TaskSpec(name="digit", kind="classification", output_shape=[10], class_names=list(_digits.DIGIT_NAMES)),
        TaskSpec(name="parity", kind="classification", output_shape=[2], class_names=list(_digits.PARITY_NAMES)),
        TaskSpec(name="mask", kind="segmentation", output_shape=[2, size, size], class_names=list(_digits.MASK_NAMES)),
        TaskSpec(name="ink", kind="regression", output_shape=[1]),
    ]
    return InputSpec(shape=[1, size, size], mean=mean, std=std), tasks


def load_data(
    name: str, split: str = "train", n: int | None = None, seed: int = 0, image_size: int | None = None
) -> TaskData:
    """One split of a built-in data set.

    scenes: `n` samples (default train 2000, val 256, test 256) generated from `seed`; splits never share a
    sample. digits: the fixed split (train 1257, val 270, test 270), truncated to `n`; `seed` is unused
    because the split is fixed on purpose, so scores compare across runs.
    """
    _check(name, split)
    if n is not None and n < 1:
        raise EdgemtlError(f"the number of samples must be at least 1, got {n}")
    input_spec, tasks = data_spec(name, image_size)
    size = input_spec.shape[-1]
    if name == "scenes":
        arrays = _scenes.generate_scenes(n or SCENES_DEFAULT_N[split], seed=seed, split=split, size=size)
        images = arrays.pop("image")
        targets = arrays
    else:
        images, targets = _digits.load_digits_split(split, size)
        if n is not None:
            images = images[:n]
            targets = {k: v[:n] for k, v in targets.items()}
    return TaskData(name=name, split=split, images=images, targets=targets, input=input_spec, tasks=tasks)
