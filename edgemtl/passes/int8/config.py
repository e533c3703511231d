"""How `quantize_int8` calibrates activation scales (its config), apart from the pass so its parts can read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec

ScaleMethod = Literal["mse", "percentile", "max"]
SCALE_METHODS = ("mse", "percentile", "max")
# Tried in order per task until it is within its accuracy budget (the first is the default): only activation scales
# change, so the integer graph's ops, weights and cycles stay the same from one remedy to the next.
REMEDIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default (MSE-optimal scales)", {}),
    ("percentile scales", {"scale_method": "percentile"}),
    ("max scales (no clipping)", {"scale_method": "max"}),
    ("more calibration samples", {"calibration_samples": 256}),
)


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
    # the accuracy budget (edgemtl.passes.budget): with one, `remedies` are tried in order until a task is within it
    max_relative_loss: float | None = None
    budgets: Mapping[str, float] = field(default_factory=dict)   # per task, over max_relative_loss
    remedies: tuple[tuple[str, dict[str, Any]], ...] = REMEDIES

    def budget(self, task: str) -> float | None:
        return self.budgets.get(task, self.max_relative_loss)

    def __post_init__(self) -> None:
        if self.scale_method not in SCALE_METHODS:
            raise EdgemtlError(f"unknown scale method {self.scale_method!r}: valid methods are {', '.join(SCALE_METHODS)}")
        if not 50.0 <= self.percentile <= 100.0:
            raise EdgemtlError(f"the calibration percentile must lie in 50..100, got {self.percentile}")
        if self.calibration_samples < 1 or self.values_per_tensor < 1000 or self.eval_batch_size < 1:
            raise EdgemtlError("calibration_samples and eval_batch_size must be >= 1, values_per_tensor >= 1000")


    def check(self, spec: ModelSpec) -> None:
        """Nothing here depends on the model: every field was checked when the config was made."""
