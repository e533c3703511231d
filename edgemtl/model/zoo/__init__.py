"""The built-in architectures, by name: each builds an `nn.Module` from a spec and a config dict."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import InputSpec, ModelSpec, TaskSpec
from edgemtl.model.widths import DEFAULT_MULTIPLIERS, WidthSpace
from edgemtl.model.zoo import m3vit, mtl_cnn

_BUILDERS: dict[str, tuple[Callable[[ModelSpec, dict[str, Any]], nn.Module], dict[str, Any]]] = {
    "mtl-cnn": (mtl_cnn.build, mtl_cnn.DEFAULT_CONFIG),
    "m3vit": (m3vit.build, m3vit.DEFAULT_CONFIG),
}
ARCHS = tuple(_BUILDERS)
# The architectures that know their slimmable width space (docs/widths.md): spec -> WidthSpace.
_WIDTH_SPACES: dict[str, Callable[[ModelSpec, tuple[float, ...]], WidthSpace]] = {"mtl-cnn": mtl_cnn.width_space}
# Config keys any architecture accepts: records of passes (e.g. the widths a pruned model was saved at).
RECORD_KEYS = ("widths",)
# Keys whose default changed: a saved config without the key was trained under the old value, which it keeps.
_LEGACY: dict[str, dict[str, Any]] = {"mtl-cnn": {}, "m3vit": m3vit.LEGACY_DEFAULTS}


def full_config(arch: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The architecture's default config with `overrides` applied; unknown keys are an error."""
    defaults = _defaults(arch)
    unknown = sorted(set(overrides or {}) - set(defaults) - set(RECORD_KEYS))
    if unknown:
        raise EdgemtlError(f"unknown {arch} config key(s) {', '.join(unknown)}; valid: {', '.join(defaults)}")
    return {**defaults, **(overrides or {})}


def saved_config(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """The full config a spec's (possibly older) config stands for: a key it lacks takes its legacy value where the
    default changed since (what the model was trained with), else the default."""
    return full_config(arch, {**_LEGACY.get(arch, {}), **config})


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate `spec.arch` with `spec.config` (weights random until a state_dict is loaded)."""
    builder, _ = _BUILDERS.get(spec.arch, (None, None))
    if builder is None:
        raise EdgemtlError(f"unknown architecture {spec.arch!r}; the zoo has {', '.join(ARCHS)}")
    try:
        return builder(spec, saved_config(spec.arch, spec.config))
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgemtlError(f"cannot build {spec.arch} from its config {spec.config}: {exc}") from None


def _defaults(arch: str) -> dict[str, Any]:
    if arch not in _BUILDERS:
        raise EdgemtlError(f"unknown architecture {arch!r}; the zoo has {', '.join(ARCHS)}")
    return dict(_BUILDERS[arch][1])


def zoo_spec(arch: str, input_spec: InputSpec, tasks: list[TaskSpec], overrides: dict[str, Any] | None = None,
             data: str | None = None) -> ModelSpec:
    """The spec of a zoo architecture for the given input and tasks (e.g. a built-in data set's)."""
    return ModelSpec(input=input_spec, tasks=tasks, arch=arch, config=full_config(arch, overrides), data=data)


def slimmable_spec(spec: ModelSpec, multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS) -> ModelSpec:
    """`spec` with its architecture's width space: what a slimmable checkpoint carries (never switched on by itself:
    a model trained at one width is not slimmable)."""
    derive = _WIDTH_SPACES.get(spec.arch)
    if derive is None:
        raise EdgemtlError(f"architecture {spec.arch!r} has no width space; slimmable zoo architectures: "
                           f"{', '.join(_WIDTH_SPACES)} (a model of your own declares `widths` in its spec file)")
    return spec.model_copy(update={"widths": derive(spec, multipliers)})
