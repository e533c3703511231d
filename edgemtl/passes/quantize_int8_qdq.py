"""The `quantize_int8_qdq` pass: every task path as an int8 QDQ ONNX graph (ONNX Runtime's static quantizer),
calibrated on real training images and scored against float on the held-out split, with remedies tried in order.

Per task, the float path is exported (`model/onnx_export.py`), then `quant_pre_process` (shape inference + ONNX Runtime graph optimisation, which folds BatchNorm into the
convolutions) runs first, then `quantize_static` in QDQ format: weights int8 per output channel (symmetric),
activations uint8 or int8 (asymmetric by default) with ranges from a `CalibrationDataReader` over real,
normalised samples. The QDQ file runs on ONNX Runtime anywhere (x86, Arm: its int8 kernels pick the QDQ
pattern up) and TVM imports it too.

The standard remedies when a task loses accuracy are knobs of `OrtQuantConfig`: more calibration samples,
percentile calibration instead of min/max, and keeping the task's last layer(s) in float. `run` tries
`QdqConfig.remedies` in order until the task's metric stays within `max_relative_loss` of float (a task the data
does not label: until its SQNR against the float model reaches `min_sqnr_db`), keeps the best attempt and records
every one. The int8 graphs go into the bundle at `INT8_ONNX`; without data the pass is skipped (float ships).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

import torch

from edgemtl.data import TaskData
from edgemtl.data.teacher import teach_missing
from edgemtl.errors import EdgemtlError
from edgemtl.evaluate import evaluate
from edgemtl.manifest import prov
from edgemtl.model.onnx_export import INPUT_NAME, export_task
from edgemtl.model.ort_session import make_session, run as run_session
from edgemtl.model.spec import ModelSpec, TaskSpec
from edgemtl.passes.base import PassInput, PassResult, no_data

# Ops whose weights are quantized and whose outputs "the last layer" means: the ones that compute.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# No "entropy": ONNX Runtime 1.31's quantize_static runs its entropy calibrator with 128 histogram bins for 128
# quantized bins, so the KL search has one candidate, the full range: exactly min/max (measured: identical scales).
METHODS = ("minmax", "percentile")
INT8_ONNX = "tasks/{task}/model.int8.onnx"   # where `run` writes each task's int8 graph in the bundle


@dataclass(frozen=True)
class OrtQuantConfig:
    """How one float graph is quantized (ONNX Runtime `quantize_static`, QDQ format)."""

    calibration_samples: int = 128
    method: Literal["minmax", "percentile"] = "minmax"
    percentile: float = 99.999           # method "percentile": the share of |values| the range keeps
    activations: Literal["uint8", "int8"] = "int8"
    symmetric_activations: bool = False
    per_channel: bool = True              # weights: one scale per output channel (always int8, symmetric)
    exclude_last: int = 0                 # keep this many compute layers (Conv/Gemm/MatMul) nearest the output in float
    batch_size: int = 16                  # calibration samples per ONNX Runtime call

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgemtlError(f"unknown calibration method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.activations not in ("uint8", "int8"):
            raise EdgemtlError(f"activations must be uint8 or int8, got {self.activations!r}")
        if self.calibration_samples < 1 or self.batch_size < 1 or self.exclude_last < 0:
            raise EdgemtlError("calibration_samples and batch_size must be >= 1 and exclude_last >= 0")
        if not 50.0 <= self.percentile <= 100.0:
            raise EdgemtlError(f"the calibration percentile must lie in 50..100, got {self.percentile}")

    def describe(self) -> str:
        """One short line, e.g. 'minmax, 128 samples, uint8 activations, last layer float'."""
        method = f"percentile {self.percentile:g}" if self.method == "percentile" else self.method
        last = {0: "", 1: ", last layer float"}.get(self.exclude_last, f", last {self.exclude_last} layers float")
        sym = " symmetric" if self.symmetric_activations else ""
        return f"{method}, {self.calibration_samples} samples, {self.activations}{sym} activations{last}"


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
