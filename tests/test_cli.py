"""The command line end to end: train, eval, inspect, targets, compile, and every bad-input path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from custom_models import SPEC_YAML, unet_two_heads
from edgemtl.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("edgemtl: error:"), err
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in err


def test_train_then_eval(capsys, tmp_path):
    out_path = tmp_path / "model.pt"
    code, out, _ = run_cli(capsys, "train", "--arch", "mtl-cnn", "--steps", "2", "--batch-size", "4",
                           "--train-samples", "8", "--config", "width=4", "--config", "head_width=4", "-o", out_path)
    assert code == 0 and out_path.is_file() and "segmentation" in out
    code, out, _ = run_cli(capsys, "eval", out_path, "--n", "16", "--json")
    result = json.loads(out)
    assert code == 0 and result["samples"] == 16 and set(result["metrics"]) == {"segmentation", "depth", "normals", "edges", "scene"}


def test_inspect_json(capsys, checkpoints):
    code, out, _ = run_cli(capsys, "inspect", checkpoints["mtl-cnn"], "--json")
    result = json.loads(out)
    assert code == 0 and result["tasks"]["scene"]["macs"] < result["all_tasks"]["macs"]
    assert 0 < result["tasks"]["depth"]["shared_fraction"] < 1


def test_targets_lists_host(capsys):
    code, out, _ = run_cli(capsys, "targets")
    assert code == 0 and "host" in out and "cpu-onnxruntime" in out


@pytest.mark.parametrize("arch", ["mtl-cnn", "m3vit"])
def test_compile_writes_the_bundle(capsys, tmp_path, checkpoints, arch):
    bundle = tmp_path / "bundle"
    code, out, err = run_cli(capsys, "compile", checkpoints[arch], "--target", "host", "-o", bundle, "--runs", "5",
                             "--threads", "1")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"]["name"] == "host" and manifest["model"]["arch"] == arch
    assert len(manifest["model"]["sha256"]) == 64
    assert [s["status"] for s in manifest["steps"]] == ["ok"] * len(manifest["steps"])
    for name, entry in manifest["tasks"].items():
        assert (bundle / entry["artifacts"]["onnx"]).is_file()
        assert entry["max_abs_error"] < 1e-3 and entry["verification"]["data"] == "scenes/val"
        assert entry["params"] > 0 and entry["macs"] > 0 and entry["peak_activation_bytes"] > 0
        latency = entry["latency_ms"]
        assert latency["provenance"] == "measured" and latency["runtime"].startswith("onnxruntime")
        assert latency["runs"] >= 5 and latency["median"] > 0 and latency["p90"] >= latency["median"]
        assert entry["metrics"].keys() == entry["metrics_pytorch"].keys()
    assert (bundle / manifest["all_tasks"]["artifacts"]["onnx"]).is_file()
    assert (bundle / "report.html").is_file() and (bundle / "report.json").is_file()
    assert not list(tmp_path.glob(".bundle*"))  # no staging left behind


def test_compile_selected_tasks_factory_model(capsys, tmp_path):
    weights, spec = tmp_path / "weights.pt", tmp_path / "spec.yaml"
    torch.save(unet_two_heads().state_dict(), weights)
    spec.write_text(SPEC_YAML)
    bundle = tmp_path / "bundle"
    code, _, err = run_cli(capsys, "compile", weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                           "--tasks", "depth", "-o", bundle, "--no-latency")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert list(manifest["tasks"]) == ["depth"]
    assert "random normal inputs" in manifest["tasks"]["depth"]["verification"]["data"]


def _bad_inputs(tmp_path: Path, checkpoints) -> dict[str, tuple[list, str]]:
    good = checkpoints["mtl-cnn"]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    pickled = tmp_path / "pickled.pt"
    torch.save(unet_two_heads(), pickled)
    not_bundle = tmp_path / "precious"
    not_bundle.mkdir()
    (not_bundle / "thesis.txt").write_text("do not delete")
    return {
        "unknown target": ([good, "--target", "nope"], "unknown target 'nope'; available:"),
        "missing file": ([tmp_path / "nope.pt"], "does not exist"),
        "truncated": ([truncated], "corrupt, truncated"),
        "pickled": ([pickled], "--trust"),
        "unknown task": ([good, "--tasks", "depth,colour"], "unknown task 'colour'"),
        "foreign folder": ([good, "-o", not_bundle], "is not an edgemtl bundle"),
        "wrong data": ([good, "--data", "digits"], "data set 'digits' has images of shape"),
        "bad data": ([good, "--data", "cifar"], "unknown data set 'cifar'"),
    }


@pytest.mark.parametrize("case", ["unknown target", "missing file", "truncated", "pickled", "unknown task",
                                  "foreign folder", "wrong data", "bad data"])
def test_compile_bad_input_is_one_line_exit_2_and_leaves_nothing(capsys, tmp_path, checkpoints, case):
    args, pattern = _bad_inputs(tmp_path, checkpoints)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    output = [] if "-o" in args else ["-o", tmp_path / "out"]
    code, _, err = run_cli(capsys, "compile", *args, *output, "--no-latency")
    assert_one_line_error(code, err, pattern)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "do not delete"


def test_failing_verification_leaves_no_bundle_and_keeps_the_old_one(capsys, tmp_path, checkpoints, monkeypatch):
    bundle = tmp_path / "bundle"
    assert run_cli(capsys, "compile", checkpoints["mtl-cnn"], "-o", bundle, "--no-latency")[0] == 0
    first = (bundle / "manifest.json").read_text()
    import edgemtl.flows.cpu_onnxruntime as flow

    real_run = flow.ort_backend.run
    monkeypatch.setattr(flow.ort_backend, "run", lambda s, x: {k: v + 1.0 for k, v in real_run(s, x).items()})
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "-o", bundle, "--no-latency")
    assert_one_line_error(code, err.splitlines()[-1], "disagrees with PyTorch")  # after the steps' progress lines
    assert (bundle / "manifest.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_usage_errors_exit_2(capsys):
    code, _, _ = run_cli(capsys, "compile")
    assert code == 2
