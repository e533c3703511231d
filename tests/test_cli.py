"""The command line end to end: train, eval, inspect, targets, compile, and every bad-input path."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from custom_models import SPEC_YAML, unet_two_heads
import edgemtl
from edgemtl.cli import main
from edgemtl.errors import EdgemtlError


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def assert_one_line_error(code: int, err: str, pattern: str, exit_code: int = 2) -> None:
    """One `edgemtl: error:` line, no traceback; exit 2 (bad input) unless a failed verification (3) is expected."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == exit_code, err
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


def test_inspect_counts_top_k_experts_for_moe_models(capsys, checkpoints):
    code, out, _ = run_cli(capsys, "inspect", checkpoints["m3vit"], "--json")
    moe = json.loads(out)["moe"]
    assert code == 0 and moe["tokens_per_image"] == 64
    for entry in moe["tasks"].values():  # one task runs one backbone pass: a fraction of all tasks' MACs
        assert entry["macs"] < moe["all_tasks_same_model_macs"] and entry["share_of_all_tasks"] == pytest.approx(
            entry["macs"] / moe["all_tasks_same_model_macs"])
        assert entry["dense_vit_single_task_macs"] == entry["macs"] - moe["router_macs"]
    code, out, _ = run_cli(capsys, "inspect", checkpoints["m3vit"])
    assert code == 0 and "mixture of experts" in out and "router" in out


def test_compile_refuses_an_expert_coverage_outside_zero_one(capsys, tmp_path, checkpoints):
    code, _, err = run_cli(capsys, "compile", checkpoints["m3vit"], "-o", tmp_path / "b", "--expert-coverage", "1.5")
    assert code == 2 and "coverage must lie in (0, 1]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_compile_refuses_a_precision_the_target_lacks(capsys, tmp_path, checkpoints):
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "-o", tmp_path / "b", "--precision", "w4a4")
    assert code == 2 and "target host supports precisions fp32, not 'w4a4'" in err
    assert not (tmp_path / "b").exists()


def test_targets_lists_host(capsys):
    code, out, _ = run_cli(capsys, "targets")
    assert code == 0 and "host" in out and "cpu-onnxruntime" in out


@pytest.mark.parametrize("arch", ["mtl-cnn", "m3vit"])
def test_compile_writes_the_bundle(capsys, tmp_path, checkpoints, arch):
    bundle = tmp_path / "bundle"
    code, out, err = run_cli(capsys, "compile", checkpoints[arch], "--target", "host", "-o", bundle, "--runs", "5",
                             "--threads", "1")
    assert code == 0, err
    assert "\n\n" not in err.strip(), err  # piped: one line per step, no live progress display between them
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"]["name"] == "host" and manifest["model"]["arch"] == arch
    assert len(manifest["model"]["sha256"]) == 64
    skipped = {"partition_experts", "task_switching"} if arch == "mtl-cnn" else set()  # nothing to do without experts
    assert [s["status"] for s in manifest["steps"]] == ["skipped" if s["name"] in skipped else "ok" for s in manifest["steps"]]
    for name, entry in manifest["tasks"].items():
        assert (bundle / entry["artifacts"]["onnx"]).is_file()
        assert entry["max_abs_error"] < 1e-3 and entry["verification"]["data"] == "scenes/val"
        assert entry["params"] > 0 and entry["macs"] > 0 and entry["peak_activation_bytes"] > 0
        latency = entry["latency_ms"]
        assert latency["provenance"]["kind"] == "measured" and latency["runtime"].startswith("onnxruntime")
        assert latency["runs"] >= 5 and latency["median"] > 0 and latency["p90"] >= latency["median"]
        assert entry["metrics"].keys() == entry["metrics_pytorch"].keys()
    assert (bundle / manifest["all_tasks"]["artifacts"]["onnx"]).is_file()
    assert (bundle / "report.html").is_file() and (bundle / "report.json").is_file()
    assert not list(tmp_path.glob(".bundle*"))  # no staging left behind
    report = (bundle / "report.html").read_text()
    if arch == "mtl-cnn":  # no experts: the partition step says why it did nothing, the compile goes on
        assert "nothing to partition" in manifest["passes"]["partition_experts"]["skipped"] and "moe" not in manifest
        steps = {step["name"]: step for step in manifest["steps"]}
        assert steps["partition_experts"]["status"] == "skipped" and "nothing to partition" in steps["partition_experts"]["reason"]
        assert steps["export_onnx"]["status"] == "ok"  # a step that did its work is "ok", one that had none is not
        assert "skipped <span class=\"dim\">the mtl-cnn model has no task-conditioned" in report
        return
    moe, partition = manifest["moe"], manifest["passes"]["partition_experts"]
    for name, entry in partition["tasks"].items():
        assert entry["experts_kept"] == manifest["tasks"][name]["expert_path"]["experts_kept"]
        assert entry["params_after"] <= entry["params_before"] and entry["metric_after"] is not None
        assert moe["memory_plan"][name]["totals"]["expert_major"]["peak_on_chip_bytes"] > 0
        assert 0 < moe["macs"]["tasks"][name]["share_of_all_tasks"] < 1
    switching = moe["switching"]
    assert (bundle / switching["artifact"]).is_file() and switching["verification"]["passed"]
    # the switchable artifact holds every served task's weights: its resident memory is at least their bytes
    weights = sum(entry["params_after"] for entry in partition["tasks"].values()) * 4
    assert switching["resident_memory"]["switchable_bytes"] >= 0.5 * weights / len(partition["tasks"])
    assert switching["switch_latency"]["provenance"]["kind"] == "measured"
    assert "Expert paths" in report and report.count("data:image/png") >= 5  # heat map and memory plot included


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
        "wrong data": ([good, "--data", "digits"], "images in built-in data set 'digits' are [1, 32, 32] but the model takes"),
        "bad data": ([good, "--data", "cifar"], "--data 'cifar' is neither a built-in set"),
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
    assert_one_line_error(code, err.splitlines()[-1], "disagrees with PyTorch", exit_code=3)  # after the progress lines
    assert (bundle / "manifest.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_usage_errors_exit_2(capsys):
    code, _, _ = run_cli(capsys, "compile")
    assert code == 2


@pytest.mark.parametrize("args, pattern", [
    (["--flops-target", "1.5"], "strictly between 0 and 1"),
    (["--flops-target", "0"], "strictly between 0 and 1"),
    (["--max-drop", "colour=0.2"], "unknown task(s) colour"),
    (["--max-drop", "depth"], "--max-drop takes task=value"),
])
def test_prune_bad_input(capsys, tmp_path, checkpoints, args, pattern):
    code, _, err = run_cli(capsys, "prune", checkpoints["mtl-cnn"], *args, "-o", tmp_path / "p.pt")
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "p.pt").exists()


