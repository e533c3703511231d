"""Materialise one width configuration of a slimmable model as a narrow model (docs/widths.md).

Real channel slicing, not masks: every conv / linear layer a stage or decoder of the width space names keeps the
LEADING `channels_at(full, multiplier)` output channels (slimmable networks share the leading channels across widths,
so the narrow model computes what the slimmable one computes at that configuration), and torch-pruning's
DependencyGraph removes the trailing ones from every coupled layer with them: the BatchNorms after them, the next
layers' inputs, the other side of a residual add, the right offsets of a concatenation, the heads reading the encoder.
The result is an ordinary model of the same module types, so every target flow compiles it unchanged; its spec drops
the width space (it is no longer slimmable) and records the configuration in `sliced_at`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn

from edgemtl.analysis.cost import model_cost
from edgemtl.data import TaskData
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov
from edgemtl.model.checkpoint import save
from edgemtl.model.contract import example_input
from edgemtl.model.resize import layer_widths
from edgemtl.model.spec import ModelSpec
from edgemtl.model.width_masks import space_layers
from edgemtl.model.widths import WidthConfig, WidthSpace, channels_at
from edgemtl.passes.base import PassInput, PassResult
from edgemtl.training.slimmable import recalibrate_batchnorm

SLICED_CHECKPOINT = "model/sliced.pt"   # where `run` writes the narrow model in a bundle
Statistics = dict[str, tuple[torch.Tensor, torch.Tensor]]   # BatchNorm path -> (running_mean, running_var)
RECALIBRATION_BATCHES, RECALIBRATION_BATCH_SIZE = 16, 32      # training images a narrow width's statistics come from


@dataclass(frozen=True)
class SliceConfig:
    """Which configuration to cut: `widths` (None: the widest, i.e. the full model) and where it came from."""

    widths: WidthConfig | None = None
    source: str = "the width configuration"   # named in errors: "width configuration config.json"

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
    channels: dict[str, list[int]]        # layer -> [output channels before, after] (the coupled layers too)
    batchnorm_statistics: str             # "sliced" (the full model's, leading channels) or "per-width" (recalibrated)
    seconds: float
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_manifest(self) -> dict[str, Any]:
        return {**self.to_dict(), "cost_provenance": prov("static", source="edgemtl analysis", detail="counted, batch 1")}


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
    narrow, narrow_spec, _ = _slice(model, spec, widths, data)
    return narrow, narrow_spec


def _slice(model: nn.Module, spec: ModelSpec, widths: WidthConfig,
           data: TaskData | None = None) -> tuple[nn.Module, ModelSpec, str]:
    """`slice_model`, and which BatchNorm statistics the narrow model carries ("sliced" or "per-width")."""
    space = slimmable_space(spec)
    widths = space.check(widths)
    narrow = copy.deepcopy(model).eval()
    targets = _layer_targets(narrow, space, widths)
    graph = _dependency_graph(narrow, spec)
    for name, (_, keep) in targets.items():
        layer = narrow.get_submodule(name)
        current = _out_channels(layer)
        if current > keep:
            group = graph.get_pruning_group(layer, _pruner(layer), idxs=list(range(keep, current)))
            if not graph.check_pruning_group(group):
                raise EdgemtlError(f"cannot slice {name} to {keep} channels: a layer coupled with it would lose all "
                                   "of its channels")
            group.prune()
    _check_coupling(narrow, targets)
    statistics = per_width_statistics(narrow, spec, widths, data)
    if statistics is not None:
        _load_statistics(narrow, statistics)
    _check_outputs(narrow, spec)
    return narrow, spec.model_copy(update={"widths": None, "sliced_at": widths}), \
        "sliced" if statistics is None else "per-width"


def run(inputs: PassInput, config: SliceConfig) -> PassResult[nn.Module]:
    """The pass on a flow's model: later steps compile the narrow model; its checkpoint joins the bundle."""
    started = time.perf_counter()
    space = slimmable_space(inputs.spec, config.source)
    widths = space.check(config.widths, config.source) if config.widths is not None else space.widest()
    data = None
    if inputs.source is not None and widths != space.widest():   # this width's own BatchNorm statistics
        data = inputs.source.load("train", n=RECALIBRATION_BATCHES * RECALIBRATION_BATCH_SIZE)
    narrow, spec, statistics = _slice(inputs.model, inputs.spec, widths, data)
    before = inputs.cost if inputs.cost is not None else model_cost(inputs.model, inputs.spec)
    after = model_cost(narrow, spec)
    widths_before, widths_after = layer_widths(inputs.model), layer_widths(narrow)
    record = SliceRecord(
        widths=widths.model_dump(), source=config.source,
        macs_before=before.all_tasks.macs, macs_after=after.all_tasks.macs,
        params_before=before.total_params, params_after=after.total_params,
        channels={name: [width, widths_after[name]] for name, width in widths_before.items()
                  if widths_after[name] != width},
        batchnorm_statistics=statistics, seconds=time.perf_counter() - started,
        artifacts={} if inputs.bundle is None else {"checkpoint": SLICED_CHECKPOINT})
    if inputs.bundle is not None:
        save(narrow, spec, inputs.bundle / SLICED_CHECKPOINT, meta={"slice_widths": record.to_dict()})
    return PassResult(narrow, spec, record)


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


def _pruner(module: nn.Module) -> Callable:
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels
