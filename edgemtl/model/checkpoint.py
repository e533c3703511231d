"""Checkpoints: save and load multi-task models without running code from the file.

An edgemtl checkpoint is a `.pt` file holding one dict of plain values and tensors, so
`torch.load(weights_only=True)` reads it without unpickling any code:

    {"format": "edgemtl-checkpoint", "format_version": 1, "spec": ModelSpec as a dict,
     "arch": str, "config": dict, "state_dict": {name: tensor}, "meta": dict,
     "width_affine": {key: tensor}}   (a slimmable model's private per-width affines, if it has any)

Models outside the zoo come as a plain state_dict plus a spec file plus `--model-factory
package.module:function` (the user's own code, imported on purpose), or as `model.onnx` plus a spec file
(edgemtl.model.onnx_import). A fully pickled `nn.Module` is loaded only with `trust=True`, because
unpickling it runs code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgemtl.bundle import file_sha256, write_file_atomically
from edgemtl.errors import EdgemtlError, first_line
from edgemtl.model.contract import validate_model
from edgemtl.model.resize import fit_to_state_dict
from edgemtl.model.spec import ModelSpec, parse_model_spec, read_spec_file
from edgemtl.model.width_affine import set_width_affines, width_affines
from edgemtl.user_code import call_user, import_callable
from edgemtl.model.zoo import build_model

FORMAT = "edgemtl-checkpoint"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A model ready for the pipeline: the module (eval mode), its spec and where it came from."""

    model: nn.Module
    spec: ModelSpec
    path: Path
    sha256: str
    source: str  # "checkpoint" | "factory" | "pickled-module" | "onnx"
    details: dict[str, Any] = field(default_factory=dict)  # how the model was read (ONNX: conversion and its check)


