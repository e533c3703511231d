"""Benchmark results say which code made them where (provenance), are written whole or not at all, and
their targets can fail: a target that holds by construction measures nothing."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from edgemtl.analysis.cost import path_cost
from edgemtl.model.contract import AllTasks, TaskPath, example_input
from edgemtl.model.zoo.m3vit import MLP, MoELayer

FOLDER = Path(__file__).parents[2] / "benchmarks"


def _script(name: str):
    """A benchmark script as a module, its helpers (common.py) importable as when it runs."""
    if str(FOLDER) not in sys.path:
        sys.path.insert(0, str(FOLDER))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ provenance

def test_results_carry_commit_command_machine_load_and_times(tmp_path):
    common = _script("common")
    run = common.start_run()
    path = common.write_results(tmp_path / "out" / "bench.json", {"targets": {"a": True}}, run)
    written = json.loads(path.read_text())
    stamp = written["provenance"]
    assert list(written) == ["provenance", "targets"]
    commit = stamp["commit"]
    if shutil.which("git") and (FOLDER.parent / ".git").exists():  # a source archive has no commit to name
        assert re.fullmatch(r"[0-9a-f]{40}", commit["sha"]) and isinstance(commit["dirty"], bool)
        assert commit["dirty"] == bool(commit["changes"]) and isinstance(commit["dirty_outside_results"], bool)
    else:
        assert commit["sha"] is None and commit["error"]
    assert stamp["command"]["argv"] == sys.argv and stamp["command"]["line"]
    machine = stamp["machine"]
    assert machine["cpu"] and machine["cpus"] >= 1 and machine["memory_bytes"] > 0 and machine["python"]
    assert machine["versions"]["torch"] == torch.__version__
    load = stamp["load_average_1_5_15_min"]
    assert len(load["start"]) == len(load["end"]) == 3 and all(v >= 0 for v in load["start"] + load["end"])
    assert stamp["started_utc"] <= stamp["ended_utc"] and stamp["wall_seconds"] >= 0


def test_a_commit_outside_git_is_none_not_a_guess(tmp_path):
    commit = _script("common").git_commit(tmp_path)
    assert commit["sha"] is None and commit["dirty"] is None and commit["error"]


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    common = _script("common")
    path = common.write_results(tmp_path / "bench.json", {"rows": [1]}, common.start_run())
    before = path.read_text()
    with pytest.raises(TypeError):
        common.write_results(path, {"rows": [object()]}, common.start_run())  # not JSON
    def full_disk(*_: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(common.os, "replace", full_disk)
        with pytest.raises(OSError, match="disk full"):  # the new file was written but never moved in
            common.write_results(path, {"rows": [2]}, common.start_run())
    with pytest.raises(ValueError, match="provenance"):
        common.write_results(path, {"provenance": "by hand"}, common.start_run())
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_every_benchmark_writes_through_the_helper():
    for script in sorted(FOLDER.glob("*.py")):
        if script.name == "common.py":
            continue
        text = script.read_text()
        assert "write_results(" in text and "start_run()" in text, script.name
        assert ".write_text(" not in text and "machine_load" not in text, script.name


# ------------------------------------------------------------------------------- arm64: shipped vs eager

def _arm64_row(ratio: float | None) -> dict:
    return {"shipped_over_pytorch_eager": ratio}


def test_arm64_shipped_vs_eager_target_can_fail():
    arm64 = _script("arm64")
    assert arm64.shipped_beats_eager({"seg": _arm64_row(0.2), "scene": _arm64_row(0.5)})
    assert not arm64.shipped_beats_eager({"seg": _arm64_row(0.2), "scene": _arm64_row(0.8)})  # only 1.25x faster
    assert not arm64.shipped_beats_eager({"seg": _arm64_row(None)})  # nothing shipped
    assert not arm64.shipped_beats_eager({})


# ------------------------------------------------------------------------------ moe: expert path vs dense

def _moe_ratios(**overrides: float) -> dict[str, float]:
    good = {"macs_over_dense_equal": 1.01, "latency_over_dense_equal": 1.2, "macs_over_dense_all_tasks": 0.6,
            "latency_over_dense_all_tasks": 0.8, "resident_over_dense_all_tasks": 1.5}
    return good | overrides


def test_moe_dense_comparison_targets_can_fail():
    moe = _script("moe")
    assert all(moe.comparison_targets({"seg": _moe_ratios(), "scene": _moe_ratios()}).values())
    for key, bad in (("macs_over_dense_equal", 1.2), ("latency_over_dense_equal", 2.0), ("macs_over_dense_all_tasks", 0.9),
                     ("latency_over_dense_all_tasks", 1.0), ("resident_over_dense_all_tasks", 3.0)):
        targets = moe.comparison_targets({"seg": _moe_ratios(), "scene": _moe_ratios(**{key: bad})})
        assert sum(not v for v in targets.values()) == 1, key
    assert not any(moe.comparison_targets({}).values())


def test_moe_ratios_divide_the_path_by_each_reference():
    moe = _script("moe")
    figures = lambda macs, params, resident, ms: {"macs": macs, "params": params, "resident_bytes": resident,  # noqa: E731
                                                  "latency_ms": {"median": ms}}
    ratios = moe.comparison_ratios(figures(10, 4, 8, 2.0), figures(10, 2, 4, 1.0), figures(20, 4, 16, 4.0))
    assert ratios == {"macs_over_dense_equal": 1.0, "params_over_dense_equal": 2.0, "resident_over_dense_equal": 2.0,
                      "latency_over_dense_equal": 2.0, "macs_over_dense_all_tasks": 0.5, "params_over_dense_all_tasks": 1.0,
                      "resident_over_dense_all_tasks": 0.5, "latency_over_dense_all_tasks": 0.5}


def test_dense_references_have_equal_per_token_compute_and_one_shared_backbone():
    moe = _script("moe")
    model, spec = tiny_model("m3vit")
    dense, x, names = moe.dense_equal_compute(model), example_input(spec), spec.task_names
    layers = [(b.mlp, d.mlp) for b, d in zip(model.blocks, dense.blocks) if isinstance(b.mlp, MoELayer)]
    assert layers and all(isinstance(d, MLP) and d.fc1.out_features == m.top_k * m.w1.shape[2] for m, d in layers)
    tokens = model.grid[0] * model.grid[1]
    router = sum(tokens * m.router.in_features * m.num_experts for m, _ in layers)
    shared = moe.SharedEncoder(dense, names)
    with torch.no_grad():
        together = shared(x)
        for task in names:  # the MoE path = the dense path + its router, MAC for MAC
            assert path_cost(TaskPath(model, task), x).macs == path_cost(TaskPath(dense, task), x).macs + router
            torch.testing.assert_close(together[task], dense(x, task=task)[task])
    backbone = path_cost(_Backbone(dense, names[0]), x).macs
    heads = [path_cost(TaskPath(dense, t), x).macs - backbone for t in names]
    assert path_cost(AllTasks(shared, names), x).macs == backbone + sum(heads)  # the backbone once, not per task


class _Backbone(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, task: str) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.backbone(x, self.task)


# ----------------------------------------------------------------------- gap9: a skipped compile is no pass

def test_gap9_default_compile_target_is_computed_not_assumed():
    gap9 = _script("gap9")
    row = {"change": 0.0, "host_bit_exact": True, "host_samples": 32, "qemu_bit_exact": True, "qemu_samples": 32,
           "placement": {"status": "fits-l2"}}
    key = "compile_under_5_min_default_settings"
    assert gap9.evaluate_targets({"seg": row}, 100.0, {}, {"ran": False, "skipped": "--no-default-compile"})[key] is None
    assert gap9.evaluate_targets({"seg": row}, 100.0, {}, {"ran": True, "seconds": 301.0})[key] is False
    assert gap9.evaluate_targets({"seg": row}, 100.0, {}, {"ran": True, "seconds": 135.0})[key] is True
