"""Slicing a slimmable model to one width configuration: real channels go (the leading ones stay), the narrow model
computes what the wide one computes with the trailing channels silenced, and it compiles like any model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_model, tiny_slimmable_model
from torch import nn

import edgemtl
from edgemtl.analysis.cost import model_cost
from edgemtl.compile import compile_model
from edgemtl.errors import EdgemtlError
from edgemtl.flow import CompileOptions
from edgemtl.model.checkpoint import save
from edgemtl.model.onnx_export import export_all_tasks
from edgemtl.model.widths import WidthConfig, WidthOptions
from edgemtl.model.zoo import slimmable_spec
from edgemtl.passes import slice_widths
from edgemtl.passes.base import PassInput, PassRequest
from edgemtl.passes.registry import check_request
from edgemtl.passes.slice_widths import SliceConfig, slice_model

NARROW = WidthConfig(encoder={"stage0": 0.5, "stage1": 0.75, "stage2": 0.25},
                     decoders={"segmentation": 0.5, "depth": 0.25, "normals": 1.0, "edges": 0.75, "scene": 1.0})


def outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(x)


def test_the_widest_configuration_reproduces_the_model_exactly():
    model, spec = tiny_slimmable_model()
    full, full_spec = slice_model(model, spec, spec.widths.widest())
    x = torch.randn(2, *spec.input.shape)
    expected, got = outputs(model, x), outputs(full, x)
    assert full is not model and all(torch.equal(expected[k], got[k]) for k in expected)
    assert full_spec.sliced_at == spec.widths.widest() and full_spec.widths is None


def test_a_narrow_configuration_equals_the_wide_model_with_its_trailing_channels_silenced():
    """Zeroing the affine terms of a BatchNorm's trailing channels makes them output 0 after it (and after the ReLU,
    the residual add, the upsampling, the concatenation and the pooling): the sliced model must compute exactly that."""
    model, spec = tiny_slimmable_model()
    narrow, narrow_spec = slice_model(model, spec, NARROW)
    reference = copy.deepcopy(model)
    sliced = dict(narrow.named_modules())
    for name, norm in reference.named_modules():
        if isinstance(norm, nn.BatchNorm2d):
            kept = sliced[name].num_features
            norm.weight.data[kept:] = 0
            norm.bias.data[kept:] = 0
    x = torch.randn(3, *spec.input.shape)
    expected, got = outputs(reference, x), outputs(narrow, x)
    for task in spec.task_names:
        assert got[task].shape == expected[task].shape
        torch.testing.assert_close(got[task], expected[task], rtol=1e-5, atol=1e-5)
    assert narrow_spec.sliced_at == NARROW


def test_slicing_keeps_the_leading_channels_and_couples_the_residual_adds_and_concatenations():
    model, spec = tiny_slimmable_model()
    narrow, _ = slice_model(model, spec, NARROW)
    layers = dict(narrow.named_modules())
    stem, stage0 = layers["encoder.stem.0"], layers["encoder.stages.0.0"]
    assert stem.out_channels == stage0.conv1.out_channels == stage0.conv2.out_channels == 2  # 4 x 0.5: one coupled width
    assert layers["encoder.stages.1.0.shortcut.0"].out_channels == layers["encoder.stages.1.0.conv2"].out_channels == 6
    assert layers["encoder.stages.2.0.conv2"].out_channels == 4
    depth = layers["heads.depth"]  # reduce 4 x 0.25 = 1, then the concatenated skip of stage 0 (2 channels)
    assert depth.reduce[0].in_channels == 4 and depth.reduce[0].out_channels == 1
    assert depth.fuse[0].in_channels == 1 + 2 and depth.predict.out_channels == 1
    assert layers["heads.scene.fc"].in_features == 4 and layers["heads.scene.fc"].out_features == 3
    wide = dict(model.named_modules())["encoder.stages.1.0.conv1"].weight
    assert torch.equal(layers["encoder.stages.1.0.conv1"].weight, wide[:6, :2])  # leading channels, both sides
    bn = dict(model.named_modules())["encoder.stages.1.0.bn1"]
    assert torch.equal(layers["encoder.stages.1.0.bn1"].running_mean, bn.running_mean[:6])


def test_params_and_macs_fall_as_the_configuration_narrows():
    model, spec = tiny_slimmable_model()
    costs = [model_cost(*slice_model(model, spec, config)) for config in (spec.widths.narrowest(), NARROW,
                                                                          spec.widths.widest())]
    assert costs[0].all_tasks.macs < costs[1].all_tasks.macs < costs[2].all_tasks.macs
    assert costs[0].total_params < costs[1].total_params < costs[2].total_params
    assert costs[2].all_tasks.macs == model_cost(model, spec).all_tasks.macs


def test_the_pass_records_the_configuration_and_its_checkpoint_reloads_narrow(tmp_path):
    model, spec = tiny_slimmable_model()
    result = slice_widths.run(PassInput(model, spec, spec.task_names, bundle=tmp_path), SliceConfig(NARROW, "w.json"))
    entry = json.loads(json.dumps(result.record.to_manifest()))
    assert entry["widths"] == NARROW.model_dump() and entry["source"] == "w.json"
    assert entry["macs_after"] < entry["macs_before"] and entry["params_after"] < entry["params_before"]
    assert entry["channels"]["encoder.stem.0"] == [4, 2] and entry["batchnorm_statistics"] == "sliced"
    assert entry["cost_provenance"]["kind"] == "static"
    reloaded = edgemtl.load(tmp_path / entry["artifacts"]["checkpoint"])  # an ordinary checkpoint: no width space
    assert reloaded.spec.sliced_at == NARROW and reloaded.spec.widths is None
    x = torch.randn(2, *spec.input.shape)
    expected, got = outputs(result.model, x), outputs(reloaded.model, x)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert slice_widths.run(PassInput(model, spec, ["depth"]), SliceConfig()).record.widths == spec.widths.widest().model_dump()


def test_per_width_batchnorm_statistics_replace_the_sliced_ones_where_a_checkpoint_has_them(monkeypatch):
    model, spec = tiny_slimmable_model()
    stored = {"encoder.stem.1": (torch.full((2,), 0.25), torch.full((2,), 3.0))}
    monkeypatch.setattr(slice_widths, "per_width_statistics", lambda _model, _spec, widths, data=None: stored)
    result = slice_widths.run(PassInput(model, spec, spec.task_names), SliceConfig(NARROW))
    norm = result.model.get_submodule("encoder.stem.1")
    assert torch.equal(norm.running_mean, stored["encoder.stem.1"][0]) and torch.equal(norm.running_var, stored["encoder.stem.1"][1])
    assert result.record.batchnorm_statistics == "per-width"
    monkeypatch.setattr(slice_widths, "per_width_statistics", lambda *_: {"encoder.stem.1": (torch.zeros(4), torch.ones(4))})
    with pytest.raises(EdgemtlError, match="per-width BatchNorm statistics of encoder.stem.1 do not fit"):
        slice_model(model, spec, NARROW)


def test_the_narrow_model_exports_to_onnx_and_compiles_for_the_host(tmp_path):
    model, spec = tiny_slimmable_model()
    narrow, narrow_spec = slice_model(model, spec, NARROW)
    onnx_path = export_all_tasks(narrow, narrow_spec, narrow_spec.task_names, tmp_path / "narrow.onnx")
    assert onnx_path.is_file()
    loaded = edgemtl.load(save(model, spec, tmp_path / "slim.pt"))
    options = CompileOptions(tasks=["depth", "scene"], verify_samples=2, metric_samples=8, measure_latency=False,
                             threads=1, passes=(PassRequest("slice_widths", SliceConfig(NARROW)),))
    bundle = compile_model(loaded, "host", tmp_path / "bundle", options)
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["passes"]["slice_widths"]
    assert manifest["steps"][0]["name"] == "slice_widths" and record["widths"] == NARROW.model_dump()
    assert all(s["status"] in ("ok", "skipped") for s in manifest["steps"])
    assert manifest["tasks"]["depth"]["verification"]["passed"]
    sliced = edgemtl.load(bundle / record["artifacts"]["checkpoint"])  # later steps compiled the narrow model
    assert manifest["all_tasks"]["macs"] == model_cost(sliced.model, sliced.spec, ["depth", "scene"]).all_tasks.macs


def test_a_model_that_is_not_slimmable_or_already_sliced_is_refused_in_one_line():
    model, spec = tiny_model("mtl-cnn")
    with pytest.raises(EdgemtlError, match="w.json needs a slimmable model: this mtl-cnn model's spec has no width space"):
        check_request(PassRequest("slice_widths", SliceConfig(NARROW, "w.json")), spec, has_data=False)
    model, spec = tiny_slimmable_model()
    _, narrow_spec = slice_model(model, spec, NARROW)
    with pytest.raises(EdgemtlError, match="already sliced to one configuration"):
        SliceConfig(NARROW).check(narrow_spec)
    with pytest.raises(EdgemtlError, match="decoder 'depth' width 0.3 is outside the width space"):
        check_request(PassRequest("slice_widths", SliceConfig(NARROW.model_copy(
            update={"decoders": {**NARROW.decoders, "depth": 0.3}}))), spec, has_data=False)


def _with_stages(spec, stages: dict[str, WidthOptions]):
    return spec.model_copy(update={"widths": spec.widths.model_copy(update={"stages": stages})})


def test_a_width_space_that_breaks_a_coupling_or_names_no_layer_is_one_line():
    model, spec = tiny_slimmable_model()
    split = _with_stages(spec, {  # the stem apart from stage 0, whose identity shortcut adds the stem's output
        "stem": WidthOptions(channels=4, modules=("encoder.stem",)),
        "stage0": WidthOptions(channels=4, modules=("encoder.stages.0",)),
        **{k: v for k, v in spec.widths.stages.items() if k != "stage0"}})
    config = WidthConfig(encoder={"stem": 1.0, "stage0": 0.5, "stage1": 1.0, "stage2": 1.0}, decoders=NARROW.decoders)
    with pytest.raises(EdgemtlError, match="coupled .* with a layer of another stage or decoder; put coupled layers in one"):
        slice_model(model, split, config)
    missing = _with_stages(spec, {**spec.widths.stages, "stage2": WidthOptions(channels=16, modules=("encoder.nope",))})
    with pytest.raises(EdgemtlError, match="encoder stage 'stage2' names 'encoder.nope', which holds no conv or linear"):
        slice_model(model, missing, NARROW)
    head = spec.model_copy(update={"widths": spec.widths.model_copy(update={"decoders": {  # predict: its 3 outputs
        **spec.widths.decoders, "normals": WidthOptions(channels=4, modules=("heads.normals",))}})})
    with pytest.raises(EdgemtlError, match=r"slicing changed task 'normals'.s output to \[2, 64, 64\]: .* output layers"):
        slice_model(model, head, NARROW.model_copy(update={"decoders": {**NARROW.decoders, "normals": 0.5}}))


def test_a_pruned_slimmable_model_is_not_slimmable_any_more():
    """Pruning removes the least salient channels anywhere: the leading channels no longer are the ones slimmable
    training shared, so slicing the pruned model would silently compute something else."""
    from edgemtl.data import load_data
    from edgemtl.passes.prune_pagcp import PAGCPConfig, prune_pagcp

    model, spec = tiny_model("mtl-cnn", "digits")
    quick = PAGCPConfig(flops_target=0.9, default_max_drop=5.0, finetune_steps=0, final_finetune_steps=0, batch_size=8,
                        oracle_samples=8, max_rounds=1, bn_recalibration_samples=0, ratio_step=0.5, max_ratio=0.5,
                        sparsity_steps=0)
    data = load_data("digits", "val", n=8)
    _, pruned_spec, _ = prune_pagcp(model, slimmable_spec(spec), data, data, quick, show_progress=False)
    assert pruned_spec.widths is None
    with pytest.raises(EdgemtlError, match="needs a slimmable model"):
        SliceConfig(NARROW).check(pruned_spec)
