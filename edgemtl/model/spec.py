"""The multi-task model contract as data: what each task outputs, how it is trained and judged.

A spec travels inside every checkpoint and every bundle, so it holds only plain values (it must survive
`torch.load(weights_only=True)` and JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgemtl.errors import EdgemtlError, validation_line
from edgemtl.model.widths import WidthConfig, WidthSpace

TaskKind = Literal["classification", "segmentation", "depth", "normals", "edges", "regression", "raw"]

# The loss and the primary metric each kind gets when a spec does not name them.
DEFAULT_LOSS: dict[str, str] = {
    "classification": "cross_entropy",
    "segmentation": "cross_entropy",
    "depth": "l1",
    "normals": "cosine",
    "edges": "bce_edges",
    "regression": "mse",
    "raw": "mse",
}
DEFAULT_METRIC: dict[str, str] = {
    "classification": "accuracy",
    "segmentation": "miou",
    "depth": "rmse",
    "normals": "angular_error",
    "edges": "edge_f1",
    "regression": "mae",
    "raw": "none",  # any output (anchors, landmarks, embeddings): verified by its error against the float model
}
# Direction of every metric edgemtl computes: True when higher is better.
METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "miou": True,
    "pixel_accuracy": True,
    "rmse": False,
    "abs_rel": False,
    "angular_error": False,
    "edge_f1": True,
    "mae": False,
}
LOSSES = ("cross_entropy", "l1", "mse", "cosine", "bce_edges")
DENSE_KINDS = ("segmentation", "depth", "normals", "edges")


class TaskSpec(BaseModel):
    """One task head: its output per sample (no batch dim) and how it is trained and scored."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: TaskKind
    output_shape: list[int] = Field(min_length=1)
    loss: str = ""
    metric: str = ""
    higher_is_better: bool | None = None
    loss_weight: float = 1.0
    class_names: list[str] = Field(default_factory=list)
    onnx_output: str = ""  # models read from ONNX: the graph output holding this task (default: the task's name)

    @model_validator(mode="after")
    def _fill_defaults(self) -> "TaskSpec":
        if not self.loss:
            self.loss = DEFAULT_LOSS[self.kind]
        if not self.metric:
            self.metric = DEFAULT_METRIC[self.kind]
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r} (known: {', '.join(LOSSES)})")
        own_metric = ":" in self.metric  # package.module:function, (pred, target) -> float, imported when scored
        if own_metric and self.higher_is_better is None:
            raise ValueError(f"a metric of your own ({self.metric}) needs higher_is_better: true or false")
        if not own_metric and self.metric != "none" and self.metric not in METRIC_HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {self.metric!r} (known: {', '.join(METRIC_HIGHER_IS_BETTER)}, none, "
                             "or package.module:function)")
        if self.higher_is_better is None:
            self.higher_is_better = METRIC_HIGHER_IS_BETTER.get(self.metric, False)
        expected_rank = {"classification": 1, "regression": 1}.get(self.kind, 3)
        if self.kind != "raw" and len(self.output_shape) != expected_rank:
            raise ValueError(f"a {self.kind} task outputs rank-{expected_rank} samples, got shape {self.output_shape}")
        channels = {"depth": 1, "edges": 1, "normals": 3}.get(self.kind)
        if channels is not None and self.output_shape[0] != channels:
            raise ValueError(f"a {self.kind} task outputs {channels} channel(s), got {self.output_shape[0]}")
        return self

    @property
    def num_classes(self) -> int:
        """Classes of a classification / segmentation task (its output's first dimension)."""
        return self.output_shape[0]


class InputSpec(BaseModel):
    """The image a model takes: shape per sample and the normalisation applied before `forward`."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(min_length=3, max_length=3)  # C, H, W
    mean: list[float] = Field(default_factory=list)
    std: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_norm(self) -> "InputSpec":
        channels = self.shape[0]
        self.mean = self.mean or [0.0] * channels
        self.std = self.std or [1.0] * channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values (one per input channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class ModelSpec(BaseModel):
    """Everything needed to rebuild, feed and judge a multi-task model, except its weights."""

    model_config = ConfigDict(extra="forbid")

    input: InputSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    arch: str = "custom"
    config: dict[str, Any] = Field(default_factory=dict)
    data: str | None = None  # the built-in data set it was trained on, if any
    widths: WidthSpace | None = None  # a slimmable model's width space (None: not slimmable; docs/widths.md)
    sliced_at: WidthConfig | None = None  # a narrow model sliced from a slimmable one: the configuration it was cut at

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return tasks

    @model_validator(mode="after")
    def _a_decoder_per_task(self) -> "ModelSpec":
        if self.widths is not None and set(self.widths.decoders) != set(self.task_names):
            raise ValueError(f"the width space's decoders ({', '.join(self.widths.decoders)}) must be its tasks "
                             f"({', '.join(self.task_names)})")
        return self

    @property
    def slimmable(self) -> bool:
        return self.widths is not None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        """The task called `name`; a clear error listing the valid names otherwise."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise EdgemtlError(f"unknown task {name!r}: this model has {', '.join(self.task_names)}")

    def select(self, names: list[str] | None) -> list[TaskSpec]:
        """The tasks to work on: all of them, or the named ones in the order given."""
        return list(self.tasks) if not names else [self.task(n) for n in names]


def parse_model_spec(raw: dict[str, Any], source: str) -> ModelSpec:
    """Validate a spec dict, turning pydantic's multi-line report into one line naming `source`."""
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise EdgemtlError(f"invalid model spec in {source}: {validation_line(exc, 'spec')}") from None


def read_spec_file(path: Path) -> ModelSpec:
    """Read a user's spec file (YAML or TOML): `input: {shape, mean, std}` and `tasks: [...]`."""
    import tomllib

    import yaml

    if not path.is_file():
        raise EdgemtlError(f"spec file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0]
        raise EdgemtlError(f"spec file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {detail}") from None
    if not isinstance(raw, dict):
        raise EdgemtlError(f"spec file {path} must hold a mapping with 'input' and 'tasks'")
    return parse_model_spec(raw, str(path))