def test_prune_without_data_is_an_error(capsys, tmp_path):
    weights, spec = tmp_path / "weights.pt", tmp_path / "spec.yaml"
    torch.save(unet_two_heads().state_dict(), weights)
    spec.write_text(SPEC_YAML)
    code, _, err = run_cli(capsys, "prune", weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                           "-o", tmp_path / "p.pt")
    assert_one_line_error(code, err, "pruning needs real images")
    code, _, err = run_cli(capsys, "compile", weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                           "--prune-flops", "0.5", "-o", tmp_path / "bundle")
    assert_one_line_error(code, err, "pruning needs real images")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml", "weights.pt"]


def test_prune_cli_writes_a_pruned_checkpoint_and_says_which_task_budgets_stopped_it(capsys, tmp_path, checkpoints):
    budgets = [arg for task in ("segmentation", "depth", "normals", "edges", "scene") for arg in ("--max-drop", f"{task}=0.0001")]
    code, out, err = run_cli(capsys, "prune", checkpoints["mtl-cnn"], "--flops-target", "0.3", *budgets, "--finetune-steps",
                             "0", "--final-finetune-steps", "0", "--oracle-samples", "8", "--sparsity-steps", "0", "-o", tmp_path / "pruned.pt")
    assert code == 0, err
    assert "per-task metric before -> after" in out and "kept channels per layer" in out
    assert torch.load(tmp_path / "pruned.pt", weights_only=True)["meta"]["pagcp"]["macs_after"] > 0
    note = " ".join(err.split())
    assert "the FLOPs target 0.3 was not reached" in note
    stoppers = note.split("stopped by the loss budget of: ")[1]
    assert any(f"{task} (" in stoppers for task in ("segmentation", "depth", "normals", "edges", "scene")), note


def test_compile_runs_the_pruning_pass_first(tmp_path, checkpoints):
    from edgemtl.compile import compile_model
    from edgemtl.flow import CompileOptions
    from edgemtl.passes.base import PassRequest
    from edgemtl.passes.prune_pagcp import PAGCPConfig

    quick = PAGCPConfig(flops_target=0.9, default_max_drop=5.0, finetune_steps=1, final_finetune_steps=0,
                        oracle_samples=8, max_rounds=2, sparsity_steps=0)
    bundle = compile_model(edgemtl.load(checkpoints["mtl-cnn"]), "host", tmp_path / "bundle",
                           CompileOptions(passes=(PassRequest("prune_pagcp", quick),), measure_latency=False))
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["passes"]["prune_pagcp"]
    assert manifest["steps"][0]["name"] == "prune_pagcp" and record["seconds"] > 0
    assert record["macs_after"] < record["macs_before"] and record["params_after"] < record["params_before"]
    assert set(record["metrics_before"]) == set(record["metrics_after"]) == set(manifest["tasks"])
    assert (bundle / record["artifacts"]["checkpoint"]).is_file() and record["kept_ratios"]
    assert manifest["all_tasks"]["macs"] == record["macs_after"]  # later steps compiled the pruned model


