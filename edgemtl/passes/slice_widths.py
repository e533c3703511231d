"""Materialise one width configuration of a slimmable model as a narrow model (docs/widths.md).

Real channel slicing, not masks: every conv / linear layer a stage or decoder of the width space names keeps the
LEADING `channels_at(full, multiplier)` output channels (slimmable networks share the leading channels across widths,
so the narrow model computes what the slimmable one computes at that configuration), and torch-pruning's
DependencyGraph removes the trailing ones from every coupled layer with them: the BatchNorms after them, the next
layers' inputs, the other side of a residual add, the right offsets of a concatenation, the heads reading the encoder.
The result is an ordinary model of the same module types, so every target flow compiles it unchanged; its spec drops
the width space (it is no longer slimmable) and records the configuration in `sliced_at`.

A configuration file written by `edgemtl tune` has its search front beside it (`config.front.json`): when that front is
for the compiled checkpoint (its model_sha256), the record says where the configuration sits on it (`front`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgemtl.analysis.cost import model_cost
from edgemtl.data import TaskData
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import FrontPointEntry, WidthFrontEntry, prov
from edgemtl.model.checkpoint import save
from edgemtl.model.contract import example_input
from edgemtl.model.resize import layer_widths
from edgemtl.model.spec import ModelSpec
from edgemtl.model.width_front import FrontPoint, TuneFront, front_path, read_front
from edgemtl.model.width_affine import fold_norm, fold_output, norm_key, output_key, set_width_affines, width_affines
from edgemtl.model.width_masks import decoder_outputs, out_pruner, space_layers
from edgemtl.model.widths import WidthConfig, WidthSpace, channels_at, read_width_config
from edgemtl.passes.base import PassInput, PassResult
from edgemtl.training.slimmable import recalibrate_batchnorm

SLICED_CHECKPOINT = "model/sliced.pt"   # where `run` writes the narrow model in a bundle
Statistics = dict[str, tuple[torch.Tensor, torch.Tensor]]   # BatchNorm path -> (running_mean, running_var)
RECALIBRATION_BATCHES, RECALIBRATION_BATCH_SIZE = 16, 32      # training images a narrow width's statistics come from
FRONT_POINTS = 400   # most points of a search front the manifest keeps for its plot (evaluated and Pareto ones first)


@dataclass(frozen=True)
class SliceConfig:
    """Which configuration to cut: `widths` (None: the widest, i.e. the full model) and where it came from; the search
    front found beside its file (`read_slice_config`), or why a front there was left out."""

    widths: WidthConfig | None = None
    source: str = "the width configuration"   # named in errors: "width configuration config.json"
    front: TuneFront | None = None            # `edgemtl tune`'s front beside the file (recorded if for this model)
    front_file: str | None = None             # its file name
    front_warning: str | None = None          # a front beside the file that could not be read

    def check(self, spec: ModelSpec) -> None:
        space = slimmable_space(spec, self.source)
        if self.widths is not None:
            space.check(self.widths, self.source)


@dataclass(frozen=True)
class SliceRecord:
    """What slicing did: the configuration, the cost before and after, and every layer whose width changed."""

    widths: dict[str, dict[str, float]]
    source: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    part_channels: dict[str, dict[str, list[int]]]   # encoder {stage: [full, kept]}, decoders {task: [full, kept]}
    channels: dict[str, list[int]]        # layer -> [output channels before, after] (the coupled layers too)
    batchnorm_statistics: str             # "sliced" (the full model's, leading channels) or "per-width" (recalibrated)
    seconds: float
    affines_folded: int = 0               # private per-width affines folded into the narrow model's layers
    artifacts: dict[str, str] = field(default_factory=dict)
    front: dict[str, Any] | None = None   # where the configuration sits on the search's front (`place_on_front`)
    warnings: list[str] = field(default_factory=list)   # a front left out, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_manifest(self) -> dict[str, Any]:
        found = {key: value for key, value in self.to_dict().items() if value is not None}
        return {**found, "cost_provenance": prov("static", source="edgemtl analysis", detail="counted, batch 1")}


def read_slice_config(path: Path) -> SliceConfig:
    """The configuration file `compile --widths` names (one-line errors: see `read_width_config`) and the search
    front beside it, if there is one. A front that cannot be read does not stop the compile (the configuration alone
    decides the model; the front only places it): it is left out with a warning in the pass's record."""
    widths = read_width_config(path)
    beside = front_path(path)
    front, warning = None, None
    if beside.is_file():
        try:
            front = read_front(beside)
        except EdgemtlError as exc:
            warning = f"{exc} (left out; the configuration compiles without it)"
    return SliceConfig(widths, f"width configuration {path}", front=front, front_file=beside.name, front_warning=warning)


