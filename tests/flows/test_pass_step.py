"""The one step adapter: `pass_step` runs a registered pass on the flow's context, writes its record under
manifest["passes"][name], hands a changed model to later steps and what it built to the flow's `keep` hook."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_model

from edgemtl.compile import compile_steps
from edgemtl.data import load_data
from edgemtl.flow import CompileOptions, FlowContext, FlowState, Skipped
from edgemtl.flows.experts import partition_step
from edgemtl.flows.passes import pass_step
from edgemtl.model.checkpoint import LoadedModel
from edgemtl.model.spec import ModelSpec
from edgemtl.passes.base import PassInfo, PassInput, PassRequest, PassResult
from edgemtl.passes.partition_experts import PartitionConfig, TaskExpertPath
from edgemtl.passes.prune_pagcp import PAGCPConfig
from edgemtl.passes.registry import PASSES
from edgemtl.targets import load_target


@dataclass(frozen=True)
class EchoConfig:
    replace_model: bool = False

    def check(self, spec: ModelSpec) -> None:
        """Nothing to check."""


@dataclass
class EchoRecord:
    tasks: list[str]

    def to_manifest(self) -> dict[str, Any]:
        return {"tasks": self.tasks}


def run(inputs: PassInput, config: EchoConfig) -> PassResult[str]:
    """The fake pass: each task's name as what it built; a copy of the model when asked to replace it."""
    model = copy.deepcopy(inputs.model) if config.replace_model else inputs.model
    return PassResult(model, inputs.spec, EchoRecord(list(inputs.tasks)), {t: t.upper() for t in inputs.tasks})


@pytest.fixture()
def echo(monkeypatch):
    monkeypatch.setitem(PASSES, "echo", PassInfo("echo", EchoConfig, __name__, "echoes the task names"))
    monkeypatch.setitem(sys.modules, __name__, sys.modules[__name__])  # `run` is found by module name


def context(arch: str, tmp_path: Path, **options: Any) -> FlowContext:
    model, spec = tiny_model(arch)
    loaded = LoadedModel(model, spec, tmp_path / "model.pt", "0" * 64, "checkpoint")
    manifest: dict[str, Any] = {"tasks": {t: {} for t in spec.task_names}, "model": {}}
    return FlowContext(loaded, load_target("host"), CompileOptions(**options), tmp_path, manifest,
                       state=FlowState(tasks=spec.task_names))


def test_the_adapter_writes_the_record_and_hands_over_what_the_pass_built(echo, tmp_path):
    ctx = context("mtl-cnn", tmp_path)
    kept = {}
    step = pass_step("echo", tasks=lambda c: c.state.tasks[:2], keep=lambda c, result: kept.update(result.paths))
    model = ctx.loaded.model
    assert step(ctx) is None and step.__doc__ == "echoes the task names" and step.__name__ == "echo"
    assert ctx.manifest["passes"]["echo"] == {"tasks": ["segmentation", "depth"]}
    assert kept == {"segmentation": "SEGMENTATION", "depth": "DEPTH"} and ctx.loaded.model is model
    pass_step("echo", config=lambda c: EchoConfig(replace_model=True))(ctx)
    assert ctx.loaded.model is not model  # later steps see the model the pass made


def test_a_flow_that_cannot_use_a_pass_records_why_and_skips(echo, tmp_path):
    ctx = context("mtl-cnn", tmp_path)
    outcome = pass_step("echo", skip=lambda c: "not for this flow", keep=lambda c, r: pytest.fail("kept"))(ctx)
    assert outcome == Skipped("not for this flow") and ctx.manifest["passes"]["echo"] == {"skipped": "not for this flow"}


def test_a_compile_runs_its_requested_passes_first(echo, tmp_path):
    options = CompileOptions(passes=(PassRequest("echo", EchoConfig()), PassRequest("prune_pagcp", PAGCPConfig())))
    steps = compile_steps(load_target("host"), options)
    assert [name for name, _ in steps][:3] == ["echo", "prune_pagcp", "load_data"]
    assert steps[1][1].__doc__ == PASSES["prune_pagcp"].description


def test_partition_through_the_adapter_keeps_the_expert_paths_for_later_steps(tmp_path):
    ctx = context("m3vit", tmp_path, experts=PartitionConfig(calibration_samples=8))
    ctx.state.source = type("Source", (), {"reference": "scenes",
                                           "load": staticmethod(lambda split, n=None: load_data("scenes", split, n=8))})()
    assert partition_step(ctx) is None
    assert set(ctx.state.task_models) == set(ctx.state.tasks)
    assert all(isinstance(path, TaskExpertPath) for path in ctx.state.task_models.values())
    entry = ctx.manifest["passes"]["partition_experts"]
    assert entry["coverage"] == 0.95 and set(entry["tasks"]) == set(ctx.state.tasks) and "usage" not in entry
    assert set(ctx.manifest["moe"]) == {"expert_usage", "macs", "memory_plan"}
    assert all("expert_path" in ctx.manifest["tasks"][t] for t in ctx.state.tasks)