def test_eval_with_data_of_another_shape(capsys, tmp_path):
    weights, spec = tmp_path / "weights.pt", tmp_path / "spec.yaml"
    torch.save(unet_two_heads().state_dict(), weights)
    spec.write_text(SPEC_YAML)
    code, _, err = run_cli(capsys, "eval", weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                           "--data", "digits")
    assert_one_line_error(code, err, "are [1, 32, 32] but the model takes [3, 32, 32]")


@pytest.mark.slow
@pytest.mark.needs_hls4ml
def test_compile_for_zcu104_quantizes_exports_and_c_simulates(capsys, tmp_path, checkpoints):
    """A dense task (the heavier path: skip concatenation, inner resize, final resize left to the PS); the pooled
    linear head is covered by the hls4ml backend's own tests. Slow (~70 s: hls4ml C simulation and FINN); the default
    suite reaches the zcu104 flow through the CLI up to its budget check (test_cli_budget.py) and the hls4ml backend's
    own C-simulation tests."""
    pytest.importorskip("hls4ml")
    bundle = tmp_path / "zcu104"
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "zcu104", "-o", bundle, "--tasks", "depth",
                           "--qat-steps", "2", "--no-latency")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["tasks"]["depth"]
    assert entry["quantization"]["precision"] == "w4a4" and entry["export_check"]["qonnx_max_diff_lsb"] <= 1
    for artifact in ("qonnx", "qcdq", "hls4ml"):
        assert (bundle / entry["artifacts"][artifact]).exists()
    hls = entry["hls4ml"]
    assert hls["ok"] and hls["csim"]["passed"] and hls["csim"]["exact"] and hls["csim"]["max_abs_diff_lsb"] == 0
    assert hls["csim"]["provenance"]["kind"] == "simulated"
    assert f"on {hls['csim']['samples']} samples" in hls["csim"]["provenance"]["detail"]
    testbench = hls["testbench"]
    assert testbench["matches_csim"] is True if testbench["built"] else testbench["reason"]
    assert entry["roofline"]["provenance"]["kind"] == "estimated"
    finn = entry["finn"]
    if finn.get("available", True):  # .venv-finn made (always in CI): FINN's estimate for every target fps
        assert finn["ok"] and set(finn["by_target_fps"]) == {"1000", "10000"}, finn
    else:
        assert finn["how_to_create"] == "edgemtl toolchain install finn"
    assert (bundle / "hw" / "README.md").is_file() and (bundle / "hw" / "driver.py").is_file()
    # the final bilinear resize runs on the PS: the PL streams the map before it, the driver resizes
    resize = {"size": [64, 64], "mode": "bilinear", "align_corners": False}
    assert entry["quantization"]["host_resize"] == resize
    streamed = json.loads((bundle / hls["project"] / "io.json").read_text())["outputs"][0]
    assert streamed["name"] == "depth" and "fixed" in streamed["precision"]
    assert streamed["host_resize"] == resize and streamed["shape"] == [1, 32, 32]


@pytest.mark.slow
@pytest.mark.needs_hls4ml
def test_compile_for_zcu104_leaves_out_a_task_with_an_op_hls4ml_lacks_before_qat(capsys, tmp_path):
    from custom_models import UPSAMPLING_SPEC_YAML, upsampling_and_value

    weights, spec, npz = tmp_path / "w.pt", tmp_path / "spec.yaml", tmp_path / "d.npz"
    torch.save(upsampling_and_value().state_dict(), weights)
    spec.write_text(UPSAMPLING_SPEC_YAML)
    np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (24, 3, 16, 16), dtype=np.uint8))
    code, _, err = run_cli(capsys, "compile", weights, "--model-factory", "custom_models:upsampling_and_value",
                           "--spec", spec, "--data", npz, "--target", "zcu104", "-o", tmp_path / "z", "--qat-steps", "2")
    assert code == 0, err
    tasks = json.loads((tmp_path / "z" / "manifest.json").read_text())["tasks"]
    refused = tasks["up"]["hls4ml"]
    assert not refused["ok"] and "'ConvTranspose'" in refused["error"] and refused["checked"] == "before QAT"
    assert "quantization" not in tasks["up"] and "roofline" in tasks["up"]  # no QAT spent on it; still estimated
    assert tasks["value"]["hls4ml"]["csim"]["exact"]
    assert "warning: task 'up' has no hls4ml artifact" in " ".join(err.split())


