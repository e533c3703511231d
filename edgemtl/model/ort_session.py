"""ONNX Runtime sessions with a fixed thread count, and a graph's outputs by name (below the passes and backends,
which both score ONNX graphs with them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgemtl.model.onnx_export import INPUT_NAME


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