def slimmable_space(spec: ModelSpec, source: str = "the width configuration") -> WidthSpace:
    """The model's width space; a one-line error for a model that is not slimmable."""
    if spec.widths is not None:
        return spec.widths
    if spec.sliced_at is not None:
        raise EdgemtlError(f"{source} cannot apply: this model was already sliced to one configuration "
                           f"({spec.sliced_at.model_dump_json()}) and is not slimmable any more")
    raise EdgemtlError(f"{source} needs a slimmable model: this {spec.arch} model's spec has no width space "
                       "(train it with --slimmable, or declare `widths` in its spec; see docs/widths.md)")


def per_width_statistics(narrow: nn.Module, spec: ModelSpec, widths: WidthConfig,
                         data: TaskData | None = None) -> Statistics | None:
    """BatchNorm statistics of this configuration's own activations, or None to keep the leading channels of the full
    model's.

    A narrow configuration's activations differ from the full model's, so their statistics do too. Slimmable training
    (`edgemtl train --slimmable`) keeps the full model's statistics for the widest configuration only and leaves the
    others to post-hoc recalibration (measured against switchable BatchNorm in docs/widths.md): with training `data`,
    a copy of the narrow model re-estimates them from `RECALIBRATION_BATCHES` batches (BatchNorms in train mode,
    nothing else changes). Without data, or at the widest configuration, None."""
    if data is None or len(data) == 0 or widths == slimmable_space(spec).widest():
        return None
    probe = copy.deepcopy(narrow)
    recalibrate_batchnorm(probe, data, batches=RECALIBRATION_BATCHES, batch_size=RECALIBRATION_BATCH_SIZE)
    return {name: (module.running_mean.clone(), module.running_var.clone()) for name, module in probe.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats}


def slice_model(model: nn.Module, spec: ModelSpec, widths: WidthConfig,
                data: TaskData | None = None) -> tuple[nn.Module, ModelSpec]:
    """A narrow copy of `model` at `widths` (checked against the spec's space) and its spec; `model` is untouched.
    With training `data`, its BatchNorm statistics are recalibrated at that width (`per_width_statistics`)."""
    narrow, narrow_spec, _, _ = _slice(model, spec, widths, data)
    return narrow, narrow_spec


def _slice(model: nn.Module, spec: ModelSpec, widths: WidthConfig,
           data: TaskData | None = None) -> tuple[nn.Module, ModelSpec, str, int]:
    """`slice_model`, which BatchNorm statistics the narrow model carries ("sliced" or "per-width") and how many private
    affines were folded into it."""
    space = slimmable_space(spec)
    widths = space.check(widths)
    narrow = copy.deepcopy(model).eval()
    targets = _layer_targets(narrow, space, widths)
    graph = _dependency_graph(narrow, spec)
    outputs = decoder_outputs(narrow, graph, space_layers(narrow, space))   # found before pruning changes the graph
    for name, (_, keep) in targets.items():
        layer = narrow.get_submodule(name)
        current = _out_channels(layer)
        if current > keep:
            group = graph.get_pruning_group(layer, out_pruner(layer), idxs=list(range(keep, current)))
            if not graph.check_pruning_group(group):
                raise EdgemtlError(f"cannot slice {name} to {keep} channels: a layer coupled with it would lose all "
                                   "of its channels")
            group.prune()
    _check_coupling(narrow, targets)
    folded = _fold_affines(narrow, widths, outputs)
    statistics = per_width_statistics(narrow, spec, widths, data)
    if statistics is not None:
        _load_statistics(narrow, statistics)
    _check_outputs(narrow, spec)
    return narrow, spec.model_copy(update={"widths": None, "sliced_at": widths}), \
        "sliced" if statistics is None else "per-width", folded


