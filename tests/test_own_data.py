"""A user's own model and own data through the commands: npz and folder sources, tasks without labels, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from custom_models import HEADS_SPEC_YAML, SPEC_YAML, regression_and_raw_heads, unet_two_heads
from edgemtl.data import load_data
from test_cli import assert_one_line_error, run_cli


def _own_model(tmp_path):
    weights, spec = tmp_path / "weights.pt", tmp_path / "spec.yaml"
    torch.save(unet_two_heads().state_dict(), weights)
    spec.write_text(SPEC_YAML)
    return [weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec]


def _images(n: int = 40, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    depth = rng.uniform(0.5, 5.0, (n, 1, size, size)).astype(np.float32)
    return images, depth


def _write_folder(folder, images, depth) -> None:
    folder.mkdir()
    lines = ["image,depth"]
    for i, (image, label) in enumerate(zip(images, depth)):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"img{i:02d}.png")
        np.save(folder / f"depth{i:02d}.npy", label)
        lines.append(f"img{i:02d}.png,depth{i:02d}.npy")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")


def test_host_compile_from_npz_and_folder_gives_the_same_numbers(capsys, tmp_path):
    images, depth = _images()
    npz, folder = tmp_path / "own.npz", tmp_path / "own"
    np.savez(npz, images=images, depth=depth)
    _write_folder(folder, images, depth)
    manifests = []
    for data, name in ((npz, "from-npz"), (folder, "from-folder")):
        code, _, err = run_cli(capsys, "compile", *_own_model(tmp_path), "--target", "host", "--data", data,
                               "-o", tmp_path / name, "--no-latency")
        assert code == 0, err
        manifests.append(json.loads((tmp_path / name / "manifest.json").read_text()))
    for manifest in manifests:
        assert manifest["data"]["labelled_tasks"] == ["depth"] and manifest["data"]["unlabelled_tasks"] == ["seg"]
        assert manifest["data"]["split_sizes"] == {"train": 28, "val": 6, "test": 6}
        assert manifest["data"]["normalisation"]["mean"] == [0.5, 0.5, 0.5]
    a, b = (m["tasks"] for m in manifests)
    assert a["depth"]["metrics"] == b["depth"]["metrics"] and "rmse" in a["depth"]["metrics"]
    assert a["seg"]["verification"]["max_abs_error"] == b["seg"]["verification"]["max_abs_error"]
    assert "no labels" in a["seg"]["metrics_note"]


@pytest.mark.parametrize("kind", ["npz", "folder"])
def test_eval_and_prune_take_an_npz_or_a_folder(capsys, tmp_path, kind):
    images, depth = _images()
    data = tmp_path / ("own.npz" if kind == "npz" else "own")
    if kind == "npz":
        np.savez(data, images=images, depth=depth)
    else:
        _write_folder(data, images, depth)
    code, out, err = run_cli(capsys, "eval", *_own_model(tmp_path), "--data", data, "--json")
    assert code == 0, err
    assert set(json.loads(out)["metrics"]) == {"depth"}
    code, out, err = run_cli(capsys, "eval", *_own_model(tmp_path), "--data", data, "--holdout", "0.25,0.25", "--json")
    assert code == 0 and json.loads(out)["samples"] == 10, err  # a quarter of 40 images
    code, out, err = run_cli(capsys, "prune", *_own_model(tmp_path), "--data", data, "--flops-target", "0.9",
                             "--finetune-steps", "1", "--final-finetune-steps", "1", "--oracle-samples", "4", "--sparsity-steps", "0",
                             "-o", tmp_path / "pruned.pt")
    assert code == 0, err
    assert (tmp_path / "pruned.pt").is_file() and "sqnr_db_vs_float" in out  # seg has no labels: judged against float


# A user's Dataset factory module: (image, {task: target}) per split, read from own.npz in the current folder.
_FACTORY = ("import numpy as np, torch\n"
            "class Frames(torch.utils.data.Dataset):\n"
            "    def __init__(self, split):\n"
            "        archive = np.load('own.npz')\n"
            "        keep = archive['split'] == split\n"
            "        self.images, self.depth = archive['images'][keep], archive['depth'][keep]\n"
            "    def __len__(self):\n"
            "        return len(self.images)\n"
            "    def __getitem__(self, i):\n"
            "        return torch.from_numpy(self.images[i]), {'depth': torch.from_numpy(self.depth[i])}\n"
            "def make(split):\n"
            "    return Frames(split)\n")


def test_a_dataset_factory_feeds_compile_and_eval_like_the_npz(capsys, tmp_path, monkeypatch):
    """`--data own_frames:make` (a torch Dataset of (image, {task: target}) from the user's own module, found in the
    current folder): the same images as an npz give the same numbers."""
    images, depth = _images()
    npz = tmp_path / "own.npz"
    np.savez(npz, images=images, depth=depth, split=np.array(["train"] * 28 + ["val"] * 6 + ["test"] * 6))
    (tmp_path / "own_frames.py").write_text(_FACTORY)
    monkeypatch.chdir(tmp_path)
    manifests = []
    for data, name in ((npz, "from-npz"), ("own_frames:make", "from-factory")):
        code, _, err = run_cli(capsys, "compile", *_own_model(tmp_path), "--target", "host", "--data", data,
                               "-o", tmp_path / name, "--no-latency")
        assert code == 0, err
        manifests.append(json.loads((tmp_path / name / "manifest.json").read_text()))
    assert manifests[1]["data"]["kind"] == "factory" and manifests[1]["data"]["split_sizes"] == {
        "train": 28, "val": 6, "test": 6}
    assert manifests[0]["tasks"]["depth"]["metrics"] == manifests[1]["tasks"]["depth"]["metrics"]
    code, out, err = run_cli(capsys, "eval", *_own_model(tmp_path), "--data", "own_frames:make", "--json")
    assert code == 0, err
    # eval runs PyTorch, the bundle's metrics ONNX Runtime: the same images give the same RMSE to float rounding
    assert json.loads(out)["metrics"]["depth"]["rmse"] == pytest.approx(
        manifests[1]["tasks"]["depth"]["metrics"]["rmse"], rel=1e-6)


@pytest.mark.parametrize("args, pattern", [
    (["--tasks", ""], "--tasks is empty"),
    (["--data", "no/such/place"], "is neither a built-in set"),
    (["--holdout", "half"], "--holdout takes VAL,TEST fractions"),
    (["--holdout", "0.6,0.5"], "held-out fractions (val, test) must be in [0, 1) and sum below 1"),
    (["--model-factory", "custom_models:raises"], "the model factory 'custom_models:raises' raised RuntimeError"),
])
def test_own_model_bad_input_is_one_line(capsys, tmp_path, args, pattern):
    base = _own_model(tmp_path)
    if args[0] == "--model-factory":
        base[2] = args[1]
        args = []
    code, _, err = run_cli(capsys, "compile", *base, "--target", "host", "-o", tmp_path / "b", "--data", "scenes", *args)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "b").exists()


def test_output_under_a_file_is_a_clear_error(capsys, tmp_path, checkpoints):
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "host", "-o", tmp_path / "afile" / "b")
    assert_one_line_error(code, err, "which is a file")


@pytest.mark.slow
def test_gap9_zcu104_and_arm64_from_an_npz_with_a_task_left_unlabelled(capsys, tmp_path, checkpoints):
    """The built-in images saved as a user's npz, labels for depth only: scene is calibrated, verified and judged
    against the float model on every target."""
    val = load_data("scenes", "train", n=64)
    npz = tmp_path / "scenes.npz"
    np.savez(npz, images=np.round(val.images * 255).astype(np.uint8), depth=val.targets["depth"])
    common = ["--data", npz, "--tasks", "depth,scene", "--no-latency"]
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "gap9", "-o", tmp_path / "g", *common)
    assert code == 0, err
    tasks = json.loads((tmp_path / "g" / "manifest.json").read_text())["tasks"]
    assert "metric_int8" in tasks["depth"]["int8"] and "no labels" in tasks["scene"]["int8"]["metrics"]
    assert tasks["scene"]["int8"]["agreement_with_float"]["cosine_vs_float"] > 0.9
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "zcu104", "-o", tmp_path / "z",
                           "--qat-steps", "2", *common)
    assert code == 0, err
    tasks = json.loads((tmp_path / "z" / "manifest.json").read_text())["tasks"]
    assert "rmse" in tasks["depth"]["quantization"]["metric_quant"]
    assert "sqnr_db_vs_float" in tasks["scene"]["quantization"]["metric_quant"]
    assert tasks["scene"]["hls4ml"]["csim"]["exact"]
    code, _, err = run_cli(capsys, "compile", checkpoints["mtl-cnn"], "--target", "arm64", "-o", tmp_path / "a",
                           "--threads", "1", *common)
    assert code == 0, err


def test_train_an_own_module_on_own_data_then_compile_it(capsys, tmp_path):
    images, depth = _images()
    npz, spec = tmp_path / "own.npz", tmp_path / "spec.yaml"
    np.savez(npz, images=images, depth=depth)
    spec.write_text(SPEC_YAML)
    weights = tmp_path / "trained.pt"
    code, out, err = run_cli(capsys, "train", "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                             "--data", npz, "--steps", "2", "--batch-size", "4", "-o", weights)
    assert code == 0, err
    assert "rmse" in out and "state_dict" in out
    state = torch.load(weights, weights_only=True)
    assert set(state) == set(unet_two_heads().state_dict())  # a plain state_dict, as --model-factory reads it
    code, _, err = run_cli(capsys, "eval", weights, "--model-factory", "custom_models:unet_two_heads", "--spec", spec,
                           "--data", npz)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--spec", spec, "--data", npz)
    assert_one_line_error(code, err, "pass --model-factory with it")
    code, _, err = run_cli(capsys, "train", "--model-factory", "custom_models:unet_two_heads", "--data", npz)
    assert_one_line_error(code, err, "needs --spec FILE")


@pytest.mark.slow
def test_rank1_regression_and_raw_heads_of_any_shape_through_every_target(capsys, tmp_path):
    """age [1] and pose [3] (regression, labelled), anchors [6, 8, 8] and landmarks [5, 2] (raw, judged against the
    float model): every task is built by every target, with no task left out."""
    weights, spec = tmp_path / "heads.pt", tmp_path / "spec.yaml"
    torch.save(regression_and_raw_heads().state_dict(), weights)
    spec.write_text(HEADS_SPEC_YAML)
    rng = np.random.default_rng(0)
    npz = tmp_path / "heads.npz"
    np.savez(npz, images=rng.integers(0, 256, (48, 3, 32, 32), dtype=np.uint8),
             age=rng.uniform(1, 80, (48, 1)).astype(np.float32), pose=rng.normal(size=(48, 3)).astype(np.float32))
    model = [weights, "--model-factory", "custom_models:regression_and_raw_heads", "--spec", spec, "--data", npz]
    tasks = {}
    for target, extra in (("host", []), ("arm64", ["--threads", "1"]), ("gap9", []), ("zcu104", ["--qat-steps", "2"])):
        code, _, err = run_cli(capsys, "compile", *model, "--target", target, "-o", tmp_path / target, "--no-latency",
                               *extra)
        assert code == 0 and "warning:" not in err, err
        tasks[target] = json.loads((tmp_path / target / "manifest.json").read_text())["tasks"]
    for target in ("host", "arm64"):
        assert all(tasks[target][t]["verification"]["passed"] for t in ("age", "pose", "anchors", "landmarks"))
    assert "mae" in tasks["arm64"]["age"]["int8"]["metric_int8"]
    for name in ("age", "pose", "anchors", "landmarks"):
        gap9, fpga = tasks["gap9"][name], tasks["zcu104"][name]
        assert gap9["c"]["host"]["bit_exact"] and gap9["deeploy_mappable"]["ok"], name
        assert fpga["hls4ml"]["csim"]["exact"], name
    assert tasks["gap9"]["landmarks"]["int8"]["agreement_with_float"]["cosine_vs_float"] > 0.99
    assert set(tasks["zcu104"]["pose"]["quantization"]["metric_quant"]) == {"mae"}
    assert "sqnr_db_vs_float" in tasks["zcu104"]["landmarks"]["quantization"]["metric_quant"]




@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "factory"])
def test_a_folder_and_a_dataset_factory_through_train_prune_and_every_quantizing_target(capsys, tmp_path,
                                                                                       monkeypatch, kind):
    """The sources the npz tests do not cover, through every command that takes data and every target flow: seg
    has no labels (calibrated and judged against float), depth has."""
    images, depth = _images()
    monkeypatch.chdir(tmp_path)
    if kind == "folder":
        _write_folder(tmp_path / "own", images, depth)
        data = str(tmp_path / "own")
    else:
        np.savez(tmp_path / "own.npz", images=images, depth=depth,
                 split=np.array(["train"] * 28 + ["val"] * 6 + ["test"] * 6))
        (tmp_path / "frames_source.py").write_text(_FACTORY)
        data = "frames_source:make"
    model = _own_model(tmp_path)
    code, _, err = run_cli(capsys, "train", *model[1:], "--data", data, "--steps", "2", "--batch-size", "4",
                           "-o", tmp_path / "trained.pt")
    assert code == 0, err
    code, out, err = run_cli(capsys, "prune", *model, "--data", data, "--flops-target", "0.9", "--finetune-steps", "1",
                             "--final-finetune-steps", "1", "--oracle-samples", "4", "--sparsity-steps", "0",
                             "-o", tmp_path / "pruned.pt")
    assert code == 0 and "sqnr_db_vs_float" in out, err
    expected_kind = "folder" if kind == "folder" else "factory"
    for target, extra in (("gap9", []), ("zcu104", ["--qat-steps", "2"]), ("arm64", ["--threads", "1"])):
        code, _, err = run_cli(capsys, "compile", *model, "--target", target, "--data", data, "--no-latency",
                               "-o", tmp_path / target, *extra)
        assert code == 0, (target, err)
        manifest = json.loads((tmp_path / target / "manifest.json").read_text())
        assert manifest["data"]["kind"] == expected_kind and manifest["data"]["unlabelled_tasks"] == ["seg"], target
        assert manifest["data"]["split_sizes"] == {"train": 28, "val": 6, "test": 6}, target
