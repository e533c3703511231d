"""How `quantize_int8_qdq` quantizes (its configs), apart from the pass so that the registry imports it cheaply:
`OrtQuantConfig` for one float graph, `QdqConfig` for the pass (the remedies each task tries, in order, and the
targets)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec

# No "entropy": ONNX Runtime 1.31's quantize_static runs its entropy calibrator with 128 histogram bins for 128
# quantized bins, so the KL search has one candidate, the full range: exactly min/max (measured: identical scales).
METHODS = ("minmax", "percentile")


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


# Tried in order per task until one keeps the metric within `max_relative_loss`; the first is the default, the rest
# are the standard remedies. Measured on the default mtl-cnn (scenes, 600 steps): the default met the target on
# every task (worst: normals +0.80% angular error). uint8 activations are not used: on x86 CPUs without VNNI,
# ONNX Runtime's u8s8 kernels saturate (up to +93% depth RMSE here); symmetric activations cost up to +175%.
REMEDIES: tuple[tuple[str, OrtQuantConfig], ...] = (
    ("default", OrtQuantConfig()),
    ("percentile calibration", OrtQuantConfig(method="percentile", percentile=99.99)),
    ("last layer in float", OrtQuantConfig(exclude_last=1)),
    ("more calibration samples", OrtQuantConfig(calibration_samples=512)),
    ("percentile calibration, last layer in float", OrtQuantConfig(method="percentile", percentile=99.99, exclude_last=1)),
)


@dataclass(frozen=True)
class QdqConfig:
    """The pass: the remedies each task tries, in order (`OrtQuantConfig` each), and when its int8 graph is good
    enough: its accuracy budget (edgemtl.passes.budget), `budgets[task]` where given, else `max_relative_loss`."""

    remedies: tuple[tuple[str, OrtQuantConfig], ...] = REMEDIES
    max_relative_loss: float = 0.01   # int8 may lose at most this share of the task's float metric (no labels: 1 - cosine)
    budgets: Mapping[str, float] = field(default_factory=dict)  # per task, over max_relative_loss
    threads: int | None = None        # ONNX Runtime threads scoring each attempt (None: every core)
    latency_runs: int = 30            # host ONNX Runtime runs timing each attempt (its cost), batch 1

    def __post_init__(self) -> None:
        if not self.remedies:
            raise EdgemtlError("quantize_int8_qdq needs at least one remedy (the first is the default)")
        if self.threads is not None and self.threads < 1:
            raise EdgemtlError(f"threads must be >= 1, got {self.threads}")

    def budget(self, task: str) -> float:
        return self.budgets.get(task, self.max_relative_loss)

    def check(self, spec: ModelSpec) -> None:
        """Nothing here depends on the model: every field was checked when the config was made."""