def run(inputs: PassInput, config: SliceConfig) -> PassResult[nn.Module]:
    """The pass on a flow's model: later steps compile the narrow model; its checkpoint joins the bundle."""
    started = time.perf_counter()
    space = slimmable_space(inputs.spec, config.source)
    widths = space.check(config.widths, config.source) if config.widths is not None else space.widest()
    data = None
    if inputs.source is not None and widths != space.widest():   # this width's own BatchNorm statistics
        data = inputs.source.load("train", n=RECALIBRATION_BATCHES * RECALIBRATION_BATCH_SIZE)
    narrow, spec, statistics, folded = _slice(inputs.model, inputs.spec, widths, data)
    before = inputs.cost if inputs.cost is not None else model_cost(inputs.model, inputs.spec)
    after = model_cost(narrow, spec)
    widths_before, widths_after = layer_widths(inputs.model), layer_widths(narrow)
    front, warnings = _front(config, widths, inputs.model_sha256)
    record = SliceRecord(
        widths=widths.model_dump(), source=config.source,
        macs_before=before.all_tasks.macs, macs_after=after.all_tasks.macs,
        params_before=before.total_params, params_after=after.total_params,
        part_channels=_part_channels(space, widths),
        channels={name: [width, widths_after[name]] for name, width in widths_before.items()
                  if widths_after[name] != width},
        batchnorm_statistics=statistics, seconds=time.perf_counter() - started, affines_folded=folded,
        artifacts={} if inputs.bundle is None else {"checkpoint": SLICED_CHECKPOINT}, front=front, warnings=warnings)
    if inputs.bundle is not None:
        meta = {key: value for key, value in record.to_dict().items() if key != "front"}   # the front stays in the manifest
        save(narrow, spec, inputs.bundle / SLICED_CHECKPOINT, meta={"slice_widths": meta})
    return PassResult(narrow, spec, record)


def _part_channels(space: WidthSpace, widths: WidthConfig) -> dict[str, dict[str, list[int]]]:
    """Each encoder stage's and task decoder's output channels: [full, kept at this configuration] ([0, 0]: a decoder
    with no hidden layer of its own)."""
    def kept(options: Any, multiplier: float) -> list[int]:
        return [options.channels, channels_at(options.channels, multiplier) if options.channels else 0]

    return {"encoder": {name: kept(space.stages[name], m) for name, m in widths.encoder.items()},
            "decoders": {name: kept(space.decoders[name], m) for name, m in widths.decoders.items()}}


def _front(config: SliceConfig, widths: WidthConfig, model_sha256: str | None) -> tuple[dict[str, Any] | None, list[str]]:
    """The `front` entry of the record and its warnings: a front for another checkpoint (or one that could not be read)
    is left out with a warning, never an error: the configuration file alone decides what is compiled."""
    if config.front_warning is not None:
        return None, [config.front_warning]
    if config.front is None:
        return None, []
    name = config.front_file or "the search front"
    if config.front.model_sha256 != model_sha256:
        theirs, ours = config.front.model_sha256[:12], (model_sha256 or "unknown")[:12]
        return None, [f"the search front {name} is for another model (sha256 {theirs}..., this checkpoint's is "
                      f"{ours}...): where the configuration sits on it is not recorded"]
    return place_on_front(config.front, widths, name), []


def place_on_front(front: TuneFront, widths: WidthConfig, file: str) -> dict[str, Any]:
    """Where configuration `widths` sits on a search front, as the manifest records it (`WidthFrontEntry`): the
    search's target, budget and chosen point, whether `widths` is that point and whether it is on the evaluated Pareto
    front, and the points a plot needs (every evaluated and every Pareto point, an even sample of the other predicted
    ones: at most FRONT_POINTS)."""
    matches = [p for p in (front.chosen, front.reference, *front.points) if _same(p.widths, widths)]
    compiled = next((p for p in matches if p.source == "evaluated"), matches[0] if matches else None)
    drawn = [p for p in front.points if _finite(p)]
    keep = [p for p in drawn if p.source == "evaluated" or p.pareto]
    rest = sorted((p for p in drawn if p.source == "predicted" and not p.pareto), key=lambda p: p.cost)
    room = max(0, FRONT_POINTS - len(keep))
    if len(rest) > room:
        rest = [rest[round(i * (len(rest) - 1) / max(1, room - 1))] for i in range(room)] if room else []
    counts = {source: sum(p.source == source for p in front.points) for source in ("evaluated", "predicted")}
    provenances = {f"{source}_{what}_provenance": found.model_dump(exclude_none=True)
                   for source in counts for what in ("cost", "metrics")
                   if (found := next((p.provenance[what] for p in front.points
                                      if p.source == source and what in p.provenance), None)) is not None}
    entry = WidthFrontEntry(
        file=file, target=front.target, budget=front.cost.budget, cost_kind=front.cost.kind, cost_unit=front.cost.unit,
        cost_limit=front.cost.limit,
        tasks={task: objective.model_dump() for task, objective in front.tasks.items()},
        **counts, **provenances,
        reference=_entry(front.reference), chosen=_entry(front.chosen), chosen_widths=front.chosen.widths.model_dump(),
        chosen_relative={task: value for task, value in front.relative.items() if math.isfinite(value)},
        compiled_is_chosen=_same(front.chosen.widths, widths),
        compiled_on_front=any(p.source == "evaluated" and p.pareto for p in matches),
        compiled=_entry(compiled) if compiled is not None else None,
        points=[_entry(p) for p in (*keep, *rest)], points_left_out=len(front.points) - len(keep) - len(rest))
    return entry.model_dump(exclude_none=True)


