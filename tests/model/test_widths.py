"""Width spaces and configurations as data: the spec carries the space through a checkpoint, a configuration goes
through JSON unchanged, and every configuration that does not fit the space is one line naming what is wrong."""

from __future__ import annotations

import random

import pytest
from conftest import tiny_model

import edgemtl
from edgemtl.errors import EdgemtlError
from edgemtl.model.checkpoint import save
from edgemtl.model.spec import ModelSpec, parse_model_spec
from edgemtl.model.widths import WidthConfig, WidthOptions, channels_at, read_width_config
from edgemtl.model.zoo import slimmable_spec

DECODERS = {"segmentation": 0.5, "depth": 0.25, "normals": 0.75, "edges": 1.0, "scene": 1.0}
CONFIG = WidthConfig(encoder={"stage0": 0.5, "stage1": 0.75, "stage2": 0.25}, decoders=DECODERS)


def slimmable():
    model, spec = tiny_model("mtl-cnn")
    return model, slimmable_spec(spec)


def test_the_zoo_cnn_derives_its_space_from_its_stages_and_heads_and_is_not_slimmable_by_default():
    model, spec = tiny_model("mtl-cnn")
    assert spec.widths is None and not spec.slimmable  # existing checkpoints stay as they are
    space = slimmable_spec(spec).widths
    assert list(space.stages) == ["stage0", "stage1", "stage2"]
    assert [o.channels for o in space.stages.values()] == [4, 8, 16]
    assert space.stages["stage0"].modules == ("encoder.stem", "encoder.stages.0")  # the stem adds into stage 0
    assert list(space.decoders) == spec.task_names
    assert space.decoders["depth"].multipliers == (0.25, 0.5, 0.75, 1.0)
    assert space.decoders["scene"] == WidthOptions(channels=0, multipliers=(1.0,))  # a linear head: nothing to slice
    assert space.widest().encoder == {"stage0": 1.0, "stage1": 1.0, "stage2": 1.0}
    assert space.narrowest().decoders["depth"] == 0.25 and space.narrowest().decoders["scene"] == 1.0
    assert space.size() == 4 ** 3 * 4 ** 4
    assert space.check(space.sample(random.Random(0))) is not None
    with pytest.raises(EdgemtlError, match="architecture 'm3vit' has no width space; slimmable zoo architectures: mtl-cnn"):
        slimmable_spec(tiny_model("m3vit")[1])


def test_the_width_space_survives_a_checkpoint_round_trip(tmp_path):
    model, spec = slimmable()
    loaded = edgemtl.load(save(model, spec, tmp_path / "slim.pt"))
    assert loaded.spec.widths == spec.widths and loaded.spec == spec
    plain = edgemtl.load(save(*tiny_model("mtl-cnn"), tmp_path / "plain.pt"))
    assert plain.spec.widths is None and plain.spec.sliced_at is None


def test_a_configuration_round_trips_through_json(tmp_path):
    assert WidthConfig.from_json(CONFIG.to_json()) == CONFIG
    path = tmp_path / "widths.json"
    path.write_text(CONFIG.to_json())
    assert read_width_config(path) == CONFIG
    assert list(read_width_config(path).decoders) == list(DECODERS)


def test_channels_at_rounds_half_up_and_never_to_zero():
    assert [channels_at(16, m) for m in (0.25, 0.5, 0.75, 1.0)] == [4, 8, 12, 16]
    assert [channels_at(4, m) for m in (0.25, 0.5, 0.75, 1.0)] == [1, 2, 3, 4]
    assert channels_at(2, 0.25) == 1 and channels_at(6, 0.25) == 2  # 1.5 rounds up


def _check(config: dict, source: str = "widths.json"):
    _, spec = slimmable()
    return spec.widths.check(WidthConfig.model_validate(config), source)


@pytest.mark.parametrize("config, message", [
    ({"encoder": {"block1": 0.5, "block2": 0.5}, "decoders": DECODERS},
     "widths.json is for another model: it names encoder stages block1, block2; this model's are stage0, stage1, stage2"),
    ({"encoder": CONFIG.encoder, "decoders": {**DECODERS, "pose": 0.5}},
     "widths.json names unknown task(s) pose in its decoders; this model has segmentation, depth"),
    ({"encoder": CONFIG.encoder, "decoders": {k: v for k, v in DECODERS.items() if k != "depth"}},
     "widths.json gives no decoder width for task(s) depth"),
    ({"encoder": {**CONFIG.encoder, "stage1": 0.3}, "decoders": DECODERS},
     "widths.json: encoder stage 'stage1' width 0.3 is outside the width space; allowed: 0.25, 0.5, 0.75, 1"),
    ({"encoder": CONFIG.encoder, "decoders": {**DECODERS, "scene": 0.5}},
     "widths.json: decoder 'scene' width 0.5 is outside the width space; allowed: 1"),
])
def test_a_configuration_outside_the_space_is_one_line(config, message):
    with pytest.raises(EdgemtlError) as info:
        _check(config)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_configuration_in_the_space_snaps_to_its_values_in_its_order():
    checked = _check({"encoder": {"stage2": 0.25 + 1e-12, "stage0": 0.5, "stage1": 0.75}, "decoders": DECODERS})
    assert list(checked.encoder) == ["stage0", "stage1", "stage2"] and checked.encoder["stage2"] == 0.25


@pytest.mark.parametrize("text, message", [
    ("not json", "widths.json is not JSON: Expecting value"),
    ("[0.5, 0.5]", "widths.json must hold a JSON object with 'encoder' and 'decoders'"),
    ('{"encoder": {"stage0": "wide"}, "decoders": {}}', "widths.json is not a width configuration: encoder.stage0:"),
    ('{"encoder": {}, "decoders": {}, "extra": 1}', "widths.json is not a width configuration: extra: Extra inputs"),
])
def test_a_file_that_is_not_a_configuration_is_one_line(text, message):
    with pytest.raises(EdgemtlError) as info:
        WidthConfig.from_json(text, source="widths.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(EdgemtlError, match="width configuration .*nope.json does not exist"):
        read_width_config(tmp_path / "nope.json")


@pytest.mark.parametrize("options, message", [
    ({"channels": 8, "multipliers": [0.5, 0.25, 1.0]}, "ascending, distinct and end at 1.0"),
    ({"channels": 8, "multipliers": [0.25, 0.5]}, "end at 1.0"),
    ({"channels": 8, "multipliers": [0.0, 1.0]}, "must lie in (0, 1]"),
    ({"channels": 0, "multipliers": [0.5, 1.0], "modules": ["heads.x"]}, "allows only the multiplier 1.0"),
])
def test_a_spec_with_a_bad_width_space_is_one_line(options, message):
    _, spec = slimmable()
    raw = spec.model_dump(mode="json")
    raw["widths"]["stages"]["stage1"] = options
    with pytest.raises(EdgemtlError) as info:
        parse_model_spec(raw, "spec.yaml")
    assert message in str(info.value) and "invalid model spec in spec.yaml: widths.stages.stage1" in str(info.value)


def test_the_space_needs_one_decoder_per_task():
    _, spec = slimmable()
    raw = spec.model_dump(mode="json")
    del raw["widths"]["decoders"]["depth"]
    with pytest.raises(EdgemtlError, match="width space's decoders .* must be its tasks"):
        parse_model_spec(raw, "spec.yaml")
    assert ModelSpec.model_validate(spec.model_dump(mode="json")) == spec
