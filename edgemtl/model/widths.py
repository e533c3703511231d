"""Width spaces and width configurations: which widths a slimmable model can run at, and one choice among them.

A slimmable model carries its `WidthSpace` in its spec (`ModelSpec.widths`): the encoder's stages, in order, and one
decoder per task, each with its full channel count, the width multipliers it allows and the layers whose output
channels the multiplier scales. A `WidthConfig` picks one multiplier per stage and per decoder; it is plain data (a
JSON file that `edgemtl compile --widths` reads and the search writes), checked against the space with one-line errors.
The number of channels a multiplier keeps is `channels_at`, the one rounding rule that slicing and slimmable training
share (they must keep the same leading channels).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgemtl.errors import EdgemtlError, first_line, validation_line

DEFAULT_MULTIPLIERS = (0.25, 0.5, 0.75, 1.0)
_CLOSE = 1e-9


def channels_at(full: int, multiplier: float) -> int:
    """Channels a layer of `full` output channels keeps at `multiplier`: rounded half up, never below one."""
    return max(1, math.floor(full * multiplier + 0.5))


def _listing(values: list[float] | tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in values)


class WidthOptions(BaseModel):
    """One encoder stage or one task decoder: its full width, the multipliers it allows, and its layers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: int = Field(ge=0)           # output channels at full width (0: no hidden layer of its own, e.g. a linear head)
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS  # ascending, in (0, 1], ending at 1.0 (the full model)
    modules: tuple[str, ...] = ()         # module paths (prefixes) whose conv / linear output channels it scales

    @field_validator("multipliers")
    @classmethod
    def _ascending_to_one(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values or any(not 0 < v <= 1 for v in values):
            raise ValueError(f"multipliers must lie in (0, 1], got [{_listing(values)}]")
        if list(values) != sorted(set(values)) or not math.isclose(values[-1], 1.0, abs_tol=_CLOSE):
            raise ValueError(f"multipliers must be ascending, distinct and end at 1.0, got [{_listing(values)}]")
        return values

    @model_validator(mode="after")
    def _nothing_to_slice(self) -> "WidthOptions":
        if (self.channels == 0 or not self.modules) and len(self.multipliers) > 1:
            raise ValueError("a stage or decoder without channels or modules to slice allows only the multiplier 1.0")
        return self

    def allowed(self, multiplier: float) -> float | None:
        """The allowed multiplier equal to `multiplier` (within float noise), or None."""
        return next((m for m in self.multipliers if math.isclose(m, multiplier, abs_tol=_CLOSE)), None)


class WidthConfig(BaseModel):
    """One configuration: a width multiplier per encoder stage and per task decoder. Serialises to JSON as
    `{"encoder": {stage: multiplier}, "decoders": {task: multiplier}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: dict[str, float]
    decoders: dict[str, float]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "the width configuration") -> WidthConfig:
        """Parse a configuration, with one-line errors naming `source` (not JSON, or not this shape)."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgemtlError(f"{source} is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise EdgemtlError(f"{source} must hold a JSON object with 'encoder' and 'decoders' (see docs/widths.md)")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise EdgemtlError(f"{source} is not a width configuration: {validation_line(exc, 'configuration')} "
                               "(expected {\"encoder\": {stage: multiplier}, \"decoders\": {task: multiplier}}; "
                               "see docs/widths.md)") from None


def read_width_config(path: Path) -> WidthConfig:
    """A width configuration file (JSON), with one-line errors for a missing or unreadable file."""
    if not path.is_file():
        raise EdgemtlError(f"width configuration {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgemtlError(f"cannot read width configuration {path}: {first_line(exc)}") from None
    return WidthConfig.from_json(text, source=f"width configuration {path}")


class WidthSpace(BaseModel):
    """Every width a slimmable model can run at: its encoder stages (in order) and one decoder per task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: dict[str, WidthOptions] = Field(min_length=1)
    decoders: dict[str, WidthOptions]

    def widest(self) -> WidthConfig:
        """The full model: every stage and decoder at its largest multiplier (1.0)."""
        return self._pick(lambda options: options.multipliers[-1])

    def narrowest(self) -> WidthConfig:
        return self._pick(lambda options: options.multipliers[0])

    def sample(self, rng: random.Random) -> WidthConfig:
        """A configuration drawn uniformly per stage and decoder (the sandwich rule's random members, a search's
        initial population)."""
        return self._pick(lambda options: rng.choice(options.multipliers))

    def _pick(self, choose: Callable[[WidthOptions], float]) -> WidthConfig:
        return WidthConfig(encoder={name: choose(o) for name, o in self.stages.items()},
                           decoders={name: choose(o) for name, o in self.decoders.items()})

    def size(self) -> int:
        """How many configurations the space holds."""
        return math.prod(len(o.multipliers) for o in (*self.stages.values(), *self.decoders.values()))

    def check(self, config: WidthConfig, source: str = "the width configuration") -> WidthConfig:
        """`config` if it belongs to this space (its multipliers snapped to the space's own values); otherwise a
        one-line error: a file for another model, an unknown or missing task, a width outside the space."""
        if set(config.encoder) != set(self.stages):
            raise EdgemtlError(f"{source} is for another model: it names encoder stages {', '.join(config.encoder) or 'none'}"
                               f"; this model's are {', '.join(self.stages)}")
        unknown = [task for task in config.decoders if task not in self.decoders]
        if unknown:
            raise EdgemtlError(f"{source} names unknown task(s) {', '.join(unknown)} in its decoders; this model has "
                               f"{', '.join(self.decoders)}")
        missing = [task for task in self.decoders if task not in config.decoders]
        if missing:
            raise EdgemtlError(f"{source} gives no decoder width for task(s) {', '.join(missing)}; this model has "
                               f"{', '.join(self.decoders)}")
        encoder = {name: self._snap(self.stages[name], value, f"encoder stage {name!r}", source)
                   for name, value in config.encoder.items()}
        decoders = {name: self._snap(self.decoders[name], value, f"decoder {name!r}", source)
                    for name, value in config.decoders.items()}
        return WidthConfig(encoder={n: encoder[n] for n in self.stages}, decoders={n: decoders[n] for n in self.decoders})

    @staticmethod
    def _snap(options: WidthOptions, value: float, what: str, source: str) -> float:
        allowed = options.allowed(value)
        if allowed is None:
            raise EdgemtlError(f"{source}: {what} width {value:g} is outside the width space; allowed: "
                               f"{_listing(options.multipliers)}")
        return allowed
