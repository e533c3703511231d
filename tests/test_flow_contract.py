"""Every flow keeps the same contract: each step leaves a record, the manifest validates against the flow's models
(one provenance shape everywhere), and a failing step leaves no bundle behind."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from edgemtl.compile import compile_model
from edgemtl.errors import EdgemtlError
from edgemtl.flow import CompileOptions
from edgemtl.flows import FLOWS, flow_manifest_model
from edgemtl.manifest import SCHEMA_VERSION, ManifestError, validate_manifest
from edgemtl.model.checkpoint import load
from edgemtl.targets import available_targets, load_target

# the smallest settings that still run every step of every flow for real, on two tasks (a dense head and a classifier)
FAST = CompileOptions(tasks=["depth", "scene"], verify_samples=2, metric_samples=8, latency_runs=5, latency_max_seconds=1.0, qat_steps=2,
                      csim_samples=1, c_samples=2, qemu_samples=0)
ONE_TARGET_PER_FLOW = {load_target(name).flow: name for name in sorted(available_targets())}


def test_every_flow_has_a_target_and_a_manifest_model():
    assert set(ONE_TARGET_PER_FLOW) == set(FLOWS)
    for flow in FLOWS:
        assert flow_manifest_model(flow).model_fields["tasks"].annotation is not None


# the FPGA flow's contract (QAT + hls4ml C simulation, about a minute) is slow: the default suite compiles for zcu104
# through the CLI (tests/test_cli.py), CI runs this one too
@pytest.mark.parametrize("flow", [pytest.param(f, marks=pytest.mark.slow) if f == "fpga-hls4ml" else f for f in sorted(FLOWS)])
def test_a_flow_records_every_step_and_writes_a_valid_manifest(flow, tmp_path, checkpoints):
    target = ONE_TARGET_PER_FLOW[flow]
    # one HLS C simulation build takes most of a minute: the FPGA flow's contract is held on one task
    options = replace(FAST, tasks=["depth"]) if flow == "fpga-hls4ml" else FAST
    out = compile_model(load(checkpoints["mtl-cnn"]), target, tmp_path / target, options)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    validate_manifest(manifest, flow_manifest_model(flow))
    steps = manifest["steps"]
    assert steps and all(s["status"] in ("ok", "skipped") and s["seconds"] >= 0 for s in steps), steps
    assert all(s.get("reason") for s in steps if s["status"] == "skipped")
    for entry in manifest["tasks"].values():
        assert entry["cost_provenance"]["kind"] == "static"  # params and MACs are counted
        assert entry["activation_provenance"]["kind"] == "estimated"  # the activation peak is a liveness plan


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_a_failing_step_leaves_no_bundle(flow, tmp_path, checkpoints, monkeypatch):
    import edgemtl.compile as compile_module

    real = compile_module.compile_steps

    def failing_after_analysis(target, options=CompileOptions()):
        steps = real(target, options)
        index = [name for name, _ in steps].index("analyse") + 1

        def broken(ctx):
            (ctx.bundle / "half-written.bin").write_bytes(b"x")
            raise EdgemtlError("injected failure")

        return [*steps[:index], ("broken", broken)]

    monkeypatch.setattr(compile_module, "compile_steps", failing_after_analysis)
    out = tmp_path / "bundle"
    with pytest.raises(EdgemtlError, match="injected failure"):
        compile_model(load(checkpoints["mtl-cnn"]), ONE_TARGET_PER_FLOW[flow], out, FAST)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no staging folder left either


def test_a_key_no_model_declares_is_a_bug_named_by_its_path():
    manifest = {"schema_version": SCHEMA_VERSION, "edgemtl_version": "0", "created": "now",
                "target": {"name": "host", "flow": "cpu-onnxruntime", "description": "d", "file": "f"},
                "model": {"path": "m", "sha256": "s", "arch": "a", "config": {}, "source": "zoo", "data": None,
                          "input": {}, "tasks": ["depth"]},
                "host": {}, "steps": [], "all_tasks": {}, "tasks": {"depth": {"kind": "regression", "output_shape": [1],
                                                                              "latency": 3.0}}}
    with pytest.raises(ManifestError, match="tasks.depth.latency"):
        validate_manifest(manifest, flow_manifest_model("cpu-onnxruntime"))
    manifest["tasks"]["depth"] = {"kind": "regression", "output_shape": [1], "roofline": {"provenance": "estimated"}}
    with pytest.raises(ManifestError, match="roofline.provenance is 'estimated'"):
        validate_manifest(manifest, flow_manifest_model("fpga-hls4ml"))

