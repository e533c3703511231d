"""`edgemtl compile --widths config.json`: the flag maps onto the slice_widths pass, and every bad input is one line,
exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_model
from test_cli import assert_one_line_error, run_cli

from edgemtl.model.checkpoint import save
from edgemtl.model.widths import WidthConfig
from edgemtl.model.zoo import slimmable_spec

NARROW = WidthConfig(encoder={"stage0": 0.5, "stage1": 0.75, "stage2": 0.25},
                     decoders={"segmentation": 0.5, "depth": 0.25, "normals": 1.0, "edges": 0.75, "scene": 1.0})


@pytest.fixture(scope="module")
def slimmable_checkpoint(tmp_path_factory):
    model, spec = tiny_model("mtl-cnn")
    return save(model, slimmable_spec(spec), tmp_path_factory.mktemp("slim") / "slim.pt")


def test_widths_maps_onto_the_slicing_pass(capsys, tmp_path, slimmable_checkpoint):
    config = tmp_path / "narrow.json"
    config.write_text(NARROW.to_json())
    bundle = tmp_path / "bundle"
    code, _, err = run_cli(capsys, "compile", slimmable_checkpoint, "--widths", config, "--target", "host", "-o", bundle,
                           "--stop-after", "slice_widths")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["passes"]["slice_widths"]
    assert [s["name"] for s in manifest["steps"]] == ["slice_widths"]
    assert record["widths"] == NARROW.model_dump() and record["source"] == f"width configuration {config}"
    assert record["macs_after"] < record["macs_before"] and (bundle / record["artifacts"]["checkpoint"]).is_file()


def test_list_steps_names_the_slicing_pass_first(capsys):
    code, out, _ = run_cli(capsys, "compile", "--target", "host", "--list-steps", "--widths", "any.json",
                           "--prune-flops", "0.5")
    names = [line.split()[1] for line in out.splitlines() if line.strip()]
    assert code == 0 and names[:3] == ["slice_widths", "prune_pagcp", "load_data"]


@pytest.mark.parametrize("text, message", [
    (NARROW.model_copy(update={"encoder": {"block1": 0.5}}).to_json(),
     "is for another model: it names encoder stages block1; this model's are stage0, stage1, stage2"),
    (NARROW.model_copy(update={"encoder": {**NARROW.encoder, "stage2": 0.4}}).to_json(),
     "encoder stage 'stage2' width 0.4 is outside the width space; allowed: 0.25, 0.5, 0.75, 1"),
    (NARROW.model_copy(update={"decoders": {**NARROW.decoders, "pose": 1.0}}).to_json(),
     "names unknown task(s) pose in its decoders"),
    ("encoder: {stage0: 0.5}", "is not JSON: Expecting value: line 1 column 1"),
])
def test_a_bad_widths_file_is_one_line_and_writes_nothing(capsys, tmp_path, slimmable_checkpoint, text, message):
    config = tmp_path / "widths.json"
    config.write_text(text)
    code, _, err = run_cli(capsys, "compile", slimmable_checkpoint, "--widths", config, "-o", tmp_path / "b")
    assert_one_line_error(code, err, message)
    assert f"width configuration {config}" in err and not (tmp_path / "b").exists()


def test_widths_on_a_model_that_is_not_slimmable_is_one_line(capsys, tmp_path, checkpoints):
    config = tmp_path / "widths.json"
    config.write_text(NARROW.to_json())
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--widths", config, "-o", tmp_path / "b")
    assert_one_line_error(code, err, f"width configuration {config} needs a slimmable model: this mtl-cnn model's "
                                     "spec has no width space")
    assert not (tmp_path / "b").exists()
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--widths", tmp_path / "nope.json", "-o",
                           tmp_path / "b")
    assert_one_line_error(code, err, "nope.json does not exist")
    assert not (tmp_path / "b").exists()
