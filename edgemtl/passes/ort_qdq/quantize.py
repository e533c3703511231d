"""Float ONNX -> int8 QDQ ONNX with ONNX Runtime's static quantizer, calibrated on real samples.

`quant_pre_process` (shape inference + ONNX Runtime graph optimisation, which folds BatchNorm into the
convolutions) runs first, then `quantize_static` in QDQ format: weights int8 per output channel (symmetric),
activations uint8 or int8 (asymmetric by default) with ranges from a `CalibrationDataReader` over real,
normalised samples. The QDQ file runs on ONNX Runtime anywhere (x86, Arm: its int8 kernels pick the QDQ
pattern up) and TVM imports it too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgemtl.errors import EdgemtlError
from edgemtl.model.onnx_export import INPUT_NAME
from edgemtl.passes.ort_qdq.config import OrtQuantConfig

# Ops whose weights are quantized and whose outputs "the last layer" means: the ones that compute.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class QuantizeResult:
    path: Path
    config: OrtQuantConfig
    samples: int                          # calibration samples actually used
    seconds: float
    quantized_nodes: int                  # QuantizeLinear nodes in the result (activations + weights)
    excluded_nodes: list[str] = field(default_factory=list)
    per_channel: bool = True              # what was used (see per_channel_fallback)
    per_channel_fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.config.method, "percentile": self.config.percentile if self.config.method == "percentile" else None,
                "calibration_samples": self.samples, "activations": self.config.activations,
                "symmetric_activations": self.config.symmetric_activations,
                "weights": "int8 symmetric, " + ("per output channel" if self.per_channel else "per tensor"),
                "per_channel_fallback": self.per_channel_fallback,
                "format": "QDQ", "excluded_nodes": self.excluded_nodes, "quantize_linear_nodes": self.quantized_nodes,
                "seconds": round(self.seconds, 3), "description": self.config.describe()}


class SampleReader:
    """ONNX Runtime's CalibrationDataReader over an (N, C, H, W) float32 array, in batches."""

    def __init__(self, samples: np.ndarray, batch_size: int) -> None:
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self.batch_size = batch_size
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = iter({INPUT_NAME: self.samples[i:i + self.batch_size]}
                                 for i in range(0, len(self.samples), self.batch_size))
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


def last_compute_nodes(model: onnx.ModelProto, count: int) -> list[str]:
    """Names of the `count` compute nodes (Conv/Gemm/MatMul) nearest the graph outputs.

    Breadth-first from every graph output back through the producers, so the layer that writes an output
    comes first; nodes without a name cannot be excluded by ONNX Runtime and are passed over.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    frontier, seen, found = [o.name for o in model.graph.output], set(), []
    while frontier and len(found) < count:
        following = []
        for tensor in frontier:
            node = producer.get(tensor)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in COMPUTE_OPS and node.name and len(found) < count:
                found.append(node.name)
            following.extend(node.input)
        frontier = following
    return found


def quantize_qdq(float_onnx: Path, output: Path, samples: np.ndarray, config: OrtQuantConfig = OrtQuantConfig()) -> QuantizeResult:
    """Quantize `float_onnx` to an int8 QDQ graph at `output`, calibrated on `samples` (normalised, NCHW).

    Per-channel weights are tried first; where ONNX Runtime's quantizer fails on them or writes a graph its
    own session rejects (its MatMul + bias handling in transformer blocks, ONNX Runtime 1.31), the graph is
    quantized again with per-tensor weights and `per_channel_fallback` says why. Raises EdgemtlError (one
    line) when ONNX Runtime cannot pre-process or quantize the graph at all.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(samples) == 0:
        raise EdgemtlError("int8 calibration needs at least one real sample")
    start = time.perf_counter()
    used = np.ascontiguousarray(samples[:config.calibration_samples], dtype=np.float32)
    output.parent.mkdir(parents=True, exist_ok=True)
    fallback = None
    with tempfile.TemporaryDirectory(prefix="edgemtl-ortq-") as scratch, _quiet():
        prepared = Path(scratch) / "prepared.onnx"
        try:
            with contextlib.chdir(scratch):  # a failed symbolic shape inference saves its model into the cwd
                quant_pre_process(str(Path(float_onnx).resolve()), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:
            raise EdgemtlError(f"ONNX Runtime int8 pre-processing of {float_onnx.name} failed: {_first_line(exc)}") from None
        excluded = last_compute_nodes(onnx.load(str(prepared)), config.exclude_last)
        per_channel = config.per_channel
        try:
            _quantize_static(prepared, output, used, config, per_channel, excluded)
            _smoke_test(output, used[:1])
        except Exception as exc:
            if not per_channel:
                raise EdgemtlError(f"ONNX Runtime int8 quantization of {float_onnx.name} failed: {_first_line(exc)}") from None
            fallback, per_channel = f"per-channel weights failed in ONNX Runtime: {_first_line(exc)}", False
            try:
                _quantize_static(prepared, output, used, config, per_channel, excluded)
                _smoke_test(output, used[:1])
            except Exception as exc2:
                raise EdgemtlError(f"ONNX Runtime int8 quantization of {float_onnx.name} failed: {_first_line(exc2)}") from None
    onnx.checker.check_model(str(output))
    quantized = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(output)).graph.node)
    return QuantizeResult(output, config, len(used), time.perf_counter() - start, quantized, excluded,
                          per_channel=per_channel, per_channel_fallback=fallback)


def _quantize_static(prepared: Path, output: Path, samples: np.ndarray, config: OrtQuantConfig, per_channel: bool,
                     excluded: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[config.method]
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": config.symmetric_activations}
    if config.method == "percentile":
        extra["CalibPercentile"] = config.percentile
    quantize_static(
        str(prepared), str(output), SampleReader(samples, config.batch_size), quant_format=QuantFormat.QDQ,
        per_channel=per_channel, activation_type=QuantType.QUInt8 if config.activations == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=excluded or None, calibrate_method=method,
        extra_options=extra, calibration_providers=["CPUExecutionProvider"],
    )


def _smoke_test(path: Path, sample: np.ndarray) -> None:
    """The quantized graph loads and runs in ONNX Runtime (its quantizer can write graphs its runtime rejects)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {INPUT_NAME: sample})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer prints and logs hints at WARNING on every call: keep them off the console."""
    logger, sink = logging.getLogger(), io.StringIO()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logger.setLevel(level)
