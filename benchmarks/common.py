"""What the benchmarks share: the trained model they start from, and how a metric change is graded."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from edgemtl.data import data_spec, load_data
from edgemtl.model.checkpoint import save
from edgemtl.model.zoo import build_model, zoo_spec
from edgemtl.training import TrainConfig, train


def relative_change(before: float, after: float, higher_is_better: bool) -> float:
    """Positive = worse, relative to `before`."""
    worse = (before - after) if higher_is_better else (after - before)
    return worse / abs(before) if before else 0.0


def trained_checkpoint(checkpoint: Path | None, train_steps: int, config: dict | None = None,
                       console: Console | None = None) -> Path:
    """`checkpoint` when that file exists; else mtl-cnn (zoo config + `config`) trained on scenes with seed 0
    for `train_steps`, saved there (or in a temporary folder) so that a re-run can reuse it."""
    if checkpoint is not None and checkpoint.is_file():
        return checkpoint
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec("mtl-cnn", input_spec, tasks, config or {}, data="scenes")
    torch.manual_seed(0)
    model = build_model(spec)
    (console or Console()).print(f"training mtl-cnn ({train_steps} steps, seed 0) ...")
    train(model, spec, load_data("scenes", "train"), TrainConfig(steps=train_steps, seed=0))
    return save(model, spec, checkpoint or Path(tempfile.mkdtemp()) / "mtl-cnn.pt", meta={"train_steps": train_steps})


def machine_load() -> dict[str, object]:
    """The load when a benchmark ends: its wall times are only comparable between runs on a machine as quiet."""
    one, five, fifteen = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_average_1_5_15_min": [round(one, 2), round(five, 2), round(fifteen, 2)]}
