"""PAGCP: surgery correctness, the greedy stopping rule, the threshold schedule, the pass on a non-zoo model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import edgemtl
from conftest import tiny_model
from custom_models import TwoHeadUNet
from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.model.onnx_export import export_all_tasks
from edgemtl.data import TaskData, load_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec
from edgemtl.passes.prune_pagcp import PAGCPConfig, Surgeon, prune_pagcp, threshold_schedule

QUICK = dict(finetune_steps=2, final_finetune_steps=0, batch_size=8, oracle_samples=16, max_rounds=2, sparsity_steps=0)


@pytest.mark.parametrize("budget, count", [(0.1, 14), (1.0, 5), (0.02, 2)])
def test_thresholds_grow_and_compound_to_the_budget(budget, count):
    thresholds = threshold_schedule(budget, count)
    assert math.prod(1 + t for t in thresholds) == pytest.approx(1 + budget, rel=1e-9)
    assert all(b > a for a, b in zip(thresholds, thresholds[1:]))
    assert thresholds[0] == pytest.approx(budget / (2 * count))
    assert threshold_schedule(budget, 1) == [budget]


def test_generous_initial_threshold_gives_a_flat_schedule():
    thresholds = threshold_schedule(0.1, 4, initial=0.5)
    assert thresholds == pytest.approx([math.expm1(math.log1p(0.1) / 4)] * 4)


def test_surgery_keeps_coupled_channels_consistent_and_exports(tmp_path):
    model, spec = tiny_model("mtl-cnn")
    surgeon = Surgeon(spec)
    x = torch.randn(2, *spec.input.shape)
    with torch.no_grad():
        reference = model(x)
        unchanged = surgeon.remove(model, "encoder.stem.0", 0, idxs=[])(x)  # ratio 0: identical outputs
    assert all(torch.equal(reference[k], unchanged[k]) for k in reference)
    groups = surgeon.prunable_groups(model)
    assert "encoder.stem.0" in groups and not any(g.endswith("predict") or g.endswith("fc") for g in groups)
    pruned = model
    for group in groups:  # the residual stem/stage-1 group, the concatenated skips, every head input
        pruned = surgeon.remove(pruned, group, 1)
    assert pruned.encoder.stem[0].out_channels == model.encoder.stem[0].out_channels - 1
    assert pruned.heads["depth"].fuse[0].in_channels == pruned.heads["depth"].reduce[0].out_channels + pruned.encoder.stem[0].out_channels
    path = export_all_tasks(pruned, spec, spec.task_names, tmp_path / "pruned.onnx")
    got = ort_backend.run(ort_backend.make_session(path, 1), x.numpy())
    with torch.no_grad():
        expected = pruned(x)
    for task in spec.task_names:
        assert got[task].shape == (2, *spec.task(task).output_shape)
        np.testing.assert_allclose(got[task], expected[task].numpy(), rtol=1e-4, atol=1e-5)


class SensitiveChannels(nn.Module):
    """Trunk of 8 channels: 4-5 unused and weakest, 0-3 read by task `a` only, 6-7 strong but unused."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(1, 8, 1, bias=False)
        self.a, self.b = nn.Linear(8, 1), nn.Linear(8, 1)
        with torch.no_grad():
            self.trunk.weight.copy_(torch.tensor([0.05] * 4 + [0.01] * 2 + [1.0] * 2).view(8, 1, 1, 1))
            self.a.weight.copy_(torch.tensor([[0.05] * 4 + [0.0] * 4]))
            self.b.weight.zero_()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.trunk(x).mean(dim=(2, 3))
        return {"a": self.a(pooled), "b": self.b(pooled)}


def _regression_data(model: nn.Module, spec: ModelSpec, count: int = 32) -> TaskData:
    generator = np.random.default_rng(0)
    images = generator.uniform(0, 1, (count, *spec.input.shape)).astype(np.float32)
    with torch.no_grad():
        outputs = model(torch.from_numpy(images))
    targets = {"a": (outputs["a"].numpy() + 1e-4 * generator.standard_normal((count, 1))).astype(np.float32),
               "b": generator.standard_normal((count, 1)).astype(np.float32)}
    return TaskData("synthetic", "val", images, targets, spec.input, spec.tasks)


