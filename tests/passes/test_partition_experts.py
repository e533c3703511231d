"""Expert-path partition: equivalence at full coverage, re-routing below it, export, bad requests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_model

from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.model.onnx_export import export_task
from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError
from edgemtl.passes.partition_experts import PartitionConfig, TaskExpertPath, partition_experts


@pytest.fixture(scope="module")
def calibration():
    return load_data("scenes", "train", n=8)


@pytest.fixture(scope="module")
def trained_router_model():
    """A tiny m3vit whose routers prefer a few experts per task, so partitioning really drops some."""
    model, spec = tiny_model("m3vit", seed=1)
    with torch.no_grad():
        for layer in model.moe_layers():
            layer.router.bias.copy_(torch.tensor([20.0, 20.0, -20.0, -20.0]))
    return model, spec


def test_full_coverage_path_equals_the_model_on_the_calibration_samples(trained_router_model, calibration):
    model, spec = trained_router_model
    paths, record, usage = partition_experts(model, spec, calibration, None, spec.task_names, PartitionConfig(coverage=1.0))
    images = torch.from_numpy(calibration.normalise(calibration.images))
    with torch.no_grad():
        for task in spec.task_names:
            kept = record.tasks[task].experts_kept
            assert kept == [usage.experts_covering(task, i, 1.0) for i in range(len(kept))]
            torch.testing.assert_close(paths[task](images)[task], model(images, task=task)[task], rtol=1e-5, atol=1e-5)
    # the routers were biased towards experts 0 and 1: the paths drop the other two and shrink
    assert all(entry.experts_kept == [[0, 1]] * len(model.moe_layers()) for entry in record.tasks.values())
    assert all(entry.params_after < entry.params_before and entry.macs_after <= entry.macs_before
               for entry in record.tasks.values())


def test_lower_coverage_keeps_fewer_experts_and_reroutes_among_them(calibration):
    model, spec = tiny_model("m3vit", seed=2)
    paths, record, _ = partition_experts(model, spec, calibration, calibration, ["depth"], PartitionConfig(coverage=0.5))
    entry = record.tasks["depth"]
    assert all(len(kept) < 4 for kept in entry.experts_kept)
    assert entry.rerouted_share is not None and 0 < entry.rerouted_share < 1
    assert entry.metric == "rmse" and entry.metric_before is not None and entry.metric_after is not None
    path = paths["depth"]
    images = torch.from_numpy(calibration.normalise(calibration.images[:2]))
    for layer, kept in zip(path.moe_layers(), entry.experts_kept):
        assert layer.num_experts == len(kept) and layer.kept_experts == kept
        _, combine = layer.gates(torch.randn(2, 5, layer.w1.shape[1]), path.task_vector)
        # every token still gets min(k, kept) experts, with weights renormalised to 1
        assert torch.allclose(combine.sum(-1), torch.ones(2, 5)) and int((combine[0, 0] > 0).sum()) == min(2, len(kept))
    assert torch.isfinite(path(images)["depth"]).all()


def test_a_task_a_lower_coverage_would_hurt_keeps_every_expert_it_uses(calibration):
    """The default coverage (0.95) drops experts only where the held-out loss stays within max_metric_change; here
    depth has no labels, so it is judged by 1 - cosine against the full model, which re-routing always raises."""
    model, spec = tiny_model("m3vit", seed=2)
    unlabelled = dataclasses.replace(calibration, targets={k: v for k, v in calibration.targets.items() if k != "depth"},
                                     tasks=[t for t in calibration.tasks if t.name != "depth"])
    lenient = partition_experts(model, spec, calibration, unlabelled, ["depth"],
                                PartitionConfig(coverage=0.5, max_metric_change=1.0))[1].tasks["depth"]
    assert lenient.coverage == 0.5 and lenient.fallback is None and any(len(k) < 4 for k in lenient.experts_kept)
    strict = partition_experts(model, spec, calibration, unlabelled, ["depth"],
                               PartitionConfig(coverage=0.5, max_metric_change=0.0))[1].tasks["depth"]
    full = partition_experts(model, spec, calibration, None, ["depth"], PartitionConfig(coverage=1.0))[1].tasks["depth"]
    assert strict.coverage == 1.0 and strict.experts_kept == full.experts_kept
    asked = partition_experts(model, spec, calibration, unlabelled, ["depth"],   # a coverage the user chose: as asked
                              PartitionConfig(coverage=0.5, max_metric_change=None))[1].tasks["depth"]
    assert asked.coverage == 0.5 and asked.fallback is None and asked.experts_kept == lenient.experts_kept
    assert strict.fallback.startswith("at coverage 0.5 the path lost") and "1 - cosine" in strict.fallback
    assert PartitionConfig().coverage == 0.95 and PartitionConfig().max_metric_change == 0.01


def test_expert_path_exports_to_onnx_and_matches(trained_router_model, calibration, tmp_path):
    model, spec = trained_router_model
    paths, _, _ = partition_experts(model, spec, calibration, None, ["segmentation"])
    onnx_path = export_task(paths["segmentation"], spec, "segmentation", tmp_path / "seg.onnx")
    images = calibration.normalise(calibration.images[:3]).astype(np.float32)
    got = ort_backend.run(ort_backend.make_session(onnx_path, 1), images)["segmentation"]
    with torch.no_grad():
        expected = paths["segmentation"](torch.from_numpy(images))["segmentation"].numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_path_serves_only_its_task(trained_router_model):
    model, _ = trained_router_model
    path = TaskExpertPath(model, "depth", [[0, 1]] * len(model.moe_layers()))
    with pytest.raises(EdgemtlError, match="serves task 'depth' only"):
        path(torch.zeros(1, 3, 64, 64), task="scene")


@pytest.mark.parametrize("coverage", [0.0, -0.1, 1.5])
def test_coverage_outside_zero_one_is_refused(trained_router_model, calibration, coverage):
    model, spec = trained_router_model
    with pytest.raises(EdgemtlError, match=r"coverage must lie in \(0, 1\]"):
        partition_experts(model, spec, calibration, None, ["depth"], PartitionConfig(coverage=coverage))


def test_unknown_task_is_refused(trained_router_model, calibration):
    model, spec = trained_router_model
    with pytest.raises(EdgemtlError, match="unknown task 'nope'.*segmentation"):
        partition_experts(model, spec, calibration, None, ["nope"])


def test_a_model_without_experts_has_nothing_to_partition(calibration):
    model, spec = tiny_model("mtl-cnn")
    with pytest.raises(EdgemtlError, match="nothing to partition"):
        partition_experts(model, spec, calibration, None, ["depth"])
