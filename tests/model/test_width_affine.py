"""Private per-width affines: the masked forward applies them as slicing folds them, the widest never uses them,
slimmable training trains them, and a checkpoint keeps them."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_slimmable_model

from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.checkpoint import load, save
from edgemtl.model.width_affine import WIDTH_AFFINE, set_width_affines, width_affines
from edgemtl.model.width_masks import WidthMasks
from edgemtl.model.widths import WidthConfig
from edgemtl.passes.slice_widths import slice_model
from edgemtl.training import TrainConfig
from edgemtl.training.slimmable import SlimmableConfig, train_slimmable

NARROW = WidthConfig(encoder={"stage0": 0.5, "stage1": 0.75, "stage2": 0.25},
                     decoders={"segmentation": 0.5, "depth": 0.25, "normals": 1.0, "edges": 0.75, "scene": 1.0})


def _with_random_affines(seed: int = 1):
    model, spec = tiny_slimmable_model()
    shapes = WidthMasks(model, spec).affine_shapes()
    generator = torch.Generator().manual_seed(seed)
    set_width_affines(model, {key: torch.randn(2, channels, generator=generator) * 0.3 for key, channels in shapes.items()})
    return model, spec


def test_every_masked_norm_and_every_dense_decoder_output_layer_gets_an_affine_per_narrower_width():
    model, spec = tiny_slimmable_model()
    shapes = WidthMasks(model, spec).affine_shapes()
    outputs = {key for key in shapes if ".predict@" in key}
    assert outputs == {f"heads.{task}.predict@x{m:g}" for task in ("segmentation", "depth", "normals", "edges")
                       for m in (0.25, 0.5, 0.75)}   # the scene head is one linear layer: no decoder of its own
    assert {"encoder.stem.1@1", "encoder.stem.1@3", "heads.depth.fuse.1@1"} <= set(shapes)
    assert not any(key.endswith(f"@{channels}") for key, channels in shapes.items())   # never at full width


@pytest.mark.parametrize("which", ["narrow", "narrowest"])
def test_the_masked_forward_with_affines_equals_the_sliced_model_they_are_folded_into(which):
    model, spec = _with_random_affines()
    widths = NARROW if which == "narrow" else spec.widths.narrowest()
    masks = WidthMasks(model, spec)
    narrow, _ = slice_model(model, spec, widths)
    assert not width_affines(narrow)   # folded, not carried
    plain_model, _ = tiny_slimmable_model()
    plain, _ = slice_model(plain_model, spec, widths)
    x = torch.randn(3, *spec.input.shape)
    with torch.no_grad(), masks.at(widths):
        masked = model(x)
    with torch.no_grad():
        sliced, without = narrow(x), plain(x)
    for task in spec.task_names:
        torch.testing.assert_close(masked[task], sliced[task], rtol=1e-5, atol=1e-5)
    assert any(not torch.allclose(sliced[t], without[t]) for t in spec.task_names)   # the affines did something


def test_the_widest_never_uses_the_affines():
    model, spec = _with_random_affines()
    plain, _ = tiny_slimmable_model()
    masks = WidthMasks(model, spec)
    x = torch.randn(2, *spec.input.shape)
    with torch.no_grad(), masks.at(spec.widths.widest()):
        widest = model(x)
    with torch.no_grad():
        expected = plain(x)
    assert all(torch.equal(widest[t], expected[t]) for t in spec.task_names)


def test_slimmable_training_trains_them_and_a_checkpoint_keeps_them(tmp_path):
    model, spec = tiny_slimmable_model()
    train_slimmable(model, spec, load_data("scenes", "train", n=16, seed=0), TrainConfig(steps=2, batch_size=8),
                    show_progress=False)
    trained = width_affines(model)
    assert trained and any(value.abs().sum() > 0 for value in trained.values())
    save(model, spec, tmp_path / "slim.pt")
    loaded = load(tmp_path / "slim.pt")
    assert set(width_affines(loaded.model)) == set(trained)
    assert all(torch.equal(width_affines(loaded.model)[k], v) for k, v in trained.items())
    off, spec_off = tiny_slimmable_model()
    train_slimmable(off, spec_off, load_data("scenes", "train", n=16, seed=0), TrainConfig(steps=1, batch_size=8),
                    SlimmableConfig(private_affine=False), show_progress=False)
    assert not hasattr(off, WIDTH_AFFINE)


def test_a_checkpoint_with_a_malformed_affine_entry_is_one_line(tmp_path):
    model, spec = _with_random_affines()
    save(model, spec, tmp_path / "slim.pt")
    payload = torch.load(tmp_path / "slim.pt", weights_only=True)
    payload["width_affine"] = {"encoder.stem.1@1": torch.zeros(3)}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(EdgemtlError, match="invalid 'width_affine' entry"):
        load(tmp_path / "bad.pt")


def test_a_model_hooked_by_two_masks_applies_its_affines_once():
    """Found by the test above: masks made again on a hooked model (without remove()) stacked their hooks, harmless
    for the masks (idempotent) but not for the affines. The newest masks act, once."""
    model, spec = _with_random_affines()
    x = torch.randn(2, *spec.input.shape)
    first = WidthMasks(model, spec)
    with torch.no_grad(), first.at(NARROW):
        once = model(x)
    second = WidthMasks(model, spec)
    with torch.no_grad(), second.at(NARROW):
        again = model(x)
    assert all(torch.equal(once[t], again[t]) for t in spec.task_names)