@pytest.mark.needs_hls4ml
def test_compile_for_zcu104_turns_an_moe_model_into_c_simulated_hls_cpp(capsys, tmp_path, checkpoints):
    """hls4ml cannot express the expert dispatch: its steps skip, saying so; the task's expert path goes to int8 and
    edgemtl's HLS C++, bit-exact with the integer reference in g++'s C simulation (tests/flows/test_zcu104_moe.py)."""
    pytest.importorskip("hls4ml")  # the C simulation's ap_int.h headers
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH (sudo apt-get install g++)")
    bundle = tmp_path / "zcu104-moe"
    code, _, err = run_cli(capsys, "compile", checkpoints["m3vit"], "--target", "zcu104", "-o", bundle, "--tasks", "depth",
                           "--no-latency", "--expert-coverage", "0.6")
    assert code == 0 and "warning:" not in err, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "needs_other_toolchain" not in manifest
    assert "expert dispatch" in manifest["passes"]["quantize_brevitas"]["skipped"]
    entry = manifest["tasks"]["depth"]
    assert entry["int8"]["ok"] and entry["hls_cpp"]["csim"]["exact"] and entry["hls_cpp"]["csim"]["samples"] == 4
    assert (bundle / entry["artifacts"]["hls_cpp"] / "build_prj.tcl").is_file()
    kept = len(entry["expert_path"]["experts_kept"][0])   # a shrunken path: fewer than the model's 4 experts
    assert kept < 4 and f"of {kept} experts on chip" in entry["hls_cpp"]["moe"][0]["plan_expert_major"]["notes"]
    iterations, estimate = entry["hls_cpp"]["csim"]["pipelined_iterations"], entry["hls_cpp"]["estimate"]
    assert len(iterations) == 4 and min(iterations) > 0 and estimate["cycles_per_sample"] == iterations
    assert estimate["fits"] and estimate["latency_ms"] > 0 and estimate["provenance"]["kind"] == "estimated"
    assert entry["roofline"]["provenance"]["kind"] == "estimated" and entry["roofline"]["precision"] == "w8a8"
    code, _, err = run_cli(capsys, "compile", checkpoints["m3vit"], "--target", "zcu104", "-o", tmp_path / "w4",
                           "--tasks", "depth", "--precision", "w4a4")
    assert_one_line_error(code, err, "--precision sets the hls4ml path's quantizers; an MoE model on zcu104 is quantized "
                                     "to int8 (w8a8)")
    assert not (tmp_path / "w4").exists()


def test_compile_for_gap9_verifies_the_c_bit_exact_and_estimates(capsys, tmp_path, checkpoints):
    bundle = tmp_path / "gap9"
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "gap9", "-o", bundle,
                           "--tasks", "depth,scene", "--data", "scenes")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    for task in ("depth", "scene"):
        entry = manifest["tasks"][task]
        assert entry["int8"]["ok"] and set(entry["int8"]["metric_int8"]) == set(entry["int8"]["metric_float"])
        assert entry["c"]["host"]["bit_exact"] and entry["c"]["host"]["samples"] == 32
        qemu = entry["c"]["qemu"]
        assert "skipped" in qemu or (qemu["bit_exact"] and qemu["provenance"]["kind"] == "simulated")
        assert entry["memory_placement"]["status"] == "fits-l2"
        assert entry["cycle_estimate"]["provenance"]["kind"] == "estimated"
        for name in ("network.c", "network.h", "kernels.c", "test_vectors.h"):
            assert (bundle / entry["artifacts"]["c"] / name).is_file()
        assert (bundle / entry["artifacts"]["int8_onnx"]).is_file()
        assert "available" in entry["deeploy"]  # generated, refused with its reasons, or how to install it
    assert not manifest["tasks"]["depth"]["deeploy_mappable"]["ok"]  # bilinear resize: PULPOpen has no Resize
    assert (bundle / "hw" / "main.c").is_file() and (bundle / "hw" / "README.md").is_file()


@pytest.mark.slow
def test_compile_the_moe_vit_for_gap9_deploys_each_task_s_expert_path_bit_exact(capsys, tmp_path, checkpoints):
    """Each task's expert path (partition_experts) quantized with its MoE layer as one integer node; the C runs it
    expert by expert, bit-exact on the host and under qemu rv32; its MACs and scratch are in the estimates."""
    bundle = tmp_path / "gap9-moe"
    code, _, err = run_cli(capsys, "compile", checkpoints["m3vit"], "--target", "gap9", "-o", bundle,
                           "--tasks", "depth,scene", "--data", "scenes", "--expert-coverage", "0.6")
    assert code == 0 and "warning:" not in err, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    for task in ("depth", "scene"):
        entry = manifest["tasks"][task]
        assert len(entry["expert_path"]["experts_kept"][0]) < 4 and entry["int8"]["ok"]   # a shrunken path
        assert [layer["op"] for layer in entry["int8"]["layers"].values()].count("moe") == 1
        assert entry["c"]["host"]["bit_exact"] and entry["c"]["qemu"]["bit_exact"]
        moe = next(row for row in entry["cycle_estimate"]["layers"] if row["op"] == "moe")
        assert moe["macs"] > 0 and entry["memory_placement"]["status"] == "fits-l2"
        assert any(u["op"] == "moe" for u in entry["deeploy_mappable"]["unmapped"])