def test_greedy_stops_before_the_channels_one_task_needs():
    model = SensitiveChannels()
    spec = ModelSpec.model_validate({"input": {"shape": [1, 4, 4]}, "tasks": [
        {"name": "a", "kind": "regression", "output_shape": [1]},
        {"name": "b", "kind": "regression", "output_shape": [1]}]})
    data = _regression_data(model, spec)
    config = PAGCPConfig(flops_target=0.1, default_max_drop=0.05, keep_fraction=1.0, max_rounds=1,
                         finetune_steps=0, final_finetune_steps=0, oracle_samples=32, min_channels=1, channel_multiple=1,
                         sparsity_steps=0, min_share=0.0)
    pruned, _, record = prune_pagcp(model, spec, data, data, config, show_progress=False)
    kept = pruned.trunk.weight.view(-1)
    assert pruned.trunk.out_channels == 6  # the two weakest (unused) channels went ...
    assert torch.equal(kept[:4], torch.full((4,), 0.05))  # ... and every channel task `a` reads survived
    assert record.decisions[0].removed == [4, 5] and not record.target_reached


def _unet_data(spec: ModelSpec) -> TaskData:
    scenes = load_data("scenes", "val", n=48, image_size=32)
    targets = {"seg": scenes.targets["segmentation"] % 3, "depth": scenes.targets["depth"]}
    return TaskData("scenes32", "val", scenes.images, targets, spec.input, spec.tasks)


def test_pass_on_a_non_zoo_unet_with_skip_concatenations(tmp_path):
    torch.manual_seed(0)
    model = TwoHeadUNet().eval()
    spec = ModelSpec.model_validate({"input": {"shape": [3, 32, 32]}, "tasks": [
        {"name": "seg", "kind": "segmentation", "output_shape": [3, 32, 32]},
        {"name": "depth", "kind": "depth", "output_shape": [1, 32, 32]}], "arch": "factory:custom_models:unet_two_heads"})
    data = _unet_data(spec)
    config = PAGCPConfig(flops_target=0.8, default_max_drop=5.0, **QUICK)
    pruned, pruned_spec, record = prune_pagcp(model, spec, data, data, config, show_progress=False)
    assert record.macs_after < record.macs_before and record.params_after < record.params_before
    assert set(record.metrics_after) == {"seg", "depth"} and min(record.kept_ratios.values()) < 1
    assert pruned_spec.config["widths"]["dec2.0"] == pruned.dec2[0].out_channels
    assert all(p.requires_grad for p in model.parameters()) and model.enc1[0].out_channels == 8  # input untouched
    weights = tmp_path / "pruned_state.pt"
    torch.save(pruned.state_dict(), weights)  # a factory model's pruned weights load back at their widths
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(pruned_spec.model_dump_json())
    loaded = edgemtl.load(weights, factory="custom_models:unet_two_heads", spec_path=spec_file)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x)["depth"], pruned.eval()(x)["depth"])


