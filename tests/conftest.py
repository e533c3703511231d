"""Shared fixtures: tiny zoo models (random weights) and their checkpoints, small enough for a fast suite; and the
CI rule that a skipped check is a failed check (ci_skip_rule.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgemtl.data import data_spec
from edgemtl.model.checkpoint import save
from edgemtl.model.spec import ModelSpec
from edgemtl.model.zoo import build_model, zoo_spec

TINY_CONFIG = {
    "mtl-cnn": {"width": 4, "blocks": [1, 1, 1], "head_width": 4},
    "m3vit": {"dim": 16, "depth": 2, "heads": 2, "num_experts": 4, "top_k": 2, "task_dim": 4, "head_width": 4},
}


def tiny_model(arch: str, data: str = "scenes", seed: int = 0) -> tuple[torch.nn.Module, ModelSpec]:
    input_spec, tasks = data_spec(data)
    spec = zoo_spec(arch, input_spec, tasks, TINY_CONFIG[arch], data=data)
    torch.manual_seed(seed)
    return build_model(spec).eval(), spec


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per zoo architecture, on scenes."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for arch in TINY_CONFIG:
        model, spec = tiny_model(arch)
        paths[arch] = save(model, spec, folder / f"{arch}.pt")
    return paths


# Let tests name their own models as `--model-factory custom_models:<function>`.
import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from ci_skip_rule import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401
