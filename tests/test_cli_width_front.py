"""A slimmable model's width space in `edgemtl inspect`, and where a compiled width configuration sits on the front
`edgemtl tune` wrote beside it (`config.front.json`): the slice_widths entry's `front` section and the report's
widths section with its plot."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_slimmable_model
from test_cli import run_cli

from edgemtl.model.checkpoint import save
from edgemtl.passes.slice_widths import slice_model


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
    """A tiny slimmable checkpoint and its sliced twin."""
    model, spec = tiny_slimmable_model()
    folder = tmp_path_factory.mktemp("slim")
    narrow, narrow_spec = slice_model(model, spec, spec.widths.narrowest())
    return save(model, spec, folder / "slim.pt"), save(narrow, narrow_spec, folder / "sliced.pt"), spec


def test_inspect_prints_the_width_space_and_its_size(capsys, slim):
    path, _, spec = slim
    code, out, _ = run_cli(capsys, "inspect", path)
    assert code == 0 and f"width space: {spec.widths.size():,} configurations" in out
    stage0 = spec.widths.stages["stage0"]
    row = next(line for line in out.splitlines() if "stage0" in line)
    assert "encoder stage" in row and f" {stage0.channels} " in row and "0.25, 0.5, 0.75, 1" in row
    assert "encoder.stem" in row
    assert any("decoder" in line and "scene" in line for line in out.splitlines())
    code, out, _ = run_cli(capsys, "inspect", path, "--json")
    space = json.loads(out)["width_space"]
    assert code == 0 and space["size"] == spec.widths.size() and set(space["decoders"]) == set(spec.task_names)
    assert space["stages"]["stage0"]["multipliers"] == list(stage0.multipliers)


def test_inspect_prints_where_a_sliced_model_was_cut(capsys, slim):
    _, sliced, spec = slim
    code, out, _ = run_cli(capsys, "inspect", sliced)
    assert code == 0 and "sliced at this width configuration" in out and "width space:" not in out
    assert next(line for line in out.splitlines() if "stage2" in line).split()[-2] == "0.25"
    code, out, _ = run_cli(capsys, "inspect", sliced, "--json")
    assert json.loads(out)["sliced_at"] == spec.widths.narrowest().model_dump() and "width_space" not in out
