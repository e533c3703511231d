"""A slimmable model's width space in `edgemtl inspect`, and where a compiled width configuration sits on the front
`edgemtl tune` wrote beside it (`config.front.json`): the slice_widths entry's `front` section and the report's
widths section with its plot."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_slimmable_model
from test_cli import run_cli

from edgemtl.bundle import file_sha256
from edgemtl.manifest import Provenance
from edgemtl.model.checkpoint import save
from edgemtl.model.width_front import CostObjective, FrontPoint, TaskObjective, TuneFront, front_path
from edgemtl.model.widths import WidthConfig
from edgemtl.passes import slice_widths
from edgemtl.passes.slice_widths import place_on_front, read_slice_config, slice_model


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


NARROWER = {"encoder": {"stage0": 0.5, "stage1": 0.5, "stage2": 0.5},
            "decoders": {"segmentation": 0.5, "depth": 0.5, "normals": 0.5, "edges": 0.5, "scene": 1.0}}


def _front(spec, sha256: str) -> TuneFront:
    """A hand-made front of a few configurations: the widest and narrowest evaluated, NARROWER evaluated and chosen,
    two predicted ones; the metrics made up, the costs roughly the MACs."""
    widest, narrowest = spec.widths.widest().model_dump(), spec.widths.narrowest().model_dump()
    tasks = {"depth": TaskObjective(metric="rmse", higher_is_better=False, preference=0.5),
             "scene": TaskObjective(metric="accuracy", higher_is_better=True, preference=0.5)}
    measured = {"cost": Provenance(kind="static", source="edgemtl analysis"),
                "metrics": Provenance(kind="evaluated", source="PyTorch", detail="64 scenes val images")}
    guessed = {"cost": Provenance(kind="estimated", source="ridge"),
               "metrics": Provenance(kind="estimated", source="RBF-SVR")}

    def point(widths, cost, depth, scene, source="evaluated", pareto=True):
        return FrontPoint(widths=WidthConfig.model_validate(widths), cost=cost, metrics={"depth": depth, "scene": scene},
                          source=source, pareto=pareto, provenance=measured if source == "evaluated" else guessed)

    reference = point(widest, 2.2e6, 0.50, 0.80)
    chosen = point(NARROWER, 0.9e6, 0.60, 0.75)
    points = [reference, chosen, point(narrowest, 0.4e6, 0.90, 0.60),
              point(NARROWER | {"decoders": {**NARROWER["decoders"], "depth": 1.0}}, 1.0e6, 0.62, 0.74, pareto=False),
              point(widest | {"decoders": {**widest["decoders"], "depth": 0.25}}, 1.9e6, 0.55, 0.79, "predicted"),
              point(NARROWER | {"encoder": {**NARROWER["encoder"], "stage2": 0.75}}, 1.3e6, 0.58, 0.78, "predicted",
                    pareto=False)]
    return TuneFront(model_sha256=sha256, target="host",
                     cost=CostObjective(kind="macs", unit="MACs", limit=1.1e6, budget="macs=0.5"), tasks=tasks,
                     reference=reference, points=points, chosen=chosen,
                     relative={"depth": 0.50 / 0.60, "scene": 0.75 / 0.80})


def _compile(capsys, tmp_path, checkpoint, widths: dict, front: TuneFront | str | None):
    config = tmp_path / "chosen.json"
    config.write_text(json.dumps(widths))
    if front is not None:
        front_path(config).write_text(front if isinstance(front, str) else front.model_dump_json())
    bundle = tmp_path / "bundle"
    code, _, err = run_cli(capsys, "compile", checkpoint, "--widths", config, "--target", "host", "-o", bundle,
                           "--stop-after", "slice_widths")
    assert code == 0, err
    return json.loads((bundle / "manifest.json").read_text())["passes"]["slice_widths"], bundle, err


def test_compile_records_where_the_configuration_sits_on_the_front_and_the_report_plots_it(capsys, tmp_path, slim):
    path, _, spec = slim
    record, bundle, _ = _compile(capsys, tmp_path, path, NARROWER, _front(spec, file_sha256(path)))
    front = record["front"]
    assert record["warnings"] == [] and front["file"] == "chosen.front.json"
    assert (front["target"], front["budget"], front["cost_kind"], front["cost_limit"]) == ("host", "macs=0.5", "macs",
                                                                                          1.1e6)
    assert (front["evaluated"], front["predicted"], len(front["points"]), front["points_left_out"]) == (4, 2, 6, 0)
    assert front["compiled_is_chosen"] and front["compiled_on_front"] and front["compiled"] == front["chosen"]
    assert front["chosen"] == {"cost": 900000.0, "metrics": {"depth": 0.6, "scene": 0.75}, "source": "evaluated",
                               "pareto": True}
    assert front["chosen_widths"] == NARROWER and front["tasks"]["depth"]["higher_is_better"] is False
    assert front["evaluated_cost_provenance"]["kind"] == "static"
    assert front["predicted_metrics_provenance"] == {"kind": "estimated", "source": "RBF-SVR"}
    assert record["part_channels"]["encoder"]["stage2"] == [16, 8] and record["part_channels"]["decoders"]["scene"] == [0, 0]
    html = (bundle / "report.html").read_text()
    assert "<h2>Width configuration</h2>" in html and "Where it sits on the search front" in html
    assert 'alt="Cost against each task' in html and "data:image/png;base64," in html
    summary = json.loads((bundle / "report.json").read_text())["widths"]
    assert summary["front"]["compiled_is_chosen"] is True and summary["widths"] == NARROWER


def test_a_front_for_another_model_is_left_out_with_a_warning(capsys, tmp_path, slim):
    path, _, spec = slim
    record, bundle, err = _compile(capsys, tmp_path, path, NARROWER, _front(spec, "0" * 64))
    assert "front" not in record and len(record["warnings"]) == 1
    assert "chosen.front.json is for another model (sha256 000000000000..." in record["warnings"][0]
    assert "warning: slice_widths: the search front" in " ".join(err.split())
    html = (bundle / "report.html").read_text()
    assert "<h2>Width configuration</h2>" in html and "Where it sits on the search front" not in html
    assert "is for another model" in html


def test_a_configuration_off_the_front_is_placed_as_such(slim):
    spec = slim[2]
    widths = NARROWER | {"decoders": {**NARROWER["decoders"], "depth": 1.0}}   # evaluated, not on the Pareto front
    front = place_on_front(_front(spec, "0" * 64), WidthConfig.model_validate(widths), "f.front.json")
    assert not front["compiled_is_chosen"] and not front["compiled_on_front"] and front["compiled"]["cost"] == 1.0e6
    front = place_on_front(_front(spec, "0" * 64), spec.widths.narrowest(), "f.front.json")
    assert front["compiled_on_front"] and front["compiled"]["metrics"] == {"depth": 0.9, "scene": 0.6}
    alone = NARROWER | {"encoder": {**NARROWER["encoder"], "stage0": 0.25}}   # not in the front at all
    front = place_on_front(_front(spec, "0" * 64), WidthConfig.model_validate(alone), "f.front.json")
    assert "compiled" not in front and not front["compiled_on_front"]


def test_the_plotted_points_keep_every_evaluated_and_pareto_point(monkeypatch, slim):
    spec = slim[2]
    front = _front(spec, "0" * 64)
    extra = [front.points[-1].model_copy(update={"cost": 1e6 + i}) for i in range(20)]   # predicted, off the front
    monkeypatch.setattr(slice_widths, "FRONT_POINTS", 8)
    placed = place_on_front(front.model_copy(update={"points": front.points + extra}), spec.widths.widest(), "f")
    assert len(placed["points"]) == 8 and placed["points_left_out"] == 26 - 8 and placed["predicted"] == 22
    assert sum(p["source"] == "evaluated" for p in placed["points"]) == 4
    assert placed["compiled"] == placed["reference"] and placed["compiled_on_front"]


def test_read_slice_config_reads_the_front_beside_the_file_or_says_why_not(tmp_path, slim):
    config = tmp_path / "chosen.json"
    config.write_text(json.dumps(NARROWER))
    assert (read_slice_config(config).front, read_slice_config(config).front_warning) == (None, None)
    front_path(config).write_text('{"schema_version": 1}')
    read = read_slice_config(config)
    assert read.front is None and "is not an edgemtl tune front: model_sha256: Field required" in read.front_warning
    front_path(config).write_text(_front(slim[2], "0" * 64).model_dump_json())
    read = read_slice_config(config)
    assert read.front.model_sha256 == "0" * 64 and read.front_file == "chosen.front.json" and read.front_warning is None
    assert read.source == f"width configuration {config}" and read.widths.model_dump() == NARROWER