@pytest.mark.slow  # ~15 s: the whole gap9 flow (qemu included) for the task that compiles
def test_compile_for_gap9_records_a_task_with_an_unsupported_op_and_compiles_the_others(capsys, tmp_path):
    weights, spec = tmp_path / "weights.pt", tmp_path / "spec.yaml"
    torch.save(unet_two_heads().state_dict(), weights)
    spec.write_text(SPEC_YAML.replace("32, 32", "64, 64"))
    bundle = tmp_path / "gap9-unet"
    code, _, err = run_cli(capsys, "compile", weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                           "--target", "gap9", "-o", bundle, "--data", "scenes")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    failed = manifest["tasks"]["depth"]["int8"]
    assert not failed["ok"] and "ReduceMax" in failed["error"] and "'depth'" in failed["error"]
    assert manifest["tasks"]["seg"]["c"]["host"]["bit_exact"]
    # the bundle lacks a task the user asked for: the console says so, not only the manifest
    assert "warning: task 'depth' has no int8 artifact in this bundle: task 'depth': layer" in " ".join(err.split())


def test_inspect_target_names_the_op_each_task_path_cannot_take(capsys, tmp_path):
    """Seconds, before any compile: the U-Net's depth head divides by a ReduceMax (no int8 lowering); its seg path fits."""
    weights, spec = tmp_path / "weights.pt", tmp_path / "spec.yaml"
    torch.save(unet_two_heads().state_dict(), weights)
    spec.write_text(SPEC_YAML)
    model = [weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec]
    code, out, err = run_cli(capsys, "inspect", *model, "--target", "gap9", "--json")
    assert code == 0, err
    tasks = json.loads(out)["target"]["tasks"]
    assert tasks["seg"] == {"supported": True}
    assert not tasks["depth"]["supported"] and "is an ONNX 'ReduceMax'" in tasks["depth"]["reason"]
    code, out, err = run_cli(capsys, "inspect", *model, "--target", "host")
    assert code == 0 and "host: task 'depth': no op refused" in " ".join(out.split()), err
    code, _, err = run_cli(capsys, "inspect", *model, "--target", "gap9", "--tasks", "depth")
    assert_one_line_error(code, err, "no task path of")
    code, _, err = run_cli(capsys, "inspect", *model, "--target", "gap10")
    assert code == 2 and "gap10" in err


def test_inspect_target_on_an_moe_model_for_the_fpga_says_what_the_compile_leaves_out(capsys, checkpoints):
    code, out, err = run_cli(capsys, "inspect", checkpoints["m3vit"], "--target", "zcu104", "--tasks", "depth", "--json")
    assert code == 0, err  # compile takes another path (int8 + edgemtl's HLS C++): not an error
    checked = json.loads(out)["target"]
    assert "expert dispatch" in checked["note"] and "Vitis HLS C++" in checked["note"]
    assert checked["tasks"]["depth"] == {"supported": True}  # the int8 converter's checks: one integer moe node
    code, out, err = run_cli(capsys, "inspect", checkpoints["m3vit"], "--target", "gap9", "--tasks", "depth")
    assert code == 0 and "gap9: task 'depth': no op refused" in " ".join(out.split()), err  # one integer moe node


def test_compile_for_gap9_fails_cleanly_when_no_task_can_be_quantized(capsys, tmp_path):
    weights, spec = tmp_path / "weights.pt", tmp_path / "spec.yaml"
    torch.save(unet_two_heads().state_dict(), weights)
    spec.write_text(SPEC_YAML.replace("32, 32", "64, 64"))
    code, _, err = run_cli(capsys, "compile", weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                           "--target", "gap9", "-o", tmp_path / "none", "--data", "scenes", "--tasks", "depth")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("edgemtl: error: no task could be quantized to int8")
    assert "'ReduceMax'" in last
    assert not (tmp_path / "none").exists()


