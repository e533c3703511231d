"""Shared fixtures: tiny zoo models (random weights) and their checkpoints, small enough for a fast suite; and the
CI rule that a skipped check is a failed check."""

from __future__ import annotations

import os
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


def in_ci() -> bool:
    """CI sets CI=true; there every tool the suite needs is installed by .ci/run, so a skip means a broken set-up."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that names the reason: a missing tool must make CI red, never quietly green."""
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI ({reason.removeprefix('Skipped: ')}): a CI run must run every check; "
                       ".ci/run installs every tool the suite needs")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ARG001
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # noqa: ARG001
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


# Let tests name their own models as `--model-factory custom_models:<function>`.
import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
