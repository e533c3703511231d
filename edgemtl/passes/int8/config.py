"""How `quantize_int8` calibrates activation scales (its config), apart from the pass so its parts can read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec

ScaleMethod = Literal["mse", "percentile", "max"]
SCALE_METHODS = ("mse", "percentile", "max")


@dataclass(frozen=True)
class Int8Config:
    """How activation scales are calibrated.

    `scale_method`: "mse" picks, per tensor, the clipping range (among fractions of the max and high
    percentiles) with the smallest quantization MSE on the calibration values: rare outliers then do not
    coarsen the step of everything else, yet large values are not clipped when they matter. "percentile"
    clips at `percentile` of |x|, "max" never clips. At most `values_per_tensor` values per tensor are
    kept for this (a seeded random subset; the exact max is always kept).
    """

    calibration_samples: int = 64
    scale_method: ScaleMethod = "mse"
    percentile: float = 99.99
    values_per_tensor: int = 1 << 18
    seed: int = 0
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.scale_method not in SCALE_METHODS:
            raise EdgemtlError(f"unknown scale method {self.scale_method!r}: valid methods are {', '.join(SCALE_METHODS)}")
        if not 50.0 <= self.percentile <= 100.0:
            raise EdgemtlError(f"the calibration percentile must lie in 50..100, got {self.percentile}")
        if self.calibration_samples < 1 or self.values_per_tensor < 1000 or self.eval_batch_size < 1:
            raise EdgemtlError("calibration_samples and eval_batch_size must be >= 1, values_per_tensor >= 1000")


    def check(self, spec: ModelSpec) -> None:
        """Nothing here depends on the model: every field was checked when the config was made."""
