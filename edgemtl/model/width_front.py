"""The result of a width search as data (`edgemtl tune` writes it, `compile --widths` and the report read it).

`tune -o config.json` writes the chosen configuration as a bare width configuration (what `compile --widths` takes)
and, beside it, `config.front.json`: every configuration the search saw with its objectives, which of them were
evaluated for real and which only predicted, the Pareto front, the budget and preference it answered, and the chosen
point's measured numbers. A compile of `config.json` finds the front beside it and records where the compiled
configuration sits on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgemtl.errors import EdgemtlError, first_line, validation_line
from edgemtl.manifest import Provenance
from edgemtl.model.widths import WidthConfig

FRONT_SUFFIX = ".front.json"
FRONT_SCHEMA_VERSION = 1


class FrontPoint(BaseModel):
    """One configuration and its objectives: the cost and each task's metric."""

    model_config = ConfigDict(extra="forbid")

    widths: WidthConfig
    cost: float
    metrics: dict[str, float]
    source: Literal["evaluated", "predicted"]            # evaluated: really run; predicted: the search's predictors
    pareto: bool = False                                 # on the front of the points of its own source
    provenance: dict[str, Provenance] = Field(default_factory=dict)   # "cost", "metrics"


class CostObjective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["macs", "latency_ms", "memory_kib"]
    unit: str
    limit: float                                         # the budget in this unit
    budget: str                                          # as the user gave it, e.g. "macs=0.5"


class TaskObjective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str
    higher_is_better: bool
    preference: float                                    # normalised: the preferences sum to 1


class TuneFront(BaseModel):
    """Everything `edgemtl tune` found (docs/tune.md)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = FRONT_SCHEMA_VERSION
    model_sha256: str
    target: str
    cost: CostObjective
    tasks: dict[str, TaskObjective]
    reference: FrontPoint                                # the widest configuration, evaluated: relative numbers use it
    points: list[FrontPoint]
    chosen: FrontPoint                                   # evaluated, within the budget
    relative: dict[str, float]                           # the chosen point's task metrics relative to the widest
    predictors: dict[str, dict] = Field(default_factory=dict)   # objective -> model, cross-validated MAPE, Kendall tau
    study: dict[str, str | int] = Field(default_factory=dict)  # storage (no password), name, real evaluations
    seconds: float = 0.0

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")


def front_path(config_path: Path) -> Path:
    """Where the front of a configuration file lives: `config.json` -> `config.front.json`."""
    return config_path.with_name(config_path.stem + FRONT_SUFFIX)


def read_front(path: Path) -> TuneFront:
    """A front file, with one-line errors for an unreadable or malformed file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgemtlError(f"cannot read the search front {path}: {first_line(exc)}") from None
    try:
        return TuneFront.model_validate(raw)
    except ValidationError as exc:
        raise EdgemtlError(f"{path} is not an edgemtl tune front: {validation_line(exc, 'front')}") from None
