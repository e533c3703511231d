"""`--data` sources: npz, folder, a user's Dataset factory; the spec's normalisation; every bad input one line."""

from __future__ import annotations

import csv
import sys
import time

import numpy as np
import pytest
from PIL import Image

from edgemtl.data import data_spec, load_data
from edgemtl.data.sources import open_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec
from edgemtl.model.zoo import zoo_spec


def _spec(**input_changes) -> ModelSpec:
    return ModelSpec.model_validate({
        "input": {"shape": [3, 16, 16], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], **input_changes},
        "tasks": [{"name": "kind", "kind": "classification", "output_shape": [3], "class_names": ["a", "b", "c"]},
                  {"name": "seg", "kind": "segmentation", "output_shape": [2, 16, 16]},
                  {"name": "level", "kind": "regression", "output_shape": [1]},
                  {"name": "anchors", "kind": "raw", "output_shape": [4, 5]}]})


def _arrays(n: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"images": rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8),
            "kind": rng.integers(0, 3, n), "seg": rng.integers(0, 2, (n, 16, 16)),
            "level": rng.standard_normal(n).astype(np.float32)}


def _npz(tmp_path, **arrays) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _folder(tmp_path, arrays: dict[str, np.ndarray], name: str = "folder") -> str:
    folder = tmp_path / name
    folder.mkdir()
    rows = []
    for i, image in enumerate(arrays["images"]):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
        Image.fromarray(arrays["seg"][i].astype(np.uint8)).save(folder / f"{i:03d}_seg.png")
        rows.append({"image": f"{i:03d}.png", "kind": "abc"[arrays["kind"][i]], "seg": f"{i:03d}_seg.png",
                     "level": f"{arrays['level'][i]:.9g}"})
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(folder)


def test_npz_applies_the_spec_normalisation_and_a_recorded_seeded_split(tmp_path):
    arrays = _arrays()
    source = open_data(_npz(tmp_path, **arrays), _spec())
    described = source.describe()
    assert described["split_sizes"] == {"train": 14, "val": 3, "test": 3}
    assert described["labelled_tasks"] == ["kind", "seg", "level"] and described["unlabelled_tasks"] == ["anchors"]
    train = source.load("train")
    first = int(source._split("train").indices[0])
    expected = (arrays["images"][first].astype(np.float32) / 255 - np.array([0.5, 0.4, 0.3], np.float32)[:, None, None]) \
        / np.array([0.2, 0.25, 0.3], np.float32)[:, None, None]
    np.testing.assert_array_equal(train.normalise(train.images[0]), expected.astype(np.float32))
    assert train.targets["level"][:2].shape == (2, 1) and train.targets["seg"][:2].dtype == np.int64
    again = open_data(_npz(tmp_path, **arrays), _spec()).load("val")
    np.testing.assert_array_equal(again.images[:], source.load("val").images[:])


def test_folder_and_npz_of_the_same_images_read_identically(tmp_path):
    arrays = _arrays()
    npz = open_data(_npz(tmp_path, **arrays), _spec())
    folder = open_data(_folder(tmp_path, arrays), _spec())
    assert folder.describe()["split_sizes"] == npz.describe()["split_sizes"]
    for split in ("train", "val", "test"):
        a, b = npz.load(split), folder.load(split)
        np.testing.assert_array_equal(a.images[:], b.images[:])
        for task in ("kind", "seg", "level"):
            np.testing.assert_array_equal(a.targets[task][:], b.targets[task][:])


class _Items:
    def __init__(self, arrays, broken: bool = False):
        self.arrays, self.broken = arrays, broken

    def __len__(self):
        return len(self.arrays["images"])

    def __getitem__(self, i):
        if self.broken:
            return self.arrays["images"][i]
        return self.arrays["images"][i], {"kind": int(self.arrays["kind"][i]), "level": float(self.arrays["level"][i])}


def test_a_users_dataset_factory_found_in_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        "import numpy as np\n"
        "def make():\n"
        "    rng = np.random.default_rng(0)\n"
        "    images = rng.integers(0, 256, (12, 3, 16, 16), dtype=np.uint8)\n"
        "    return [(images[i], {'kind': i % 3}) for i in range(12)]\n"
        "def broken():\n"
        "    return [np.zeros((3, 16, 16), np.uint8)] * 12\n"
        "def raises():\n"
        "    raise RuntimeError('no disk')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    source = open_data("my_data:make", _spec())
    assert source.labelled == ["kind"]
    data = source.load("train")
    assert len(data) == 8 and data.images[:].dtype == np.float32 and set(data.targets) == {"kind"}
    with pytest.raises(EdgemtlError, match=r"item 0 is a ndarray, not \(image, \{task: target\}\)"):
        open_data("my_data:broken", _spec())
    with pytest.raises(EdgemtlError, match="the data factory 'my_data:raises' raised RuntimeError: no disk"):
        open_data("my_data:raises", _spec())