def test_compile_for_arm64_without_tvm_says_how_to_add_it_and_tries_every_int8_remedy(capsys, tmp_path, checkpoints,
                                                                                        monkeypatch):
    from edgemtl.backends import tvm_build
    from edgemtl.flows import cpu_arm64

    monkeypatch.setattr(tvm_build, "tvm_missing", lambda: "apache-tvm is not installed (tvm): pip install edgemtl[tvm]")
    # no int8 graph can meet it: every remedy is tried (a budget no user can give: --max-drop takes (0, 1))
    real_config = cpu_arm64._int8_config
    monkeypatch.setattr(cpu_arm64, "_int8_config", lambda ctx: dataclasses.replace(real_config(ctx), budgets={"scene": -10.0}))
    bundle = tmp_path / "arm64-notvm"
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "arm64", "-o", bundle,
                           "--tasks", "scene", "--threads", "1")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["tasks"]["scene"]
    assert entry["tvm"] == {**entry["tvm"], "built": False, "reason": "skipped: pip install edgemtl[tvm]"}
    assert entry["artifacts"]["tvm"] == {} and not (bundle / "tasks/scene/tvm").exists()
    int8 = entry["int8"]
    assert [a["remedy"] for a in int8["attempts"]] == [name for name, _ in cpu_arm64.INT8.remedies]
    best = min(int8["attempts"], key=lambda a: a["relative_loss"])
    assert int8["relative_loss"] == best["relative_loss"] and int8["remedy"] == best["remedy"]
    assert not int8["meets_target"] and entry["runtime"] == "onnxruntime-float" and "after every remedy" in entry["runtime_reason"]
    assert (bundle / entry["artifacts"]["int8_onnx"]).is_file() and not list(bundle.rglob("*.try.onnx"))
    # the budget record: every remedy with its measured latency, then arm64's last remedy, the task in float
    budget = entry["budget"]
    assert [r["name"] for r in budget["remedies"]] == [*(a["remedy"] for a in int8["attempts"]), "task in float"]
    assert all(r["cost"]["latency_ms"] > 0 and r["cost"]["provenance"]["kind"] == "measured" for r in budget["remedies"])
    assert budget["within"] and budget["shipped"] == "task in float" and budget["relative_loss"] == 0.0


def test_arm64_int8_of_a_task_without_labels_searches_remedies_by_its_agreement_with_float(capsys, tmp_path,
                                                                                           monkeypatch):
    """Unlabelled (the npz labels nothing): remedies are judged by 1 - cosine against the float model, and a remedy
    ONNX Runtime's quantizer fails on is recorded and skipped, not fatal to the task."""
    from edgemtl.backends import tvm_build
    from edgemtl.flows import cpu_arm64
    from edgemtl.passes import quantize_int8_qdq

    monkeypatch.setattr(tvm_build, "tvm_missing", lambda: "apache-tvm is not installed (tvm): pip install edgemtl[tvm]")
    # unreachable: every remedy is tried
    real_config = cpu_arm64._int8_config
    monkeypatch.setattr(cpu_arm64, "_int8_config", lambda ctx: dataclasses.replace(real_config(ctx), budgets={"anchors": -1.0}))
    real = quantize_int8_qdq.quantize_qdq

    def percentile_breaks(float_onnx, output, samples, config):
        if config.method == "percentile":
            raise EdgemtlError("ONNX Runtime int8 quantization of model.onnx failed: inhomogeneous shape")
        return real(float_onnx, output, samples, config)

    monkeypatch.setattr(quantize_int8_qdq, "quantize_qdq", percentile_breaks)
    from custom_models import HEADS_SPEC_YAML, regression_and_raw_heads

    weights, spec, npz = tmp_path / "w.pt", tmp_path / "spec.yaml", tmp_path / "d.npz"
    torch.save(regression_and_raw_heads().state_dict(), weights)
    spec.write_text(HEADS_SPEC_YAML)
    np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8))
    code, _, err = run_cli(capsys, "compile", weights, "--model-factory", "custom_models:regression_and_raw_heads",
                           "--spec", spec, "--data", npz, "--target", "arm64", "-o", tmp_path / "a", "--tasks", "anchors",
                           "--threads", "1", "--no-latency")
    assert code == 0, err
    int8 = json.loads((tmp_path / "a" / "manifest.json").read_text())["tasks"]["anchors"]["int8"]
    assert [a["remedy"] for a in int8["attempts"]] == [name for name, _ in cpu_arm64.INT8.remedies]
    failed = [a["remedy"] for a in int8["attempts"] if "error" in a]
    assert failed == [name for name, config in cpu_arm64.INT8.remedies if config.method == "percentile"]
    best = min((a for a in int8["attempts"] if "error" not in a), key=lambda a: a["relative_loss"])
    assert best["relative_loss"] == pytest.approx(1 - best["cosine_vs_float"])
    assert int8["remedy"] == best["remedy"] and int8["agreement_with_float"]["cosine_vs_float"] == best["cosine_vs_float"]
    assert int8["meets_target"] is False and "no labels" in int8["metrics"]