def save(model: nn.Module, spec: ModelSpec, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write an edgemtl checkpoint atomically (a crash never leaves a truncated file at `path`)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.model_dump(mode="json"),
        "arch": spec.arch,
        "config": dict(spec.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
        **({"width_affine": width_affines(model)} if width_affines(model) else {}),
    }
    return _save_atomically(payload, path)


def save_state_dict(model: nn.Module, path: str | Path) -> Path:
    """A plain state_dict (what --model-factory reads), written atomically like a checkpoint."""
    return _save_atomically({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(path))


def _save_atomically(payload: Any, path: Path) -> Path:
    return write_file_atomically(path, lambda temporary: torch.save(payload, temporary))


def load(path: str | Path, *, factory: str | None = None, spec_path: str | Path | None = None,
         trust: bool = False) -> LoadedModel:
    """Load any model edgemtl accepts; every bad input raises `EdgemtlError` with one line."""
    path = Path(path)
    if not path.is_file():
        raise EdgemtlError(f"model file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, factory, spec_path)
    if factory is not None:
        if spec_path is None:
            raise EdgemtlError("--model-factory needs --spec FILE (YAML or TOML: input shape and tasks)")
        return _load_with_factory(path, factory, Path(spec_path))
    obj = _read_weights_only(path, trust)
    if isinstance(obj, nn.Module):
        if spec_path is None:
            raise EdgemtlError(f"{path} holds a pickled module: pass --spec FILE to describe its tasks")
        return _finish(obj, read_spec_file(Path(spec_path)), path, "pickled-module")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _load_checkpoint(obj, path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgemtlError(
            f"{path} is a plain state_dict, not an edgemtl checkpoint: pass --model-factory "
            "package.module:function and --spec FILE"
        )
    raise EdgemtlError(f"{path} is not an edgemtl checkpoint (expected a dict with format={FORMAT!r})")


# What a file that is not a PyTorch file usually is, by its first bytes.
_FOREIGN_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                  (b"{", "JSON or text"), (b"[", "JSON or text"), (b"\x93NUMPY", "a NumPy .npy array"),
                  (b"\x08", "an ONNX model? (name it .onnx)"), (b"\x7fELF", "a compiled binary"))


def _not_a_torch_file(path: Path) -> str | None:
    """Why `path` cannot be a PyTorch file (torch.save writes a zip, older versions a pickle), or None if it may be
    one: a JSON or an image named .pt must not be reported as "pickled objects, pass --trust"."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    kind = next((what for magic, what in _FOREIGN_MAGIC if head.startswith(magic)), None)
    if kind is None and head.strip() and all(b in b"\t\n\r" or 32 <= b < 127 for b in head):
        kind = "text"
    return f"{path} is not a PyTorch checkpoint: it looks like {kind or 'no known format'} (first bytes {head[:4]!r})"


def _read_weights_only(path: Path, trust: bool) -> Any:
    """torch.load without code execution; a pickled module is read only when the user trusts it."""
    foreign = _not_a_torch_file(path)
    if foreign is not None:
        raise EdgemtlError(foreign + "; pass an edgemtl checkpoint, a state_dict with --model-factory and --spec, or "
                                     "an .onnx file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Unsupported global" not in str(exc):
            raise EdgemtlError(f"{path} is corrupt or not a PyTorch file: {first_line(exc)}") from None
        if not trust:
            raise EdgemtlError(
                f"{path} contains pickled Python objects; loading it would run code from the file. "
                "Pass --trust if you trust its source, or save a state_dict with a spec instead"
            ) from None
    except Exception as exc:  # torch reports bad bytes as RuntimeError, EOFError, IndexError, ... (not one type)
        raise EdgemtlError(f"{path} is corrupt, truncated or not a PyTorch file: {first_line(exc)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # trusted unpickling can fail in any way the file's code chooses
        raise EdgemtlError(f"could not unpickle {path} (with --trust): {first_line(exc)}") from None


def _load_checkpoint(payload: dict[str, Any], path: Path) -> LoadedModel:
    if payload.get("format_version") != FORMAT_VERSION:
        raise EdgemtlError(
            f"{path} has checkpoint format version {payload.get('format_version')}; this edgemtl reads {FORMAT_VERSION}"
        )
    for key in ("spec", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise EdgemtlError(f"{path} is an edgemtl checkpoint without a valid {key!r} entry")
    spec = parse_model_spec(payload["spec"], str(path))
    model = build_model(spec)
    _load_state(model, payload["state_dict"], path)
    affines = payload.get("width_affine", {})
    if not isinstance(affines, dict) or not all(isinstance(v, torch.Tensor) and v.dim() == 2 for v in affines.values()):
        raise EdgemtlError(f"{path} is an edgemtl checkpoint with an invalid 'width_affine' entry")
    set_width_affines(model, affines)
    return _finish(model, spec, path, "checkpoint")


def _load_with_factory(path: Path, factory: str, spec_path: Path) -> LoadedModel:
    spec = read_spec_file(spec_path)
    model = factory_model(path, factory)
    spec = spec.model_copy(update={"arch": spec.arch if spec.arch != "custom" else f"factory:{factory}"})
    return _finish(model, spec, path, "factory")


def build_from_factory(factory: str) -> nn.Module:
    """The module the user's factory builds (its own initial weights)."""
    model = call_user(import_callable(factory, "the model factory"), factory, "the model factory")
    if not isinstance(model, nn.Module):
        raise EdgemtlError(f"the model factory {factory!r} returned {type(model).__name__}, not an nn.Module")
    return model


def factory_model(path: Path, factory: str) -> nn.Module:
    """The user's factory's module with the weights in `path` loaded (no spec needed yet)."""
    model = build_from_factory(factory)
    state = _read_weights_only(path, trust=False)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EdgemtlError(f"{path} must hold a state_dict (name -> tensor) for --model-factory")
    _load_state(model, state, path)
    return model


def _load_onnx(path: Path, factory: str | None, spec_path: str | Path | None) -> LoadedModel:
    from edgemtl.model.onnx_import import load_onnx_model

    if factory is not None:
        raise EdgemtlError(f"{path} is an ONNX model: it brings its own graph, leave out --model-factory")
    if spec_path is None:
        raise EdgemtlError(f"{path} is an ONNX model: pass --spec FILE naming its tasks (`edgemtl spec {path}` "
                           "writes a starter)")
    spec = read_spec_file(Path(spec_path))
    model, details = load_onnx_model(path, spec)
    spec = spec.model_copy(update={"arch": spec.arch if spec.arch != "custom" else f"onnx:{path.name}"})
    loaded = _finish(model, spec, path, "onnx")
    loaded.details = details
    return loaded


def _load_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    try:
        fit_to_state_dict(model, state)  # a pruned model's layers take their stored widths
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing, unexpected = _key_mismatch(model, state)
        detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise EdgemtlError(
            f"the weights in {path} do not fit the model: {detail.strip() or first_line(exc)}"
        ) from None


def _key_mismatch(model: nn.Module, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def _finish(model: nn.Module, spec: ModelSpec, path: Path, source: str) -> LoadedModel:
    model.eval()
    validate_model(model, spec)
    return LoadedModel(model=model, spec=spec, path=path, sha256=file_sha256(path), source=source)