def _same(a: WidthConfig, b: WidthConfig) -> bool:
    return all(set(x) == set(y) and all(math.isclose(x[k], y[k], abs_tol=1e-9) for k in x)
               for x, y in ((a.encoder, b.encoder), (a.decoders, b.decoders)))


def _finite(point: FrontPoint) -> bool:
    return all(math.isfinite(v) for v in (point.cost, *point.metrics.values()))


def _entry(point: FrontPoint) -> FrontPointEntry:
    """A front point as the manifest keeps it: six significant digits (a plot's worth), non-finite metrics left out."""
    return FrontPointEntry(cost=_short(point.cost),
                           metrics={t: _short(v) for t, v in point.metrics.items() if math.isfinite(v)},
                           source=point.source, pareto=point.pareto)


def _short(value: float) -> float:
    return float(f"{value:.6g}")


def _layer_targets(model: nn.Module, space: WidthSpace, widths: WidthConfig) -> dict[str, tuple[str, int]]:
    """Every conv / linear layer the space names -> (its stage or decoder, the output channels it keeps)."""
    targets = {}
    for name, (kind, group) in space_layers(model, space).items():
        multiplier = widths.encoder[group] if kind == "stage" else widths.decoders[group]
        owner = f"encoder stage {group!r}" if kind == "stage" else f"decoder {group!r}"
        targets[name] = (owner, channels_at(_out_channels(model.get_submodule(name)), multiplier))
    return targets


def _check_coupling(model: nn.Module, targets: dict[str, tuple[str, int]]) -> None:
    """Coupled layers (a residual add, a concatenation) must share one width: a space that puts them in stages of
    different widths leaves one of them off its target."""
    for name, (owner, keep) in targets.items():
        got = _out_channels(model.get_submodule(name))
        if got != keep:
            raise EdgemtlError(f"layer {name} of the {owner} kept {got} channels, not {keep}: it is coupled (a residual "
                               "add or a concatenation) with a layer of another stage or decoder; put coupled layers in "
                               "one stage of the width space")


def _check_outputs(model: nn.Module, spec: ModelSpec) -> None:
    with torch.no_grad():
        outputs = model(example_input(spec, batch=1))
    for task in spec.tasks:
        if list(outputs[task.name].shape[1:]) != task.output_shape:
            raise EdgemtlError(f"slicing changed task {task.name!r}'s output to {list(outputs[task.name].shape[1:])}: "
                               "the width space names one of its output layers")


def _fold_affines(narrow: nn.Module, widths: WidthConfig, outputs: dict[str, str]) -> int:
    """Fold the model's private per-width affines (`edgemtl.model.width_affine`) at `widths` into the narrow model's
    BatchNorms and decoder output layers; the narrow model carries none afterwards. Returns how many were folded."""
    affines = width_affines(narrow)
    set_width_affines(narrow, {})
    folded = 0
    for name, module in narrow.named_modules() if affines else ():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            if (affine := affines.get(norm_key(name, module.num_features))) is not None:
                fold_norm(module, affine)
                folded += 1
    for name, decoder in outputs.items() if affines else ():
        if (affine := affines.get(output_key(name, widths.decoders[decoder]))) is not None:
            fold_output(narrow.get_submodule(name), affine)
            folded += 1
    return folded


def _load_statistics(model: nn.Module, statistics: Statistics) -> None:
    for name, (mean, var) in statistics.items():
        norm = model.get_submodule(name)
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_mean.shape != mean.shape:
            raise EdgemtlError(f"the per-width BatchNorm statistics of {name} do not fit the sliced model")
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)


def _dependency_graph(model: nn.Module, spec: ModelSpec) -> tp.DependencyGraph:
    with torch.enable_grad():  # torch-pruning traces through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(spec, batch=1))


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels
