"""`compile --max-drop / --allow-over-budget / --layer-bits`: bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import tiny_model
from edgemtl.passes.int8.config import Int8Config
from edgemtl.passes.layer_bits import write_layer_bits
from test_cli import assert_one_line_error, run_cli


@pytest.mark.parametrize("target, args, pattern", [
    ("zcu104", ["--max-drop", "depth=0"], "a budget is a relative loss in (0, 1)"),
    ("gap9", ["--max-drop", "1.5"], "a budget is a relative loss in (0, 1)"),
    ("arm64", ["--max-drop", "colour=0.02"], "--max-drop names unknown task(s) colour"),
    ("gap9", ["--max-drop", "depth=two"], "--max-drop takes task=value"),
    ("host", ["--max-drop", "0.02"], "host does not quantize"),
    ("gap9", ["--layer-bits", "first=8,8"], "gap9 quantizes every layer to int8"),
    ("zcu104", ["--layer-bits", "first=8,32"], "zcu104 takes 2..16 bits"),
    ("zcu104", ["--layer-bits", "nowhere.json"], "--layer-bits file nowhere.json does not exist"),
])
def test_compile_refuses_a_bad_budget_or_widths_before_any_work(capsys, tmp_path, checkpoints, target, args, pattern):
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", target, *args, "-o", tmp_path / "b")
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "b").exists()


def test_compile_refuses_a_widths_file_for_another_model(capsys, tmp_path, checkpoints):
    other, spec = tiny_model("m3vit")
    write_layer_bits(tmp_path / "bits.json", other, spec, {"depth": {"precision": "w4a4", "layers": {}}})
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "zcu104", "--layer-bits",
                           tmp_path / "bits.json", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "was written for another model")
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "zcu104", "--layer-bits",
                           tmp_path / "bits.json", "--layer-bits", "first=8,8", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "either one FILE.json or LAYER=W,A pairs")
    assert not (tmp_path / "b").exists()


def test_targets_state_their_default_budget(capsys):
    code, out, _ = run_cli(capsys, "targets")
    assert code == 0
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "max drop 3%" in lines["zcu104"] and "max drop 2%" in lines["gap9"] and "max drop 1%" in lines["arm64"]
    assert "max drop" not in lines["host"]
    code, out, _ = run_cli(capsys, "targets", "--json")
    assert {t["name"]: t["max_drop"] for t in json.loads(out)} == {"arm64": 0.01, "gap9": 0.02, "host": None, "zcu104": 0.03}


def test_a_task_over_its_budget_fails_the_compile_unless_allowed_and_then_the_report_says_so(capsys, tmp_path,
                                                                                              checkpoints, monkeypatch):
    """gap9's int8 of the tiny model loses 0.01% of normals' angular error: over a budget of 0.0001%."""
    from edgemtl.flows import int8

    args = [checkpoints["mtl-cnn"], "--target", "gap9", "--tasks", "normals", "--max-drop", "normals=0.000001"]
    full = int8.int8_config  # two remedies are enough to fail (and quicker); every remedy: test_quantize_int8.py
    monkeypatch.setattr(int8, "int8_config", lambda ctx: dataclasses.replace(full(ctx), remedies=full(ctx).remedies[:2]))
    code, _, err = run_cli(capsys, "compile", *args, "-o", tmp_path / "b")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("edgemtl: error: task 'normals' is over its accuracy "
                                                                    "budget after every remedy: best angular_error")
    assert "> 0.0001% (--max-drop); try a model trained" in last and "--allow-over-budget" in last
    assert not (tmp_path / "b").exists()

    code, _, err = run_cli(capsys, "compile", *args, "--allow-over-budget", "--stop-after", "check_budget",
                           "-o", tmp_path / "b")
    assert code == 0, err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["quant_budget"]["over_budget"] == ["normals"] and manifest["quant_budget"]["allow_over_budget"]
    budget = manifest["tasks"]["normals"]["budget"]
    assert not budget["within"] and budget["over_budget_allowed"] and budget["set_by"] == "--max-drop"
    assert [r["name"] for r in budget["remedies"]] == [name for name, _ in Int8Config().remedies[:2]]
    assert "OVER BUDGET" in (tmp_path / "b" / "report.html").read_text()


@pytest.mark.needs_hls4ml
def test_a_bundles_layer_bits_file_pins_every_tasks_widths(capsys, tmp_path, checkpoints):
    """What the zcu104 flow writes (layer_bits.json) is what --layer-bits FILE.json reads: one rung at those widths."""
    pytest.importorskip("brevitas")
    from edgemtl.model.checkpoint import load

    loaded = load(checkpoints["mtl-cnn"])
    pinned = {"depth": {"precision": "w8a8", "layers": {"heads.depth.predict": (4, 8)}}}
    write_layer_bits(tmp_path / "bits.json", loaded.model, loaded.spec, pinned)
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "zcu104", "--tasks", "depth",
                           "--layer-bits", tmp_path / "bits.json", "--qat-steps", "2", "--stop-after", "check_budget",
                           "-o", tmp_path / "b")
    assert code == 0, err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    quantization = manifest["tasks"]["depth"]["quantization"]
    assert [row["rung"] for row in quantization["rungs"]] == ["pinned widths (--layer-bits file)"]
    assert quantization["precision"] == "w8a8" and quantization["overrides"] == {"heads.depth.predict": [4, 8]}
    written = json.loads((tmp_path / "b" / manifest["layer_bits"]["file"]).read_text())
    assert written["tasks"] == {"depth": {"precision": "w8a8", "layers": {"heads.depth.predict": [4, 8]}}}