class NoBatchNorm(nn.Module):
    """As a graph read from ONNX arrives (BatchNorms folded into the convs): no statistics to re-estimate."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.dense, self.value = nn.Conv2d(32, 2, 1), nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {"dense": self.dense(f), "value": self.value(f.mean((2, 3)))}


def test_a_task_without_labels_is_guarded_not_frozen():
    """Its loss is the distance to the unpruned model, exactly 0 at the start without BatchNorms to re-estimate: a
    budget relative to 0 would refuse every channel. The allowance starts from an NMSE floor (20 dB) instead."""
    torch.manual_seed(0)
    model = NoBatchNorm().eval()
    spec = ModelSpec.model_validate({"input": {"shape": [3, 32, 32]}, "tasks": [
        {"name": "dense", "kind": "raw", "output_shape": [2, 32, 32]},
        {"name": "value", "kind": "regression", "output_shape": [1]}]})
    scenes = load_data("scenes", "val", n=48, image_size=32)
    data = TaskData("own", "val", scenes.images, {"value": np.random.default_rng(0).normal(size=(48, 1)).astype(np.float32)},
                    spec.input, [spec.task("value")])
    config = PAGCPConfig(flops_target=0.6, default_max_drop=0.5, channel_multiple=1, min_share=0.0, **QUICK)
    pruned, _, record = prune_pagcp(model, spec, data, data, config, show_progress=False)
    assert record.macs_after < 0.9 * record.macs_before
    assert record.metrics_after["dense"]["sqnr_db_vs_float"] > 10  # still close to the unpruned model


def test_pruned_zoo_checkpoint_round_trip(tmp_path):
    model, spec = tiny_model("mtl-cnn")
    data = load_data("scenes", "val", n=32)
    pruned, pruned_spec, _ = prune_pagcp(model, spec, data, data, PAGCPConfig(flops_target=0.9, default_max_drop=5.0, **QUICK),
                                         show_progress=False)
    path = edgemtl.save(pruned, pruned_spec, tmp_path / "pruned.pt")
    loaded = edgemtl.load(path)
    x = torch.randn(1, *spec.input.shape)
    with torch.no_grad():
        a, b = pruned.eval()(x), loaded.model(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.spec.config["widths"] == pruned_spec.config["widths"]


@pytest.mark.parametrize("kwargs, message", [
    ({"flops_target": 1.2}, "strictly between 0 and 1"),
    ({"flops_target": 0.0}, "strictly between 0 and 1"),
    ({"max_drop": {"depth": -1}}, "must be positive"),
    ({"distill_weight": -0.5}, "distill_weight must be >= 0"),
    ({"guard": "loose"}, "unknown guard 'loose'"),
    ({"sparsity_steps": -1}, "sparsity_steps and sparsity_strength must be >= 0"),
    ({"min_share": 1.0}, "min_share must lie in"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(EdgemtlError, match=message):
        PAGCPConfig(**kwargs)


def test_batchnorm_recalibration_takes_the_plain_average_of_the_images():
    from edgemtl.passes.prune_pagcp import recalibrate_batchnorm
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3))
    images = torch.randn(40, 3, 8, 8) * 2 + 1
    recalibrate_batchnorm(model, images, batch_size=20)  # equal batches: the average of batch means is the mean
    features = model[0](images).detach()
    norm = model[1]
    assert torch.allclose(norm.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    # torch averages each batch's unbiased variance: close to, not exactly, the pooled variance
    assert torch.allclose(norm.running_var, features.var(dim=(0, 2, 3)), rtol=0.05)
    assert norm.momentum == 0.3 and not model.training


def test_a_group_that_reached_the_channel_multiple_is_not_pruned_further():
    """The 32-wide benchmark run cut a 64-channel stage to 2 channels over two rounds (64 -> 8, then 8 -> 2,
    because an 8-wide group fell under the rounding rule): a 2-channel bottleneck no fine-tuning recovers."""
    from edgemtl.passes.prune_pagcp import removable
    config = PAGCPConfig()
    assert removable(8, 0.9, config) == 0
    assert removable(64, 0.99, config) == 56 and removable(16, 0.5, config) == 8
    assert removable(4, 0.5, config) == 2  # groups born narrower than the multiple still prune (tiny models)


def test_filter_keeps_the_cheapest_removals_up_to_the_round_quota():
    from edgemtl.passes.prune_pagcp import LayerDecision, _filter
    # worst-task loss increase per MAC: a 0.1/100, b 0.5/100, c 0.01/100, d 0.2/100
    decisions = [LayerDecision(1, name, 8, 2, 0.25, {"t": 1 + increase}, 100.0)
                 for name, increase in (("a", 0.1), ("b", 0.5), ("c", 0.01), ("d", 0.2))]
    assert [d.group for d in _filter(decisions, 1.0, quota=150.0)] == ["a", "c"]
    assert [d.group for d in _filter(decisions, 0.75)] == ["a", "c", "d"]  # no quota: the paper's filter alone
    assert [d.group for d in _filter(decisions, 1.0, quota=0.0)] == ["c"]  # always at least one
    assert [d.kept_by_filter for d in decisions] == [False, False, True, False]


def test_round_targets_fall_geometrically_to_the_flops_target():
    from edgemtl.passes.prune_pagcp import round_target
    config = PAGCPConfig(flops_target=0.25, planned_rounds=2)
    assert [round_target(100.0, r, config) for r in (1, 2, 3)] == pytest.approx([50.0, 25.0, 25.0])
    assert round_target(100.0, 1, PAGCPConfig(flops_target=0.25, planned_rounds=0)) == pytest.approx(25.0)


class SummedChannels(nn.Module):
    """Task `a` is the sum of 8 trunk channels of growing weight: every removal costs `a` more loss than the last."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(1, 8, 1, bias=False)
        self.a, self.b = nn.Linear(8, 1, bias=False), nn.Linear(8, 1)
        with torch.no_grad():
            self.trunk.weight.copy_(torch.arange(1, 9, dtype=torch.float32).view(8, 1, 1, 1) / 10)
            self.a.weight.fill_(1.0)
            self.b.weight.zero_()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.trunk(x).mean(dim=(2, 3))
        return {"a": self.a(pooled), "b": self.b(pooled)}


