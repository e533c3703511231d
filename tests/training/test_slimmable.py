"""Slimmable multi-task training: the masked forward equals the sliced model, the sandwich rule visits the widest and
the narrowest configuration every step, distillation is zero only at the widest, BatchNorm statistics per width."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tiny_slimmable_model

from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.width_masks import WidthMasks
from edgemtl.model.widths import WidthConfig, WidthOptions, WidthSpace
from edgemtl.model.zoo import slimmable_spec
from edgemtl.passes.slice_widths import _load_statistics, slice_model
from edgemtl.training import TrainConfig
from edgemtl.training.slimmable import SlimmableConfig, configured, recalibrate_batchnorm, train_slimmable

NARROW = WidthConfig(encoder={"stage0": 0.5, "stage1": 0.75, "stage2": 0.25},
                     decoders={"segmentation": 0.5, "depth": 0.25, "normals": 1.0, "edges": 0.75, "scene": 1.0})


@pytest.fixture(autouse=True)
def one_thread():
    """On a busy machine, torch's default threads fight over the cores (many times slower for these tiny models)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train_set():
    return load_data("scenes", "train", n=32, seed=0)


@pytest.mark.parametrize("which", ["narrow", "narrowest", "widest"])
def test_the_masked_forward_equals_the_sliced_model(which):
    model, spec = tiny_slimmable_model()
    widths = {"narrow": NARROW, "narrowest": spec.widths.narrowest(), "widest": spec.widths.widest()}[which]
    masks = WidthMasks(model, spec)
    narrow, _ = slice_model(model, spec, widths)   # a deep copy of a hooked model carries no masks
    x = torch.randn(3, *spec.input.shape)
    with torch.no_grad(), masks.at(widths):
        masked = model(x)
    with torch.no_grad():
        sliced, full = narrow(x), model(x)
    for task in spec.task_names:
        torch.testing.assert_close(masked[task], sliced[task], rtol=1e-5, atol=1e-6)
    assert (which == "widest") == all(torch.equal(full[t], masked[t]) for t in spec.task_names)



def assert_masked_equals_sliced(model, masks, narrow, config, spec) -> None:
    """The full model masked at `config` computes what the sliced narrow model computes, task by task."""
    x = torch.randn(2, *spec.input.shape)
    with torch.no_grad(), masks.at(config):
        masked = model(x)
    with torch.no_grad():
        sliced = narrow(x)
    for task in spec.task_names:
        torch.testing.assert_close(masked[task], sliced[task], rtol=1e-5, atol=1e-6)

def test_training_masked_keeps_the_full_statistics_and_matches_the_sliced_model_after(train_set):
    model, spec = tiny_slimmable_model()
    masks = WidthMasks(model, spec)
    result, _ = train_slimmable(model, spec, train_set, TrainConfig(steps=2, batch_size=8), show_progress=False,
                                masks=masks)
    assert_masked_equals_sliced(model, masks, slice_model(model, spec, NARROW)[0], NARROW, spec)
    assert set(result.configuration_losses) == {"widest", "narrowest", "random"}


def test_the_sandwich_rule_visits_the_widest_and_the_narrowest_every_step(train_set):
    model, spec = tiny_slimmable_model()
    seen: list[tuple[int, str, WidthConfig, dict]] = []
    train_slimmable(model, spec, train_set, TrainConfig(steps=3, batch_size=8), SlimmableConfig(random_configs=3),
                    show_progress=False, observe=lambda *event: seen.append(event))
    for step in range(3):
        visits = [(label, widths) for s, label, widths, _ in seen if s == step]
        assert [label for label, _ in visits] == ["widest", "narrowest", "random", "random", "random"]
        assert visits[0][1] == spec.widths.widest() and visits[1][1] == spec.widths.narrowest()
    randoms = {widths.to_json() for s, label, widths, _ in seen if label == "random"}
    assert len(randoms) > 1   # drawn afresh


def test_distillation_is_zero_at_the_widest_configuration_and_positive_narrower(train_set):
    model, spec = tiny_slimmable_model()
    seen = []
    result, _ = train_slimmable(model, spec, train_set, TrainConfig(steps=2, batch_size=8), show_progress=False,
                                observe=lambda *event: seen.append(event))
    for _, label, widths, losses in seen:
        if label == "widest":
            assert losses["distill"] == 0.0
        else:
            assert losses["distill"] > 0.0, (widths, losses)
    assert result.configuration_losses["widest"]["distill"] == 0.0
    assert result.configuration_losses["narrowest"]["distill"] > 0.0
    record = result.record()
    assert record["random_configs"] == 2 and record["bn"] == "recalibrate"