def test_other_image_sizes_need_resize_which_is_recorded(tmp_path):
    arrays = _arrays()
    arrays["images"] = np.random.default_rng(1).integers(0, 256, (20, 3, 24, 24), dtype=np.uint8)
    arrays.pop("seg")
    path = _npz(tmp_path, **arrays)
    with pytest.raises(EdgemtlError, match=r"are \[3, 24, 24\] but the model takes \[3, 16, 16\]; pass --resize"):
        open_data(path, _spec())
    source = open_data(path, _spec(), resize=True)
    assert source.load("train").images[:2].shape == (2, 3, 16, 16)
    assert source.describe()["resize"].startswith("[24, 24] -> [16, 16]")


def test_builtin_data_uses_the_models_normalisation_and_only_matching_labels():
    spec = ModelSpec.model_validate({"input": {"shape": [3, 64, 64], "mean": [0.0] * 3, "std": [1.0] * 3},
                                     "tasks": [{"name": "seg", "kind": "segmentation", "output_shape": [5, 64, 64]},
                                               {"name": "depth", "kind": "depth", "output_shape": [1, 64, 64]}]})
    source = open_data("scenes", spec)
    assert source.labelled == ["depth"]  # no scenes task is called "seg"
    data = source.load("val", n=4)
    np.testing.assert_array_equal(data.normalise(data.images[:]), load_data("scenes", "val", n=4).images)


@pytest.mark.parametrize("case, pattern", [
    ("no images", "has no 'images' array"),
    ("rank", r"must be \(N, C, H, W\), got rank 3"),
    ("dtype", "must be uint8 .* or float in \\[0, 1\\], got int64"),
    ("float range", "must lie in \\[0, 1\\]"),
    ("length", "labels of task 'kind' .* hold 19 entries for 20 images"),
    ("class range", "class index 3 outside 0..2"),
    ("unknown task", "labels for task 'colour', which the model spec does not have"),
    ("label dtype", "must be class indices"),
    ("few images", "has 6 training image\\(s\\); calibration needs at least 8"),
])
def test_bad_npz_is_one_clear_error(tmp_path, case, pattern):
    arrays = _arrays()
    if case == "no images":
        arrays["pictures"] = arrays.pop("images")
    elif case == "rank":
        arrays["images"] = arrays["images"][:, 0]
    elif case == "dtype":
        arrays["images"] = arrays["images"].astype(np.int64)
    elif case == "float range":
        arrays["images"] = arrays["images"].astype(np.float32)
    elif case == "length":
        arrays["kind"] = arrays["kind"][:-1]
    elif case == "class range":
        arrays["kind"][0] = 3
    elif case == "unknown task":
        arrays["colour"] = arrays["kind"]
    elif case == "label dtype":
        arrays["kind"] = arrays["kind"] + 0.5
    elif case == "few images":
        arrays = {k: v[:10] for k, v in arrays.items()}
    with pytest.raises(EdgemtlError, match=pattern):
        open_data(_npz(tmp_path, **arrays), _spec()).load("train")


def test_bad_folders_name_the_file_or_column(tmp_path):
    arrays = _arrays()
    folder = _folder(tmp_path, arrays)
    (tmp_path / "folder" / "003.png").write_bytes(b"not a png")
    with pytest.raises(EdgemtlError, match="cannot read image .*003.png"):
        open_data(folder, _spec()).load("train").images[:]
    other = _folder(tmp_path, arrays, "other")
    text = (tmp_path / "other" / "labels.csv").read_text().replace(f",{'abc'[arrays['kind'][2]]},", ",zebra,", 1)
    (tmp_path / "other" / "labels.csv").write_text(text)
    with pytest.raises(EdgemtlError, match="unknown class"):
        open_data(other, _spec())


def test_a_csv_missing_a_cell_names_the_row(tmp_path):
    arrays = _arrays()
    folder = _folder(tmp_path, arrays)
    lines = (tmp_path / "folder" / "labels.csv").read_text().splitlines()
    lines[3] = ",".join(cell if i != 3 else "" for i, cell in enumerate(lines[3].split(",")))
    (tmp_path / "folder" / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(EdgemtlError, match="row 3: task 'level' needs a label"):
        open_data(folder, _spec())


def test_built_in_scenes_render_only_what_is_read_and_the_same_samples():
    """The built-in source renders scenes sample by sample: describing it renders none, and what it loads is what
    load_data generates for the whole split."""
    spec = zoo_spec("mtl-cnn", *data_spec("scenes"), {}, data="scenes")
    source = open_data("scenes", spec)
    started = time.perf_counter()
    assert source.describe()["split_sizes"] == {"train": 2000, "val": 256, "test": 256}
    assert time.perf_counter() - started < 1.0          # rendering 2,512 scenes takes seconds
    loaded, whole = source.load("val", n=8), load_data("scenes", "val")
    every = np.arange(8)
    assert np.array_equal(loaded.images[every], whole.images[:8])
    for task in loaded.targets:
        assert np.array_equal(np.asarray(loaded.targets[task][every]), whole.targets[task][:8])
