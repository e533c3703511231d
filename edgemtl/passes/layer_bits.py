"""Per-layer bit widths as data: the widths the FPGA flow chose for each task, written to the bundle's
`layer_bits.json` and read back by `compile --layer-bits FILE.json`, so a hardware team can pin them.

A file names the model it was made for by a fingerprint of its compute layers (names and weight shapes): a pruned,
sliced or other model has other layers, and widths chosen for it would be pinned to the wrong ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec

FORMAT = "edgemtl-layer-bits/1"
BITS_RANGE = (2, 16)   # what the FPGA flow's quantizers (brevitas, hls4ml ap_fixed) take, weights and activations
PRECISIONS = ("w4a4", "w8a8")
TaskBits = dict[str, Any]  # {"precision": "w4a4", "layers": {layer: (weight bits, act bits)}}


def compute_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's conv / linear layers by name: what a bit width can be set on."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
    return {name: module for name, module in model.named_modules() if isinstance(module, kinds)}


def fingerprint(model: nn.Module) -> str:
    """sha256 of every compute layer's name and weight shape, in order."""
    text = ";".join(f"{name}:{tuple(module.weight.shape)}" for name, module in compute_layers(model).items())
    return hashlib.sha256(text.encode()).hexdigest()


def write_layer_bits(path: Path, model: nn.Module, spec: ModelSpec, tasks: dict[str, TaskBits]) -> None:
    data = {"format": FORMAT, "model": {"arch": spec.arch, "compute_layers_sha256": fingerprint(model)},
            "tasks": {task: {"precision": bits["precision"],
                             "layers": {layer: list(pair) for layer, pair in bits["layers"].items()}}
                      for task, bits in tasks.items()}}
    path.write_text(json.dumps(data, indent=2))


def read_layer_bits(path: Path, model: nn.Module, spec: ModelSpec) -> dict[str, TaskBits]:
    """The per-task widths in `path`, checked against this model: its format, the model it was made for, its task
    and layer names, and bits the FPGA flow supports; anything else is one line naming what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgemtlError(f"--layer-bits {path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tasks"), dict):
        raise EdgemtlError(f"--layer-bits {path}: not an edgemtl layer_bits.json (format {FORMAT}, as a zcu104 bundle "
                           "writes it)")
    if data.get("model", {}).get("compute_layers_sha256") != fingerprint(model):
        raise EdgemtlError(f"--layer-bits {path} was written for another model (its layers differ from this one's): "
                           "use the layer_bits.json of a bundle compiled from this model")
    layers, tasks = compute_layers(model), {}
    low, high = BITS_RANGE
    for task, entry in data["tasks"].items():
        if task not in spec.task_names:
            raise EdgemtlError(f"--layer-bits {path} names unknown task {task!r}; this model has {', '.join(spec.task_names)}")
        if entry.get("precision") not in PRECISIONS:
            raise EdgemtlError(f"--layer-bits {path}: task {task!r} has precision {entry.get('precision')!r}; "
                               f"valid: {', '.join(PRECISIONS)}")
        pairs = {}
        for layer, pair in entry.get("layers", {}).items():
            if layer not in layers:
                raise EdgemtlError(f"--layer-bits {path}: task {task!r} names unknown layer {layer!r}")
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(b, int) and low <= b <= high for b in pair)):
                raise EdgemtlError(f"--layer-bits {path}: layer {layer!r} of task {task!r} has {pair!r}; the FPGA flow "
                                   f"takes [weight bits, act bits] in {low}..{high}")
            pairs[layer] = (pair[0], pair[1])
        tasks[task] = {"precision": entry["precision"], "layers": pairs}
    return tasks