def _summed_channels_run(guard: str, **overrides):
    model = SummedChannels()
    spec = ModelSpec.model_validate({"input": {"shape": [1, 4, 4]}, "tasks": [
        {"name": "a", "kind": "regression", "output_shape": [1]},
        {"name": "b", "kind": "regression", "output_shape": [1]}]})
    generator = np.random.default_rng(0)
    images = generator.uniform(0, 1, (32, 1, 4, 4)).astype(np.float32)
    with torch.no_grad():
        clean = model(torch.from_numpy(images))["a"].numpy()
    targets = {"a": (clean + generator.standard_normal((32, 1))).astype(np.float32),   # loss ~1 before pruning
               "b": generator.standard_normal((32, 1)).astype(np.float32)}
    data = TaskData("synthetic", "val", images, targets, spec.input, spec.tasks)
    config = PAGCPConfig(**{**dict(flops_target=0.05, default_max_drop=0.3, guard=guard, keep_fraction=1.0,
                                   planned_rounds=0, max_rounds=3, finetune_steps=0, final_finetune_steps=0,
                                   min_channels=1, channel_multiple=1, bn_recalibration_samples=0, sparsity_steps=0,
                                   min_share=0.0), **overrides})
    pruned, _, record = prune_pagcp(model, spec, data, data, config, show_progress=False)
    return pruned, record, data, spec


def _loss(model: nn.Module, data: TaskData) -> float:
    with torch.no_grad():
        prediction = model(torch.from_numpy(data.images))["a"]
    return float(torch.mean((prediction - torch.from_numpy(data.targets["a"])) ** 2))


def test_the_cumulative_guard_stops_where_the_per_round_one_would_not():
    """Without fine-tuning to win loss back, a per-round allowance lets every round add its +30% on top of the last;
    the cumulative one holds task `a` within +30% of the ORIGINAL model, so it stops after the first round."""
    original = _loss(SummedChannels(), _summed_channels_run("cumulative")[2])
    per_round, per_round_record, data, _ = _summed_channels_run("per-round")
    cumulative, cumulative_record, _, _ = _summed_channels_run("cumulative")
    assert cumulative.trunk.out_channels > per_round.trunk.out_channels
    assert _loss(cumulative, data) <= 1.3 * original < _loss(per_round, data)
    assert {d.round for d in per_round_record.decisions} > {1}            # the per-round guard pruned again later
    assert {d.round for d in cumulative_record.decisions} == {1}
    assert cumulative_record.stopped_by == {"a": 1}                      # and the record says which task stopped it


def test_a_task_at_its_cumulative_limit_allows_no_increase():
    from edgemtl.passes.prune_pagcp import allowances
    start, reference = {"a": 1.5, "b": 1.0}, {"a": 1.0, "b": 1.0}
    result = allowances(start, reference, {"a": 0.5, "b": 0.5}, 3, "cumulative")
    assert result["a"] == [1.5, 1.5, 1.5]
    assert result["b"][-1] == pytest.approx(1.5) and result["b"][0] < result["b"][1] < result["b"][2]
    per_round = allowances(start, reference, {"a": 0.5, "b": 0.5}, 3, "per-round")
    assert per_round["a"][-1] == pytest.approx(2.25)


def test_min_share_keeps_a_floor_of_every_group_whatever_the_budget():
    free = _summed_channels_run("cumulative", default_max_drop=1e6)[0]
    floored = _summed_channels_run("cumulative", default_max_drop=1e6, min_share=0.5)[0]
    assert free.trunk.out_channels < 4 and floored.trunk.out_channels == 4