def test_a_space_naming_no_conv_cannot_be_trained():
    model, spec = tiny_model("mtl-cnn")
    space = slimmable_spec(spec).widths
    bad = WidthSpace(stages={**space.stages, "stage0": WidthOptions(channels=4, modules=("encoder.nothing",))},
                     decoders=space.decoders)
    with pytest.raises(EdgemtlError, match="names 'encoder.nothing', which holds no conv or linear layer"):
        WidthMasks(model, spec.model_copy(update={"widths": bad}))


def _narrow_loss(model, masks, spec, widths, data):
    from edgemtl.model.losses import task_loss
    model.eval()
    with torch.no_grad(), masks.at(widths):
        total = 0.0
        for images, targets in data.batches(16, shuffle=False):
            outputs = model(images)
            total += sum(task_loss(t, outputs[t.name], targets[t.name]).item() for t in spec.tasks)
    return total


def test_recalibration_changes_the_statistics_and_does_not_worsen_the_narrow_loss(train_set):
    """Toy case: the full model's statistics are off (random); recalibrating at the narrowest configuration gives it
    statistics of its own activations, which changes them and lowers (or keeps) its loss on the same data."""
    model, spec = tiny_slimmable_model()
    masks = WidthMasks(model, spec)
    narrowest = spec.widths.narrowest()
    before_stats = masks.statistics(narrowest)
    before = _narrow_loss(model, masks, spec, narrowest, train_set)
    recalibrate_batchnorm(model, train_set, batches=2, batch_size=16, masks=masks, widths=narrowest)
    after_stats = masks.statistics(narrowest)
    after = _narrow_loss(model, masks, spec, narrowest, train_set)
    assert any(not torch.equal(before_stats[k][0], after_stats[k][0]) for k in before_stats)
    assert after <= before
    # the statistics slicing loads make the narrow model compute the recalibrated masked forward
    narrow, _ = slice_model(model, spec, narrowest)
    _load_statistics(narrow, after_stats)
    assert_masked_equals_sliced(model, masks, narrow, narrowest, spec)


def test_configured_restores_the_model_and_switchable_statistics_differ_per_width(train_set):
    model, spec = tiny_slimmable_model()
    masks = WidthMasks(model, spec, bn="switchable")
    train_slimmable(model, spec, train_set, TrainConfig(steps=2, batch_size=8), SlimmableConfig(bn="switchable"),
                    show_progress=False, masks=masks)
    assert masks.switchable
    narrowest = masks.statistics(spec.widths.narrowest())
    widest = masks.statistics(spec.widths.widest())
    name = "encoder.stages.2.0.bn2"
    assert narrowest[name][0].shape[0] == 4 and not torch.equal(narrowest[name][0], widest[name][0][:4])
    masks.bn = "recalibrate"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with configured(model, masks, spec.widths.narrowest(), train_set, batches=1, batch_size=8):
        pass
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_slicing_with_training_data_gives_the_configuration_its_recalibrated_statistics(train_set):
    """What a compile does (slice_widths with the compile's data): the narrow model's BatchNorm statistics are the
    ones recalibrating the masked model at that configuration gives, not the full model's leading channels."""
    model, spec = tiny_slimmable_model()
    masks = WidthMasks(model, spec)
    plain, _ = slice_model(model, spec, NARROW)
    narrow, narrow_spec = slice_model(model, spec, NARROW, train_set)
    recalibrate_batchnorm(model, train_set, batches=16, batch_size=32, masks=masks, widths=NARROW)
    expected = masks.statistics(NARROW)
    layers = dict(narrow.named_modules())
    for name, (mean, var) in expected.items():
        torch.testing.assert_close(layers[name].running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layers[name].running_var, var, rtol=1e-5, atol=1e-6)
    assert not torch.equal(dict(plain.named_modules())["encoder.stem.1"].running_mean, layers["encoder.stem.1"].running_mean)
    assert narrow_spec.sliced_at == NARROW
