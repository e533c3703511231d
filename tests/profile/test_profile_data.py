"""`edgemtl profile --data`: outputs checked against references made now from the user's own images."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from custom_models import SPEC_YAML, unet_two_heads
from test_cli import assert_one_line_error, run_cli


def _bundle(capsys, tmp_path):
    weights, spec, npz = tmp_path / "weights.pt", tmp_path / "spec.yaml", tmp_path / "compiled_with.npz"
    torch.save(unet_two_heads().state_dict(), weights)
    spec.write_text(SPEC_YAML)
    np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (20, 3, 32, 32), dtype=np.uint8))
    code, _, err = run_cli(capsys, "compile", weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                           "--target", "host", "--data", npz, "-o", tmp_path / "bundle", "--no-latency")
    assert code == 0, err
    return tmp_path / "bundle"


def _camera_frames(folder, size: int, count: int = 12) -> None:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"frame{i}.png")


def test_profile_checks_against_references_from_the_users_images(capsys, tmp_path):
    bundle = _bundle(capsys, tmp_path)
    frames = tmp_path / "frames"
    _camera_frames(frames, 32)
    code, _, err = run_cli(capsys, "profile", bundle, "--device", "local", "--runs", "5", "--data", frames,
                           "--store", tmp_path / "r.sqlite", "--tasks", "depth")
    assert code == 0, err
    profile = json.loads((bundle / "profile" / "local.json").read_text())
    assert profile["reference"]["reference"] == str(frames) and profile["reference"]["samples"] == 2
    float_run = profile["tasks"]["depth"]["runtimes"]["onnxruntime-float"]
    assert float_run["check_passed"] and float_run["details"]["reference"] == "output_float"
    made = bundle / profile["reference"]["folder"] / "depth"
    frames_normalised = [(np.asarray(Image.open(f), dtype=np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.25
                         for f in sorted(frames.iterdir())]  # the spec's mean 0.5 and std 0.25
    inputs = np.load(made / "input.npy")
    assert inputs.shape == (2, 3, 32, 32)  # the test split of 12 frames (15%, seeded)
    assert all(any(np.allclose(x, frame, atol=1e-6) for frame in frames_normalised) for x in inputs)
    assert np.load(made / "output_float.npy").shape == (2, 1, 32, 32)
    # the compile-time references are untouched and the manifest keeps pointing at them
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "profile/reference" not in json.dumps(manifest["tasks"]["depth"]["artifacts"])


def test_profile_data_of_another_size_is_one_line_and_profiles_nothing(capsys, tmp_path):
    bundle = _bundle(capsys, tmp_path)
    frames = tmp_path / "frames"
    _camera_frames(frames, 48)
    code, _, err = run_cli(capsys, "profile", bundle, "--device", "local", "--runs", "5", "--data", frames,
                           "--store", tmp_path / "r.sqlite")
    assert_one_line_error(code, err, "--resize")
    assert not (bundle / "profile").exists()
