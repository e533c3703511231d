"""Run a slimmable model at any configuration of its width space without rebuilding it (docs/widths.md).

Slimmable training visits several width configurations per step; building a narrow model for each (what the
slice_widths pass does for one configuration) would copy every weight each time. `WidthMasks` instead hooks the
full model: at a configuration, every conv / linear layer the width space names, and every layer coupled with it
(the BatchNorms after it, the other side of a residual add), outputs zeros in its trailing channels, keeping the
LEADING `channels_at(full, multiplier)` as slicing does. A zero channel contributes nothing to the next layer, to a
residual add, to an upsampling, a concatenation or a pooling, so the masked forward computes exactly what the sliced
model computes (tested against slice_widths). Which layers are coupled comes from torch-pruning's dependency graph,
the same graph slicing prunes with.

BatchNorm running statistics at a configuration (the narrow activations differ from the wide ones) are kept in one
of two ways (`bn`):
- "recalibrate" (post-hoc recalibration, the default): only the widest configuration updates the running statistics
  during training (they are the checkpoint's own); a narrow configuration gets its statistics afterwards from a few
  batches of training data (`edgemtl.training.slimmable.recalibrate_batchnorm`, which slicing runs on the narrow
  model).
- "switchable": separate running statistics per BatchNorm and per width of that BatchNorm (one set per multiplier of
  the stage or decoder it belongs to); the full width's set is the module's own buffers.
In both, the trailing channels of a masked BatchNorm keep their statistics (a zeroed channel's would decay to 0).

Private per-width affines (`edgemtl.model.width_affine`): a model that carries them (or masks after
`enable_affine()`, as slimmable training calls it) applies, at a narrower width, each masked BatchNorm's affine for its
kept channels and each decoder output layer's affine for its decoder's multiplier, as slicing folds them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import weakref
from typing import Callable, Iterator

import torch
import torch_pruning as tp
from torch import nn

from edgemtl.errors import EdgemtlError
from edgemtl.model.contract import example_input
from edgemtl.model.spec import ModelSpec
from edgemtl.model.width_affine import WidthAffine, apply_affine, norm_key, output_key, width_affines
from edgemtl.model.widths import WidthConfig, WidthSpace, channels_at

BN_MODES = ("recalibrate", "switchable")
_MASKED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


class WidthMasks:
    """Forward hooks that run `model` at a width configuration of `spec.widths`: `with masks.at(config): model(x)`.

    Outside `at(...)` the model runs at full width, untouched. `remove()` takes the hooks off."""

    def __init__(self, model: nn.Module, spec: ModelSpec, bn: str = "recalibrate") -> None:
        if spec.widths is None:
            raise EdgemtlError(f"this {spec.arch} model's spec has no width space: it is not slimmable")
        if bn not in BN_MODES:
            raise EdgemtlError(f"unknown BatchNorm statistics mode {bn!r}; choose {' or '.join(BN_MODES)}")
        self.model, self.space, self.bn = model, spec.widths, bn
        self.names = {module: name for name, module in model.named_modules()}
        self.targets = space_layers(model, self.space)        # layer name -> (group kind, group name)
        self._graph = _graph(model, spec)
        self._cache: dict[tuple[str, int], dict[nn.Module, torch.Tensor]] = {}
        self.active: dict[nn.Module, torch.Tensor] = {}     # module -> channel mask (1 kept, 0 silenced)
        self.widest = True
        self.config: WidthConfig | None = None
        self.outputs = decoder_outputs(model, self._graph, self.targets)   # layer name -> its decoder
        self._output_modules = {model.get_submodule(name): (name, group) for name, group in self.outputs.items()}
        self.affine = WidthAffine(self.affine_shapes(), width_affines(model)) if width_affines(model) else None
        self.switchable: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (bn, kept) -> (mean, var)
        self._saved: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = []
        self._token = next(_TOKENS)
        for module in self.names:
            _OWNERS[module] = self
            if isinstance(module, _MASKED):
                self._handles.append(module.register_forward_hook(functools.partial(_output_hook, self._token)))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                self._handles.append(module.register_forward_pre_hook(functools.partial(_norm_hook, self._token)))

    # --- configurations -------------------------------------------------------------------------------------------
    def masks(self, config: WidthConfig) -> dict[nn.Module, torch.Tensor]:
        """Every masked module at `config` -> its channel mask (modules at full width are left out)."""
        config = self.space.check(config)
        masks: dict[nn.Module, torch.Tensor] = {}
        for name, (kind, group) in self.targets.items():
            multiplier = (config.encoder if kind == "stage" else config.decoders)[group]
            layer = self.model.get_submodule(name)
            full = _out_channels(layer)
            keep = channels_at(full, multiplier)
            if keep < full:
                for module, mask in self._group_masks(name, layer, keep, full).items():
                    masks[module] = masks[module] * mask if module in masks else mask
        return masks

    def _group_masks(self, name: str, layer: nn.Module, keep: int, full: int) -> dict[nn.Module, torch.Tensor]:
        key = (name, keep)
        if key not in self._cache:
            group = self._graph.get_pruning_group(layer, out_pruner(layer), idxs=list(range(keep, full)))
            found: dict[nn.Module, torch.Tensor] = {}
            for dep, idxs in group:
                module = dep.target.module
                if isinstance(module, _MASKED) and "out" in getattr(dep.handler, "__name__", ""):
                    mask = torch.ones(_out_channels(module))
                    mask[[int(i) for i in idxs]] = 0
                    found[module] = mask
            self._cache[key] = found
        return self._cache[key]

    @contextlib.contextmanager
    def at(self, config: WidthConfig) -> Iterator[None]:
        """Run the model at `config` inside the block."""
        previous = self.active, self.widest, self.config
        self.config = self.space.check(config)
        self.active = self.masks(self.config)
        self.widest = not self.active
        try:
            yield
        finally:
            self.active, self.widest, self.config = previous

    # --- private affines ------------------------------------------------------------------------------------------
    def affine_shapes(self) -> dict[str, int]:
        """Every private affine this space can use -> its channels: each masked BatchNorm (with an affine) at each
        narrower width it takes, each decoder output layer at each narrower multiplier of its decoder."""
        shapes: dict[str, int] = {}
        for name, (kind, group) in self.targets.items():
            options = (self.space.stages if kind == "stage" else self.space.decoders)[group]
            layer = self.model.get_submodule(name)
            full = _out_channels(layer)
            for multiplier in options.multipliers[:-1]:
                keep = channels_at(full, multiplier)
                for module, mask in self._group_masks(name, layer, keep, full).items() if keep < full else ():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                        shapes[norm_key(self.names[module], int(mask.sum()))] = module.num_features
        for name, group in self.outputs.items():
            for multiplier in self.space.decoders[group].multipliers[:-1]:
                shapes[output_key(name, multiplier)] = _out_channels(self.model.get_submodule(name))
        return shapes

    def enable_affine(self) -> WidthAffine:
        """Private affines for every narrower width (kept where the model already has them): slimmable training
        trains them with the model."""
        if self.affine is None:
            self.affine = WidthAffine(self.affine_shapes(), width_affines(self.model))
        return self.affine

    def _affine_for(self, module: nn.Module, mask: torch.Tensor | None) -> torch.Tensor | None:
        if self.affine is None or self.widest:
            return None
        if mask is not None and isinstance(module, nn.modules.batchnorm._BatchNorm):
            return self.affine.get(norm_key(self.names[module], int(mask.sum())))
        output = self._output_modules.get(module)
        if output is not None and self.config is not None:
            return self.affine.get(output_key(output[0], self.config.decoders[output[1]]))
        return None

    def kept(self, module: nn.Module) -> int:
        """Output channels `module` keeps at the active configuration."""
        mask = self.active.get(module)
        return _out_channels(module) if mask is None else int(mask.sum())

    def statistics(self, config: WidthConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each BatchNorm's running statistics at `config`, over its kept channels (the shapes the sliced model has):
        the switchable set, or the module's own (after `recalibrate_batchnorm` under `at(config)`)."""
        result = {}
        with self.at(config):
            for module, name in self.names.items():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                    mask = self.active.get(module)
                    mean, var = self._stored(module)
                    keep = slice(None) if mask is None else mask.bool()
                    result[name] = (mean[keep].clone(), var[keep].clone())
        return result

    def _stored(self, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.active.get(norm)
        if self.bn == "switchable" and mask is not None:
            return self.switchable.get((self.names[norm], int(mask.sum())), (norm.running_mean, norm.running_var))
        return norm.running_mean, norm.running_var

    # --- hooks ----------------------------------------------------------------------------------------------------
    def _mask_output(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module in self._saved:
            self._after_norm(module)
        mask = self.active.get(module)
        affine = self._affine_for(module, mask)
        if mask is not None:
            output = output * mask.to(output.dtype).view(1, -1, *([1] * (output.dim() - 2)))
        if affine is not None:
            output = apply_affine(output, affine, -1 if isinstance(module, nn.Linear) else 1, mask)
        return output if mask is not None or affine is not None else None

    def _before_norm(self, norm: nn.Module, inputs: tuple) -> None:
        """At a narrow configuration: swap in this width's statistics (switchable), or remember the module's own so
        that a training step leaves them as they were (recalibrate)."""
        if self.widest:
            return
        mask = self.active.get(norm)
        if self.bn == "switchable":
            if mask is None:
                return   # a full-width BatchNorm: its own buffers are its full-width set
            self._saved[norm] = (norm.running_mean, norm.running_var)
            mean, var = self._stored(norm)
            norm.running_mean, norm.running_var = mean.clone(), var.clone()
        elif norm.training:
            self._saved[norm] = (norm.running_mean, norm.running_var)
            norm.running_mean, norm.running_var = norm.running_mean.clone(), norm.running_var.clone()

    def _after_norm(self, norm: nn.Module) -> None:
        own_mean, own_var = self._saved.pop(norm)
        mask = self.active.get(norm)
        if self.bn == "switchable":
            self.switchable[(self.names[norm], int(mask.sum()))] = (norm.running_mean, norm.running_var)
        elif self._recalibrating:
            if mask is None:
                return
            keep = mask.bool()   # the kept channels learn, the silenced ones keep their statistics
            own_mean = torch.where(keep, norm.running_mean, own_mean)
            own_var = torch.where(keep, norm.running_var, own_var)
        # new tensors, not in-place copies: autograd may hold the ones the forward used (replacing a buffer is safe)
        norm.running_mean, norm.running_var = own_mean, own_var

    _recalibrating = False

    @contextlib.contextmanager
    def recalibrating(self) -> Iterator[None]:
        """Inside, a narrow configuration's forward in train mode updates the running statistics of its kept
        channels (post-hoc recalibration); outside, only the widest configuration does."""
        self._recalibrating = True
        try:
            yield
        finally:
            self._recalibrating = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self.names:
            if _OWNERS.get(module) is self:
                del _OWNERS[module]


# The hooks are plain functions that find their masks here, so that a deep copy of a hooked model (slice_widths
# copies before slicing) copies no masks: its modules are not in this table, and the hooks do nothing there. Each
# hook carries its masks' token: a model hooked twice (masks made again without `remove()`) is run by the newest
# masks only, once (the private affines are not idempotent as the masks are).
_OWNERS: "weakref.WeakKeyDictionary[nn.Module, WidthMasks]" = weakref.WeakKeyDictionary()
_TOKENS = itertools.count()


def _output_hook(token: int, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
    owner = _OWNERS.get(module)
    return None if owner is None or owner._token != token else owner._mask_output(module, inputs, output)


def _norm_hook(token: int, module: nn.Module, inputs: tuple) -> None:
    owner = _OWNERS.get(module)
    if owner is not None and owner._token == token:
        owner._before_norm(module, inputs)


def space_layers(model: nn.Module, space: WidthSpace) -> dict[str, tuple[str, str]]:
    """Every conv / linear layer the width space names -> ("stage" or "decoder", its group's name): the one reading of
    the space's module prefixes, so masking (training) and slicing (compile) act on the same layers."""
    layers = {name for name, module in model.named_modules() if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))}
    groups = [("stage", n, o) for n, o in space.stages.items()] + [("decoder", n, o) for n, o in space.decoders.items()]
    targets: dict[str, tuple[str, str]] = {}
    for kind, group, options in groups:
        owner = f"{'encoder stage' if kind == 'stage' else 'decoder'} {group!r}"
        for prefix in options.modules:
            matched = [name for name in layers if name == prefix or name.startswith(prefix + ".")]
            if not matched:
                raise EdgemtlError(f"the width space's {owner} names {prefix!r}, which holds no conv or linear layer "
                                   "of this model: its convs cannot be sliced")
            for name in matched:
                if name in targets and targets[name] != (kind, group):
                    raise EdgemtlError(f"layer {name} belongs to two groups of the width space ({targets[name][1]!r} "
                                       f"and {group!r})")
                targets[name] = (kind, group)
    return targets


def decoder_outputs(model: nn.Module, graph: tp.DependencyGraph, targets: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Each decoder's output layers -> the decoder: the conv / linear layers outside the width space that read a
    decoder layer's channels (a dense head's final conv). Their output width is the task's, never sliced, but what
    they read shrinks with the decoder."""
    names = {module: name for name, module in model.named_modules()}
    found: dict[str, str] = {}
    for name, (kind, group) in targets.items():
        if kind != "decoder":
            continue
        layer = model.get_submodule(name)
        for dep, _ in graph.get_pruning_group(layer, out_pruner(layer), idxs=[0]):
            module = dep.target.module
            readable = isinstance(module, nn.Linear) or (isinstance(module, nn.modules.conv._ConvNd) and not module.transposed)
            if readable and names.get(module) not in targets and "in_channels" in getattr(dep.handler, "__name__", ""):
                found[names[module]] = group
    return found


def out_pruner(layer: nn.Module) -> Callable:
    """torch-pruning's handler removing a conv or linear layer's output channels."""
    return tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels


def _graph(model: nn.Module, spec: ModelSpec) -> tp.DependencyGraph:
    with torch.enable_grad():  # torch-pruning traces through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(spec, batch=1))


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return module.out_channels
