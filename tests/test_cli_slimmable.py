"""`edgemtl train --slimmable`: a normal checkpoint with its width space in the spec and per-configuration losses in
its training record, which `edgemtl compile --widths` compiles; a model whose convs cannot be sliced is one line."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import assert_one_line_error, run_cli

import edgemtl
from edgemtl.model.widths import WidthConfig

NARROW = WidthConfig(encoder={"stage0": 0.5, "stage1": 0.75, "stage2": 0.25},
                     decoders={"segmentation": 0.5, "depth": 0.25, "normals": 1.0, "edges": 0.75, "scene": 1.0})
TINY = ["--config", "width=4", "--config", "head_width=4", "--steps", "2", "--batch-size", "8", "--train-samples", "16"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a busy machine: torch's default threads fight over the cores
    yield
    torch.set_num_threads(threads)


def test_train_slimmable_writes_a_slimmable_checkpoint_that_compiles_at_a_narrow_width(capsys, tmp_path):
    checkpoint = tmp_path / "slim.pt"
    code, out, err = run_cli(capsys, "train", "--slimmable", *TINY, "--random-configs", "1", "-o", checkpoint)
    assert code == 0, err
    assert "widest:" in out and "narrowest:" in out and "distill" in out
    loaded = edgemtl.load(checkpoint)
    assert loaded.spec.widths is not None and list(loaded.spec.widths.stages) == ["stage0", "stage1", "stage2"]
    record = torch.load(checkpoint, weights_only=True)["meta"]["train"]["slimmable"]
    assert record["random_configs"] == 1 and record["bn"] == "recalibrate" and record["private_affine"]
    assert torch.load(checkpoint, weights_only=True)["width_affine"]   # trained, kept beside the state_dict
    assert set(record["configuration_losses"]) == {"widest", "narrowest", "random"}
    assert record["configuration_losses"]["widest"]["distill"] == 0.0 and "segmentation" in record["val_metrics_narrowest"]
    config = tmp_path / "narrow.json"
    config.write_text(NARROW.to_json())
    bundle = tmp_path / "bundle"
    code, _, err = run_cli(capsys, "compile", checkpoint, "--widths", config, "--target", "host", "-o", bundle,
                           "--stop-after", "evaluate_metrics")  # the latency measurement is not what this tests
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    sliced = manifest["passes"]["slice_widths"]
    assert sliced["widths"] == NARROW.model_dump() and sliced["macs_after"] < sliced["macs_before"]
    assert sliced["batchnorm_statistics"] == "per-width"   # recalibrated on the model's training data at this width
    assert sliced["affines_folded"] > 0   # the trained private per-width affines, folded into the narrow model


def test_slimmable_on_a_model_whose_convs_cannot_be_sliced_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--slimmable", "--arch", "m3vit", "--steps", "1", "-o", tmp_path / "m.pt")
    assert_one_line_error(code, err, "architecture 'm3vit' has no width space")
    assert not (tmp_path / "m.pt").exists()


def test_no_private_affine_trains_without_them(capsys, tmp_path):
    checkpoint = tmp_path / "plain-slim.pt"
    code, _, err = run_cli(capsys, "train", "--slimmable", *TINY, "--random-configs", "0", "--no-private-affine",
                           "-o", checkpoint)
    assert code == 0, err
    payload = torch.load(checkpoint, weights_only=True)
    assert "width_affine" not in payload and payload["meta"]["train"]["slimmable"]["private_affine"] is False