@pytest.mark.needs_tvm
def test_compile_for_arm64_builds_float_int8_and_tvm_per_task(capsys, tmp_path, checkpoints):
    pytest.importorskip("tvm")
    import numpy as np

    from edgemtl.backends import tvm_build

    bundle = tmp_path / "arm64"
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "arm64", "-o", bundle,
                           "--tasks", "depth,scene", "--threads", "1")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"]["flow"] == "cpu-arm64" and manifest["bundle_layout"]["int8_onnx"] == "tasks/{task}/model.int8.onnx"
    cross = tvm_build.cross_compiler_missing("aarch64")
    for task in ("depth", "scene"):
        entry, files = manifest["tasks"][task], manifest["tasks"][task]["artifacts"]
        assert files["onnx"] == f"tasks/{task}/model.onnx" and files["int8_onnx"] == f"tasks/{task}/model.int8.onnx"
        assert entry["verification"]["passed"] and entry["int8"]["verification"]["passed"]
        int8 = entry["int8"]
        assert set(int8["metric_int8"]) == set(int8["metric_float"]) and int8["calibration"]["format"] == "QDQ"
        assert entry["runtime"] in ("onnxruntime-int8", "onnxruntime-float") and entry["runtime_reason"]
        tvm = entry["tvm"]
        assert files["tvm"]["x86_64"] == f"tasks/{task}/tvm/x86_64/model.so" and tvm["check"]["passed"]
        if cross:
            assert not tvm["built"] and tvm["reason"].startswith("skipped: apt-get install g++-aarch64-linux-gnu")
        else:
            assert tvm["built"] and (bundle / files["tvm"]["aarch64"]).read_bytes()[:4] == b"\x7fELF"
            assert tvm["target"]["mtriple"] == "aarch64-linux-gnu" and not tvm["tuned"]
        inputs = np.load(bundle / files["reference"]["input"])
        outputs = {k: np.load(bundle / files["reference"][k]) for k in ("output_float", "output_int8")}
        assert inputs.shape == (4, 3, 64, 64) and inputs.dtype == np.float32
        assert all(o.shape == (4, *entry["output_shape"]) for o in outputs.values())
        # int8 against float on the same 4 inputs: an RMS error under 10% of the float output's RMS (this test's
        # bound, not the manifest's own tolerance), and not zero (the int8 graph really is quantized)
        error = outputs["output_int8"].astype(np.float64) - outputs["output_float"]
        relative_rms = np.sqrt(np.mean(error ** 2)) / np.sqrt(np.mean(outputs["output_float"].astype(np.float64) ** 2))
        assert 1e-4 < relative_rms < 0.10, relative_rms


@pytest.mark.slow
def test_compile_the_moe_vit_for_arm64_deploys_a_shrunken_expert_path(capsys, tmp_path, checkpoints):
    """The MoE ViT's task path with experts dropped (coverage 0.6 keeps 2 of 4) through the arm64 flow: float and int8
    ONNX verified, TVM checked on the host."""
    pytest.importorskip("tvm")
    bundle = tmp_path / "arm64-moe"
    code, _, err = run_cli(capsys, "compile", checkpoints["m3vit"], "--target", "arm64", "-o", bundle, "--tasks", "depth",
                           "--threads", "1", "--no-latency", "--expert-coverage", "0.6")
    assert code == 0, err
    entry = json.loads((bundle / "manifest.json").read_text())["tasks"]["depth"]
    assert len(entry["expert_path"]["experts_kept"][0]) < 4
    assert entry["verification"]["passed"] and entry["int8"]["verification"]["passed"] and entry["tvm"]["check"]["passed"]


def test_compile_layer_bits_must_be_layer_equals_two_widths(capsys, tmp_path, checkpoints):
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "zcu104", "-o", tmp_path / "b",
                           "--layer-bits", "first=8")
    assert_one_line_error(code, err, "--layer-bits takes LAYER=W,A")
    assert not (tmp_path / "b").exists()


def test_help_version_and_usage_errors_are_one_style(capsys):
    """-h is --help; --version prints it; a usage error is one `edgemtl: error:` line naming the command, exit 2."""
    code, out, _ = run_cli(capsys, "-h")
    assert code == 0 and "compile" in out
    code, out, _ = run_cli(capsys, "compile", "-h")
    assert code == 0 and "--target" in out
    from edgemtl import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"edgemtl {__version__}"
    code, _, err = run_cli(capsys, "compile", "--bogus")
    assert_one_line_error(code, err, "No such option: --bogus")
    assert "edgemtl compile --help" in err and "╭" not in err
    code, _, err = run_cli(capsys, "compile")
    assert_one_line_error(code, err, "compile needs a MODEL")
    code, _, err = run_cli(capsys, "eval")
    assert_one_line_error(code, err, "Missing argument")


