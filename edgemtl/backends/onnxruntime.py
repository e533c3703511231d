"""ONNX Runtime: sessions with a fixed thread count, named outputs (`model/ort_session.py`, re-exported here), batch-1
latency, and the whole model exported as given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgemtl.bundle import write_file_atomically
from edgemtl.errors import VerificationError
from edgemtl.model.contract import AllTasks, example_input
from edgemtl.model.onnx_export import INPUT_NAME, export_module
from edgemtl.model.ort_session import make_session, run
from edgemtl.model.spec import ModelSpec
from edgemtl.timing import Latency, measure

__all__ = ["export_as_given", "make_session", "run", "time_session"]


def time_session(session: ort.InferenceSession, image: np.ndarray, threads: int, runs: int, max_seconds: float) -> Latency:
    feed = {INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)}
    return measure(lambda: session.run(None, feed), runtime=f"onnxruntime {ort.__version__}", threads=threads,
                   runs=runs, max_seconds=max_seconds, batch=image.shape[0])


def export_as_given(model: nn.Module, spec: ModelSpec, path: Path) -> dict[str, float]:
    """The whole model as an ONNX file a user can take back (a pruned model that arrived as ONNX): every task
    under the output name the spec reads it from (`onnx_output`), so the same spec file loads it; written
    atomically after ONNX Runtime agreed with PyTorch. Returns the max |ONNX Runtime - PyTorch| per task."""
    names = [t.onnx_output or t.name for t in spec.tasks]
    errors: dict[str, float] = {}

    def export_and_check(temporary: Path) -> None:
        export_module(AllTasks(model, spec.task_names), spec, names, temporary)
        x = example_input(spec, batch=2)
        with torch.no_grad():
            expected = model(x)
        got = run(make_session(temporary, 1), x.numpy())
        for task, name in zip(spec.task_names, names):
            errors[task] = float(np.abs(got[name] - expected[task].numpy()).max())
            if not errors[task] <= 1e-3 * max(1.0, float(expected[task].abs().max())):
                raise VerificationError(f"the exported ONNX differs from the PyTorch model on task {task!r} by "
                                   f"{errors[task]:.3g}")

    write_file_atomically(path, export_and_check)
    return errors
