"""A user's labels checked and converted to the layout each task kind trains and scores on.

Layouts (per sample): classification: int64 class index; segmentation: int64 (H, W) class map; depth / edges:
float32 (1, H, W); normals: float32 (3, H, W); regression / raw: float32 of the task's output shape. Every check
raises one line naming the task, the source and what is wrong, so a bad label never reaches a pass.
"""

from __future__ import annotations

import numpy as np

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import TaskSpec


def target_layout(task: TaskSpec) -> tuple[tuple[int, ...], np.dtype]:
    """Shape per sample and dtype of a task's targets."""
    if task.kind == "classification":
        return (), np.dtype(np.int64)
    if task.kind == "segmentation":
        return tuple(task.output_shape[1:]), np.dtype(np.int64)
    return tuple(task.output_shape), np.dtype(np.float32)


def _class_indices(task: TaskSpec, values: np.ndarray, where: str) -> np.ndarray:
    if values.dtype.kind in "USO":  # class names
        names = {name: i for i, name in enumerate(task.class_names)}
        unknown = sorted({str(v) for v in values.ravel() if str(v) not in names})
        if not task.class_names:
            raise EdgemtlError(f"labels of task {task.name!r} in {where} are names but the spec lists no class_names for it")
        if unknown:
            raise EdgemtlError(f"labels of task {task.name!r} in {where} name unknown class(es) {', '.join(unknown[:3])}; "
                               f"the spec's classes are {', '.join(task.class_names)}")
        return np.vectorize(lambda v: names[str(v)], otypes=[np.int64])(values)
    if values.dtype.kind not in "iub" and not (values.dtype.kind == "f" and np.all(values == np.round(values))):
        raise EdgemtlError(f"labels of task {task.name!r} in {where} must be class indices (integers), got {values.dtype}")
    indices = values.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= task.num_classes):
        raise EdgemtlError(f"labels of task {task.name!r} in {where} hold class index {int(indices.max() if indices.max() >= task.num_classes else indices.min())} "
                           f"outside 0..{task.num_classes - 1} (the spec's {task.num_classes} classes)")
    return indices


def check_labels(task: TaskSpec, values: np.ndarray, where: str) -> np.ndarray:
    """(N, ...) labels of one task as its layout expects; accepted variants: (N,) for a [1] output, (N, H, W) for a
    one-channel dense map, (N, 1, H, W) for a segmentation map."""
    values = np.asarray(values)
    shape, dtype = target_layout(task)
    if values.ndim == len(shape) + 2 and task.kind == "segmentation" and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == len(shape) and shape and shape[0] == 1 and task.kind != "segmentation":
        values = values[:, None]
    if tuple(values.shape[1:]) != shape:
        raise EdgemtlError(f"labels of task {task.name!r} in {where} have shape {list(values.shape[1:])} per sample; "
                           f"a {task.kind} task with output {task.output_shape} needs {list(shape)}")
    if task.kind in ("classification", "segmentation"):
        return _class_indices(task, values, where)
    if values.dtype.kind not in "iufb":
        raise EdgemtlError(f"labels of task {task.name!r} in {where} must be numbers, got {values.dtype}")
    values = values.astype(dtype)
    if not np.all(np.isfinite(values)):
        raise EdgemtlError(f"labels of task {task.name!r} in {where} hold NaN or infinite values")
    if task.kind == "edges" and values.size and (values.min() < 0 or values.max() > 1):
        raise EdgemtlError(f"labels of task {task.name!r} in {where} must be edge maps in [0, 1], "
                           f"got values {values.min():g}..{values.max():g}")
    return values