def test_a_failed_verification_exits_3_in_one_line(capsys, monkeypatch, checkpoints, tmp_path):
    """2 is bad input, 3 a compiled artifact that does not compute what its reference does, 1 a bug."""
    from edgemtl import compile as compile_module
    from edgemtl.errors import VerificationError

    def disagree(*args, **kwargs):
        raise VerificationError("task 'depth': the generated C on host differs from the reference executor")

    monkeypatch.setattr(compile_module, "compile_model", disagree)
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "host", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "edgemtl: error: task 'depth'", exit_code=3)


def test_targets_as_json_and_tables_print_whole_cells_when_piped(capsys):
    """`--json` on `targets` too; piped (as under pytest), a table's cells are never cut to 'onnxrun…'."""
    code, out, _ = run_cli(capsys, "targets", "--json")
    listed = {t["name"]: t for t in json.loads(out)}
    assert code == 0 and {"host", "gap9", "zcu104", "arm64"} <= set(listed) and listed["zcu104"]["flow"] == "fpga-hls4ml"
    code, out, _ = run_cli(capsys, "targets")
    assert code == 0 and "…" not in out and listed["gap9"]["description"] in out


def test_list_steps_and_stop_after_a_step(capsys, tmp_path, checkpoints):
    """FINN-style: the target's steps in order, and a bundle written after a named step that says where it stopped."""
    code, out, _ = run_cli(capsys, "compile", "--target", "zcu104", "--list-steps")
    names = [line.split()[1] for line in out.splitlines() if line.strip()]
    assert code == 0 and names[:3] == ["load_data", "analyse", "partition_experts"] and "hls4ml_csim" in names
    assert names[names.index("hls4ml_csim") + 1:][:3] == ["quantize_int8", "check_int8_budget", "hls_cpp_csim"]  # MoE models' path
    assert names[names.index("quantize_brevitas") + 1] == "check_budget"
    assert "(skipped for MoE models)" in out and "(skipped otherwise)" in out
    code, out, _ = run_cli(capsys, "compile", "--target", "host", "--list-steps", "--prune-flops", "0.5")
    assert out.split()[1] == "prune_pagcp"
    bundle = tmp_path / "partial"
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--stop-after", "verify_onnxruntime", "-o", bundle)
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["steps"][-1]["name"] == "verify_onnxruntime" and manifest["stopped_after"]["step"] == "verify_onnxruntime"
    assert "measure_latency" in manifest["stopped_after"]["steps_not_run"] and (bundle / "report.html").is_file()
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--stop-after", "synthesis", "-o", tmp_path / "x")
    assert_one_line_error(code, err, "--stop-after 'synthesis' is no step of the host flow")
    assert not (tmp_path / "x").exists()


def test_doctor_lists_each_targets_toolchains_with_the_command_that_adds_a_missing_one(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEMTL_FINN_VENV", str(tmp_path / "no-finn"))
    import edgemtl.backends.finn as finn

    monkeypatch.setattr(finn, "DEFAULT_FINN_VENV", tmp_path / "no-finn")
    code, out, _ = run_cli(capsys, "doctor", "--target", "zcu104", "--json")
    rows = {row["toolchain"]: row for row in json.loads(out)}
    assert code == 0 and all("zcu104" in row["targets"] for row in rows.values())
    finn_row = rows["FINN (finn-plus venv)"]
    assert not finn_row["present"] and "no finn-plus venv" in finn_row["why_missing"] and finn_row["add"] == "edgemtl toolchain install finn"
    assert rows["hls4ml, brevitas, qonnx"]["present"] and rows["hls4ml, brevitas, qonnx"]["add"] is None
    code, out, _ = run_cli(capsys, "doctor", "--json")
    assert {"gap9", "arm64", "zcu104"} <= {t for row in json.loads(out) for t in row["targets"]}
    code, _, err = run_cli(capsys, "doctor", "--target", "zcu1")
    assert_one_line_error(code, err, "unknown target 'zcu1'")


def test_prune_defaults_are_the_pass_defaults():
    """`edgemtl prune` and `compile --prune-flops` must prune alike: the command used to fine-tune 100 steps per round
    on a 64-sample oracle while the pass (and the compile flag, and the benchmark) took 60 and 32."""
    import inspect

    from edgemtl.cli import prune
    from edgemtl.passes.prune_pagcp import PAGCPConfig

    defaults = {name: parameter.default for name, parameter in inspect.signature(prune).parameters.items()}
    for option in ("flops_target", "finetune_steps", "final_finetune_steps", "oracle_samples", "sparsity_steps"):
        assert defaults[option] == getattr(PAGCPConfig, option), option
