"""Shared fixtures: tiny zoo models (random weights) and their checkpoints, small enough for a fast suite; and the
CI rule that a skipped check is a failed check (ci_skip_rule.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgemtl.data import data_spec
from edgemtl.model.checkpoint import save
from edgemtl.model.spec import ModelSpec
from edgemtl.model.zoo import build_model, slimmable_spec, zoo_spec

TINY_CONFIG = {
    "mtl-cnn": {"width": 4, "blocks": [1, 1, 1], "head_width": 4},
    "m3vit": {"dim": 16, "depth": 2, "heads": 2, "num_experts": 4, "top_k": 2, "task_dim": 4, "head_width": 4},
}


def tiny_model(arch: str, data: str = "scenes", seed: int = 0) -> tuple[torch.nn.Module, ModelSpec]:
    input_spec, tasks = data_spec(data)
    spec = zoo_spec(arch, input_spec, tasks, TINY_CONFIG[arch], data=data)
    torch.manual_seed(seed)
    return build_model(spec).eval(), spec


def tiny_slimmable_model(seed: int = 0) -> tuple[torch.nn.Module, ModelSpec]:
    """A tiny slimmable mtl-cnn whose BatchNorms hold non-trivial statistics and affine terms (a random init's
    identity BatchNorms would hide a channel sliced or masked on one side of a coupling and not the other)."""
    model, spec = tiny_model("mtl-cnn", seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            for tensor, low, high in ((norm.running_mean, -1, 1), (norm.running_var, 0.5, 2),
                                      (norm.weight.data, 0.5, 1.5), (norm.bias.data, -0.5, 0.5)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model, slimmable_spec(spec)


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
