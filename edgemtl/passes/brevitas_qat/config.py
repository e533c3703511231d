"""What `quantize_brevitas` is asked for: precisions and the QAT budget (no brevitas import: cheap to read)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec

PRECISIONS: dict[str, tuple[int, int]] = {"w4a4": (4, 4), "w8a8": (8, 8)}


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths and the QAT budget.

    `overrides`: layer name (as in the float model, e.g. "heads.depth.predict") -> (weight bits, act
    bits), where act bits are those of the quantizer at the layer's output; quantizers aligned with it
    (the other inputs of the same add / concatenation) get the same bit width, since they share a scale.
    `first` and `last` name each task path's first and last compute layer (low-bit networks usually keep
    those at 8 bits: they see the raw input and make the prediction).
    """

    precision: str = "w4a4"
    input_bits: int = 8
    output_bits: int = 8
    overrides: dict[str, tuple[int, int]] = field(default_factory=dict)
    qat_steps: int = 300
    lr: float = 1e-3
    batch_size: int = 32
    calibration_samples: int = 64
    seed: int = 0
    # hls4ml has no bilinear Resize: resample with nearest neighbours instead (QAT then adapts the layers)
    nearest_upsampling: bool = False
    # a resize that ends the path (a dense head upsampling its prediction) leaves the quantized graph and runs
    # on the host exactly as in the float model (QuantTaskPath.host_resize; `fabric` is the graph without it)
    host_resize: bool = False
    # a softmax that ends the path (class scores) runs on the host too: hls4ml's table-based Softmax is not
    # bit-accurate, and the argmax a classifier reports does not depend on it (QuantTaskPath.host_softmax)
    host_softmax: bool = False
    # the accuracy budget (edgemtl.passes.budget): with one, each task climbs the mixed-precision ladder
    # (brevitas_qat/ladder.py) until within it, QAT checked every `check_every` steps and stopped once it is
    max_relative_loss: float | None = None
    budgets: Mapping[str, float] = field(default_factory=dict)   # per task, over max_relative_loss
    pinned: Mapping[str, Any] = field(default_factory=dict)       # task -> {"precision", "layers"} (--layer-bits FILE)
    check_every: int = 50

    def budget(self, task: str) -> float | None:
        return self.budgets.get(task, self.max_relative_loss)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgemtlError(f"unknown precision {self.precision!r}: valid precisions are {', '.join(PRECISIONS)}")
        for name, bits in {"input_bits": self.input_bits, "output_bits": self.output_bits}.items():
            if not 2 <= int(bits) <= 16:
                raise EdgemtlError(f"{name} must lie in 2..16, got {bits}")
        for layer, pair in self.overrides.items():
            if len(tuple(pair)) != 2 or not all(2 <= int(b) <= 16 for b in pair):
                raise EdgemtlError(f"the override of layer {layer!r} must be (weight bits, act bits) in 2..16, got {pair}")
        if self.qat_steps < 0 or self.batch_size < 1 or self.calibration_samples < 1 or self.check_every < 0:
            raise EdgemtlError("qat_steps and check_every must be >= 0, batch_size and calibration_samples >= 1")

    @property
    def weight_bits(self) -> int:
        return PRECISIONS[self.precision][0]

    @property
    def act_bits(self) -> int:
        return PRECISIONS[self.precision][1]


    def check(self, spec: ModelSpec) -> None:
        """Layer names in `overrides` are checked against each task path when it is quantized."""
