"""ONNX Runtime: sessions with a fixed thread count, named outputs, and batch-1 latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgemtl.backends.onnx_export import INPUT_NAME
from edgemtl.profile.timing import Latency, measure


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs by name for a float32 NCHW batch."""
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})
    return dict(zip(names, values))


def time_session(session: ort.InferenceSession, image: np.ndarray, threads: int, runs: int, max_seconds: float) -> Latency:
    feed = {INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)}
    return measure(lambda: session.run(None, feed), runtime=f"onnxruntime {ort.__version__}", threads=threads,
                   runs=runs, max_seconds=max_seconds, batch=image.shape[0])
