"""The bundle manifest's typed vocabulary: one provenance shape and one figure shape for every number.

A hardware team reads a number only together with what kind of number it is. Before this module the bundle said so
as a string in one place ("measured (host gcc)"), free text in another and an object in a third; now every
provenance is one `Provenance` object and every number that carries one is a `Figure`. `provenance_of` reads any of
the older shapes, so bundles written before the change still open in `edgemtl report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from edgemtl.errors import validation_line

ProvenanceKind = Literal["measured", "emulated", "simulated", "estimated", "static", "evaluated"]

KINDS: dict[str, str] = {
    "measured": "timed on a real CPU or board: the device, runtime, runs, median and p90 are given",
    "emulated": "timed under an emulator (qemu): proves the path works, says nothing about the device's speed",
    "simulated": "counted by a simulator (qemu retired instructions, HLS C simulation): not a latency",
    "estimated": "from an analytical model, nothing was run (GAP9 cycle model, FPGA roofline, FINN)",
    "static": "fixed at compile time and exact (the size of a file, a static memory plan, a MAC count)",
    "evaluated": "a task metric computed on labelled samples with the named runtime",
}

# first words the older free-text provenances start with, and the kind each means
_LEGACY_WORDS: dict[str, ProvenanceKind] = {
    "measured": "measured", "emulated": "emulated", "simulated": "simulated", "estimated": "estimated",
    "estimate": "estimated", "predicted": "estimated", "static": "static", "counted": "static",
    "evaluated": "evaluated", "published": "measured",
}


class Provenance(BaseModel):
    """What kind of number a figure is, who produced it, and anything a reader needs to weigh it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ProvenanceKind = Field(description="one of the kinds above")
    source: str | None = Field(None, description="the tool or module that produced it (ONNX Runtime, hls4ml csim...)")
    detail: str | None = Field(None, description="the conditions: samples, runs, assumptions")
    device: str | None = Field(None, description="where it ran, when it ran somewhere")

    def text(self) -> str:
        """One line for a table cell or a tooltip: `kind (detail; source)`."""
        extra = "; ".join(part for part in (self.detail, self.source) if part)
        return f"{self.kind} ({extra})" if extra else self.kind

    def to_dict(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


class Figure(BaseModel):
    """A number with its unit and provenance: every figure of the comparison page (comparison.json) has this shape.
    In manifest.json a tool's record keeps its own numbers and carries the provenance object beside them."""

    model_config = ConfigDict(extra="allow")

    value: float
    unit: str = Field(description="MAC, B, ms, fps, ...")
    provenance: Provenance


def prov(kind: ProvenanceKind, source: str | None = None, detail: str | None = None,
         device: str | None = None) -> dict[str, str]:
    """A provenance object as manifest JSON (validated: an unknown kind is a bug, not data)."""
    return Provenance(kind=kind, source=source, detail=detail, device=device).to_dict()


def figure(value: float, unit: str, kind: ProvenanceKind, source: str | None = None, detail: str | None = None,
           device: str | None = None, **extra: Any) -> dict[str, Any]:
    """A figure as manifest JSON: value, unit, provenance object, and any extra fields (runs, p90, ...)."""
    return {"value": value, "unit": unit, **{k: v for k, v in extra.items() if v is not None},
            "provenance": prov(kind, source, detail, device)}


def provenance_of(raw: Any, default: ProvenanceKind | None = None) -> Provenance | None:
    """Read any provenance a bundle holds (an object, or the older "kind (detail)" string) as one `Provenance`.

    None when there is none and no default; an unknown first word keeps the whole text as detail under the
    default kind (or "estimated", the most careful reading), so nothing a bundle says is dropped."""
    if isinstance(raw, Provenance):
        return raw
    if isinstance(raw, Mapping):
        kind = str(raw.get("kind") or default or "estimated")
        fields = {key: str(raw[key]) for key in ("source", "detail", "device") if raw.get(key) not in (None, "")}
        if kind not in KINDS:
            fields["detail"] = "; ".join(part for part in (kind, fields.get("detail")) if part)
            kind = default or "estimated"
        return Provenance(kind=kind, **fields)  # type: ignore[arg-type]
    if raw is None or str(raw).strip() == "":
        return Provenance(kind=default) if default else None
    text = str(raw).strip()
    word, _, rest = text.partition(" ")
    kind_word = word.rstrip(":,;").lower()
    if kind_word in _LEGACY_WORDS:
        detail = rest.strip()
        if detail.startswith("(") and detail.endswith(")"):
            detail = detail[1:-1]
        return Provenance(kind=_LEGACY_WORDS[kind_word], detail=detail or None)
    return Provenance(kind=default or "estimated", detail=text)


def provenance_kind(raw: Any, default: str = "unlabelled") -> str:
    """The kind word of any provenance shape, for a badge or a plot's hatching."""
    found = provenance_of(raw)
    return found.kind if found else default


def provenance_text(raw: Any, default: str = "") -> str:
    """One readable line for any provenance shape (never a dict repr)."""
    found = provenance_of(raw)
    return found.text() if found else default


# ---------------------------------------------------------------------------------------------------------------------
# The manifest itself. Sections the flows share are typed here; each flow declares its own task section (a subclass
# of TaskEntry in its flows/ module) and `manifest_model` joins them. A key no model declares fails validation, so a
# flow cannot write a figure the docs (docs/manifest.md, generated from these models) do not describe.

SCHEMA_VERSION = 2
"""1: the untyped manifests before edgemtl.manifest (free-text provenance); 2: typed, one provenance shape."""


class Section(BaseModel):
    """A block of a manifest whose inner fields are the producing tool's own record (kept as written)."""

    model_config = ConfigDict(extra="allow")

    provenance: Provenance | None = None


class StepRecord(BaseModel):
    """One flow step as the runner recorded it (manifest["steps"], in order)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    seconds: float
    status: Literal["running", "ok", "skipped", "failed"] = Field(description="a bundle only holds ok and skipped")
    reason: str | None = Field(None, description="why a skipped step had nothing to do")


class TargetEntry(BaseModel):
    """The target file the compile read (manifest["target"])."""

    model_config = ConfigDict(extra="forbid")

    name: str
    flow: str
    description: str
    file: str = Field(description="the target TOML the compile read")
    part: str | None = Field(None, description="FPGA part number (FPGA targets)")
    fabric: dict[str, int] | None = Field(None, description="FPGA fabric totals: lut, ff, dsp, bram18, uram")


class ModelEntry(BaseModel):
    """The model that was compiled and how it was loaded (manifest["model"])."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str
    sha256: str
    arch: str
    config: dict[str, Any]
    source: str = Field(description="zoo, state_dict+factory, factory, pickled module (--trust) or onnx")
    data: str | None = Field(description="the spec's built-in data set, if any")
    input: dict[str, Any] = Field(description="shape, mean, std: exported graphs take normalised input")
    tasks: list[str]
    import_: dict[str, Any] | None = Field(None, alias="import", description="ONNX import record (ONNX models)")
    total_params: int | None = None
    verification_data: str | None = Field(None, description="the split whose samples every check ran on")


class Latency(BaseModel):
    """A measured (or emulated) batch latency in milliseconds, with its spread and the machine's load."""

    model_config = ConfigDict(extra="forbid")

    median: float = Field(description="ms")
    p90: float = Field(description="ms")
    runs: int
    runtime: str = Field(description="runtime and version")
    device: str = Field(description="CPU model and threads")
    threads: int
    batch: int = 1
    provenance: Provenance
    load_average_1min: float | None = Field(None, description="the machine's load when the timing ended")
    p90_over_median: float | None = Field(None, description="the spread: above 2 the median is flagged noisy")
    warnings: list[str] = Field(default_factory=list, description="why this number is not plain truth, if it is not")


class TaskEntry(BaseModel):
    """What every flow records per task: the spec's output, the cost analysis and the bundle's files for it."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    output_shape: list[int]
    params: int | None = Field(None, description="parameters on the task's path (see cost_provenance)")
    macs: int | None = Field(None, description="multiply-accumulates per image, batch 1 (see cost_provenance)")
    macs_by_op: dict[str, int] | None = None
    peak_activation_bytes: int | None = Field(None, description="float32 activation peak (see activation_provenance)")
    largest_tensor_bytes: int | None = None
    shared_params: int | None = None
    shared_fraction: float | None = None
    cost_provenance: Provenance | None = Field(None, description="what params, macs and macs_by_op are (static)")
    activation_provenance: Provenance | None = Field(None, description="what the activation bytes are (estimated)")
    primary_metric: str | None = None
    higher_is_better: bool | None = None
    expert_path: dict[str, Any] | None = Field(None, description="MoE models: the experts this task's path keeps")
    budget: dict[str, Any] | None = Field(None, description="quantizing targets: the accuracy budget, the remedies "
                                                           "tried in order with their cost, what ships (flows/budget.py)")
    artifacts: dict[str, Any] = Field(default_factory=dict, description="bundle-relative files for this task")
    profile: dict[str, dict[str, Any]] | None = Field(None, description="`edgemtl profile` results per device")
    runtime: str | None = Field(None, description="the runtime the bundle ships for this task")
    runtime_chosen_by: str | None = None
    runtime_reason: str | None = None


class FrontPointEntry(BaseModel):
    """One configuration of a width search's front, as the report plots it: its cost and each task's metric."""

    model_config = ConfigDict(extra="forbid")

    cost: float = Field(description="in the front's cost unit (`cost_unit`)")
    metrics: dict[str, float] = Field(description="each task's metric (`tasks` names it and its direction)")
    source: Literal["evaluated", "predicted"] = Field(description="really run, or the search's predictors")
    pareto: bool = Field(description="on the Pareto front of the points of its own source")


class FrontTaskEntry(BaseModel):
    """A task the search scored: its metric, the metric's direction, and the user's preference for it."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    higher_is_better: bool
    preference: float = Field(description="normalised: the preferences sum to 1")


class WidthFrontEntry(BaseModel):
    """Where the compiled width configuration sits on the front `edgemtl tune` wrote beside its file
    (`config.front.json`; docs/widths.md). Recorded only when the front's model_sha256 is the compiled checkpoint's."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="the front file's name, beside the --widths file")
    target: str = Field(description="the target the search ran for (its cost is that target's)")
    budget: str = Field(description="the budget as the user gave it, e.g. macs=0.5")
    cost_kind: Literal["macs", "latency_ms", "memory_kib"]
    cost_unit: str
    cost_limit: float = Field(description="the budget in the cost unit")
    tasks: dict[str, FrontTaskEntry]
    evaluated: int = Field(description="points the search evaluated for real")
    predicted: int = Field(description="points only its predictors scored")
    evaluated_cost_provenance: Provenance | None = None
    evaluated_metrics_provenance: Provenance | None = None
    predicted_cost_provenance: Provenance | None = None
    predicted_metrics_provenance: Provenance | None = None
    reference: FrontPointEntry = Field(description="the widest configuration, evaluated: relative metrics divide by it")
    chosen: FrontPointEntry = Field(description="the configuration the search chose (evaluated, within the budget)")
    chosen_widths: dict[str, dict[str, float]] = Field(description="its configuration: encoder, decoders")
    chosen_relative: dict[str, float] = Field(description="its metrics relative to the widest (1 = as good)")
    compiled_is_chosen: bool = Field(description="the compiled configuration is the chosen one")
    compiled_on_front: bool = Field(description="the compiled configuration is an evaluated point on the Pareto front")
    compiled: FrontPointEntry | None = Field(None, description="the compiled configuration's point (an evaluated one "
                                        "first); none when the front does not hold it")
    points: list[FrontPointEntry] = Field(description="what the plot draws: every evaluated point, every Pareto point, "
                                     "an even sample of the other predicted ones")
    points_left_out: int = Field(0, description="points not in `points` (the sample's rest, non-finite numbers)")


class SliceWidthsEntry(BaseModel):
    """passes.slice_widths: the width configuration a slimmable model was cut to (`compile --widths`; docs/widths.md)."""

    model_config = ConfigDict(extra="forbid")

    widths: dict[str, dict[str, float]] = Field(description="the configuration: encoder {stage: multiplier}, "
                                                "decoders {task: multiplier}")
    source: str = Field(description="where it came from (the --widths file)")
    macs_before: int = Field(description="all tasks, batch 1 (see cost_provenance)")
    macs_after: int
    params_before: int = Field(description="see cost_provenance")
    params_after: int
    part_channels: dict[str, dict[str, list[int]]] = Field(
        description="encoder {stage: [full, kept]}, decoders {task: [full, kept]} output channels (0: none of its own)")
    channels: dict[str, list[int]] = Field(description="every layer whose width changed: [before, after]")
    batchnorm_statistics: Literal["sliced", "per-width"] = Field(
        description="the full model's (leading channels) or recalibrated at this width")
    seconds: float
    affines_folded: int = Field(0, description="private per-width affines (BatchNorms, decoder output layers) folded "
                                               "into the narrow model's weights (docs/widths.md)")
    artifacts: dict[str, str] = Field(default_factory=dict, description="the narrow checkpoint (model/sliced.pt)")
    cost_provenance: Provenance = Field(description="what the MACs and parameters are (static)")
    front: WidthFrontEntry | None = Field(None, description="where the configuration sits on the search's front")
    warnings: list[str] = Field(default_factory=list, description="a front beside the file that was left out, and why")


class Passes(BaseModel):
    """manifest["passes"]: each pass's record, by pass name. The records typed here are checked key by key; the
    others are their pass's own record (`to_manifest()`), kept as written."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, dict[str, Any]] = Field(init=False)   # every other pass's record is an object

    slice_widths: SliceWidthsEntry | None = Field(None, description="`compile --widths`: the configuration compiled")


class Manifest(BaseModel):
    """manifest.json: what was compiled, for which target, every step, and every figure with its provenance."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[2] = Field(SCHEMA_VERSION, description="bumped when a field changes meaning")
    edgemtl_version: str
    created: str = Field(description="UTC, ISO 8601")
    target: TargetEntry
    model: ModelEntry
    host: dict[str, Any] = Field(description="the compiling machine: platform, cpu, cores, tool versions")
    steps: list[StepRecord]
    tasks: dict[str, TaskEntry]
    all_tasks: dict[str, Any] = Field(description="the all-task graph: tasks, cost, artifacts, verification")
    data: dict[str, Any] | None = Field(None, description="the data source every check read (edgemtl.data)")
    passes: Passes = Field(default_factory=Passes, description="each pass's record, by pass name")
    stopped_after: dict[str, Any] | None = Field(None, description="--stop-after: the last step and those not run")
    profiles: dict[str, Section] | None = Field(None, description="`edgemtl profile` runs, by device")
    moe: dict[str, Any] | None = Field(None, description="MoE models: expert usage, MoE MACs, memory plan, switching")
    quant_budget: dict[str, Any] | None = Field(None, description="quantizing targets: the budget asked for, who set it, "
                                                                 "the tasks over it (flows/budget.py)")


def manifest_model(task_entry: type[TaskEntry] = TaskEntry, extra: type[BaseModel] | None = None) -> type[Manifest]:
    """The manifest model for a flow: its task entries and its own top-level fields (`extra`'s fields)."""
    fields: dict[str, Any] = {"tasks": (dict[str, task_entry], ...)}
    if extra is not None:
        fields.update({name: (info.annotation, info) for name, info in extra.model_fields.items()})
    return create_model(f"Manifest_{task_entry.__name__}", __base__=Manifest, **fields)


class ManifestError(Exception):
    """A flow wrote a manifest its models do not describe: an edgemtl bug (exit 1), never the user's input."""


def check_provenances(value: Any, where: str = "manifest") -> None:
    """Every `provenance` (and `*_provenance`) anywhere in the manifest is one Provenance object."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{where}.{key}"
            if key == "provenance" or str(key).endswith("_provenance"):
                if not isinstance(item, Mapping):
                    raise ManifestError(f"{path} is {item!r}: a provenance is an object {{kind, source, detail}}")
                try:
                    Provenance.model_validate(item)
                except ValidationError as exc:
                    raise ManifestError(f"{path}: {validation_line(exc)}") from None
            else:
                check_provenances(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_provenances(item, f"{where}[{index}]")


def validate_manifest(manifest: Mapping[str, Any], model: type[Manifest] = Manifest) -> Manifest:
    """The manifest checked against its flow's model and the one provenance shape; ManifestError names the key."""
    check_provenances(manifest)
    try:
        return model.model_validate(manifest)
    except ValidationError as exc:
        raise ManifestError(f"manifest does not match {model.__name__}: {validation_line(exc)}") from None

