"""Report sections, one file each, all with the same four hooks, so a new target adds its own file and one entry in
report/html.py's SECTIONS and nothing else in the report changes:

    applies(manifest) -> bool                  whether this bundle has anything for the section (the manifest's
                                               data or its target.flow decide; nothing else does)
    render(manifest, bundle_dir) -> str        its HTML on the bundle's report.html ("" for nothing)
    summary(manifest) -> dict                  what it adds to report.json (top-level keys; "tasks" merged per task)
    compare_figures(task: TaskInput) -> dict   what it adds to one task's column of `edgemtl report`'s comparison
                                               (the keys of `Figures`)

The bundle page puts the applicable sections in SECTIONS order; the comparison asks the applicable ones in the same
order. A section that owns a target's figures (a runtime, a metric in the deployed precision, a memory or model
size, per-layer costs) gives them here; what every bundle can carry (compile-time latencies, `edgemtl profile`
results, the liveness analysis' peak memory) the comparison reads itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict

LayerTimer = Callable[[Path, Any, str], dict[str, Any]]
"""(ONNX file, one input batch, its bundle-relative name) -> per-layer times with their provenance; `edgemtl report`
passes edgemtl.profile.layers.ort_layer_profile (the report never runs a model by itself)."""


@dataclass(frozen=True)
class TaskInput:
    """One task of one bundle, as the comparison hands it to each section."""

    bundle: Path
    manifest: Mapping[str, Any]
    task: str
    entry: Mapping[str, Any]
    runtime: str | None  # the runtime the task entry names (aliases resolved); None: the target's own default
    layer_timer: LayerTimer | None  # None: per-layer timing is off (`edgemtl report --no-layers`)


class Figures(TypedDict, total=False):
    """A section's part of a task's comparison column. Single figures: the first section giving one wins; lists:
    every section's, in SECTIONS order."""

    runtime: dict[str, Any]  # {value, text, chosen_by}: the runtime the target ships (its default when none named)
    target_arch: str  # the CPU architecture the target runs on: a measurement on it is "on target"
    metric: dict[str, Any]
    latencies: list[dict[str, Any]]
    throughput: dict[str, Any]
    memory: list[dict[str, Any]]
    model_size: dict[str, Any]
    energy: dict[str, Any]
    instructions: dict[str, Any]
    layers: dict[str, Any]


class Section(Protocol):
    """What report/html.py and report/compare.py call on every module of this package."""

    def applies(self, manifest: Mapping[str, Any]) -> bool: ...

    def render(self, manifest: Mapping[str, Any], bundle_dir: Path | None) -> str: ...

    def summary(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    def compare_figures(self, task: TaskInput) -> Figures: ...
