"""`--data`: where a command's images and labels come from, read for one model's spec.

A reference is one of
- a built-in set (`scenes`, `digits`);
- an `.npz` file: `images` (N, C, H, W) uint8 0-255 or float in [0, 1], one array per task named like the task,
  optionally `split` ("train" / "val" / "test" per image);
- a folder of PNG / JPEG files with an optional `labels.csv` or `labels.jsonl` (column `image`: the file name,
  one column per task, optionally `split`);
- `package.module:function` returning a `torch.utils.data.Dataset` of `(image, {task: target})`; a function with a
  `split` parameter is called once per split.

Whatever the source, the model spec's normalisation is the one applied, images must be the spec's input size
(or `resize=True`, recorded), and a task without labels is still calibrated and verified (against the float model)
but not scored. Without a `split` array / column, a seeded permutation holds out `holdout` fractions for val and
test (default 15% each, at least one image each); the sizes are in `describe()` and so in every manifest.
"""

from __future__ import annotations

import csv
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgemtl.data import DATASETS, SCENES_DEFAULT_N, SPLITS, TaskData, load_data
from edgemtl.data.labels import check_labels, target_layout
from edgemtl.data.samples import ImageView, SampleReader, TargetView
from edgemtl.data.scenes import scene_sample
from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import DENSE_KINDS, ModelSpec, TaskSpec
from edgemtl.user_code import call_user, import_callable

DEFAULT_HOLDOUT = (0.15, 0.15)  # val, test fractions when the source names no split
MIN_TRAIN_IMAGES = 8  # calibration, QAT and the pruning oracle need at least a batch of real images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_FILES = ("labels.csv", "labels.jsonl")


@dataclass
class _Split:
    reader: SampleReader
    indices: np.ndarray


def _scored(spec: ModelSpec, names: list[str]) -> list[str]:
    """The spec's tasks (in spec order) among `names` that have a metric: a raw head (metric "none") is judged
    against the float model, so its labels, if any, are not used."""
    return [t.name for t in spec.tasks if t.name in names and t.metric != "none"]


@dataclass
class DataSource:
    """A resolved `--data` reference for one model spec; `load(split)` gives the `TaskData` every pass takes."""

    reference: str
    kind: str  # built-in | npz | folder | factory
    spec: ModelSpec
    labelled: list[str]  # spec tasks that have labels here
    stored_shape: tuple[int, int, int]  # C, H, W as stored
    resize: bool
    split_rule: str
    _splits: dict[str, Callable[[], _Split]] = field(repr=False)
    _loaded: dict[str, _Split] = field(default_factory=dict, repr=False)

    def _split(self, split: str) -> _Split:
        if split not in SPLITS:
            raise EdgemtlError(f"unknown split {split!r}: valid splits are {', '.join(SPLITS)}")
        if split not in self._loaded:
            self._loaded[split] = self._splits[split]()
        return self._loaded[split]

    def size(self, split: str) -> int:
        return len(self._split(split).indices)

    def load(self, split: str, n: int | None = None) -> TaskData:
        """One split (its first `n` samples), normalised by the spec, labels for the tasks that have them."""
        if n is not None and n < 1:
            raise EdgemtlError(f"the number of samples must be at least 1, got {n}")
        part = self._split(split)
        if split == "train" and len(part.indices) < MIN_TRAIN_IMAGES:
            raise EdgemtlError(f"data {self.reference!r} has {len(part.indices)} training image(s); calibration needs at "
                               f"least {MIN_TRAIN_IMAGES}: add images or lower the held-out fractions")
        if len(part.indices) == 0:
            raise EdgemtlError(f"data {self.reference!r} has no {split} images: give some a split of {split!r} "
                               "or leave the split to edgemtl")
        indices = part.indices[:n]
        shape = tuple(self.spec.input.shape)
        size = tuple(shape[1:]) if self.resize else None
        images = ImageView(part.reader, indices, shape, resize_to=size)
        targets: dict[str, Any] = {}
        for name in self.labelled:
            layout, dtype = target_layout(self.spec.task(name))
            targets[name] = TargetView(part.reader, indices, name, layout, dtype)
        tasks = [self.spec.task(t) for t in self.labelled]
        return TaskData(name=self.reference, split=split, images=images, targets=targets, input=self.spec.input, tasks=tasks)

    def describe(self) -> dict[str, Any]:
        """What the manifest records: the source, its split sizes and rule, normalisation, labelled tasks."""
        unlabelled = [t for t in self.spec.task_names if t not in self.labelled]
        return {"reference": self.reference, "kind": self.kind, "split_rule": self.split_rule,
                "split_sizes": {s: self.size(s) for s in SPLITS}, "stored_image_shape": list(self.stored_shape),
                "resize": (f"{list(self.stored_shape[1:])} -> {self.spec.input.shape[1:]} (bilinear, antialiased)"
                           if self.resize and tuple(self.stored_shape[1:]) != tuple(self.spec.input.shape[1:]) else None),
                "normalisation": {"mean": self.spec.input.mean, "std": self.spec.input.std, "from": "the model spec"},
                "labelled_tasks": self.labelled, "unlabelled_tasks": unlabelled}


# -- resolving a reference -----------------------------------------------------------------------------------
def open_data(reference: str, spec: ModelSpec, *, seed: int = 0, resize: bool = False,
              holdout: tuple[float, float] = DEFAULT_HOLDOUT) -> DataSource:
    """Resolve `--data` for a model: a built-in name, an .npz, a folder, or package.module:function."""
    if not reference or not reference.strip():
        raise EdgemtlError("--data is empty: give a built-in set (scenes, digits), an .npz file, a folder or package.module:function")
    if not all(0 <= f < 1 for f in holdout) or sum(holdout) >= 1:
        raise EdgemtlError(f"held-out fractions (val, test) must be in [0, 1) and sum below 1, got {list(holdout)}")
    path = Path(reference)
    if reference in DATASETS:
        return _builtin(reference, spec, seed, resize)
    if path.suffix == ".npz" or path.is_file():
        return _npz(path, spec, seed, resize, holdout)
    if path.is_dir():
        return _folder(path, spec, seed, resize, holdout)
    if ":" in reference and not path.exists():
        return _factory(reference, spec, seed, resize, holdout)
    raise EdgemtlError(f"--data {reference!r} is neither a built-in set ({', '.join(DATASETS)}), an existing .npz file "
                       "or folder, nor package.module:function")


def _check_image_shape(stored: tuple[int, ...], spec: ModelSpec, reference: str, resize: bool) -> tuple[int, int, int]:
    expected = tuple(spec.input.shape)
    if len(stored) != 3:
        raise EdgemtlError(f"images in {reference} must be (C, H, W) per sample, got shape {list(stored)}")
    if stored[0] != expected[0] or (stored[1:] != expected[1:] and not resize):
        hint = "pass --resize to resize them (recorded)" if stored[0] == expected[0] else "the channel count must match"
        raise EdgemtlError(f"images in {reference} are {list(stored)} but the model takes {list(expected)}; {hint}")
    return stored  # type: ignore[return-value]


def _seeded_splits(count: int, seed: int, holdout: tuple[float, float]) -> tuple[dict[str, np.ndarray], str]:
    order = np.random.default_rng(seed).permutation(count)
    val, test = (max(1, round(f * count)) if f > 0 and count >= 3 else 0 for f in holdout)
    parts = {"val": np.sort(order[:val]), "test": np.sort(order[val:val + test]), "train": np.sort(order[val + test:])}
    return parts, f"seeded permutation (seed {seed}): val {holdout[0]:g}, test {holdout[1]:g} of {count} images"


def _named_splits(values: np.ndarray, where: str) -> tuple[dict[str, np.ndarray], str]:
    names = np.asarray(values).astype(str)
    unknown = sorted(set(names.tolist()) - set(SPLITS))
    if unknown:
        raise EdgemtlError(f"split values in {where} must be train / val / test, got {', '.join(unknown[:3])}")
    return {s: np.flatnonzero(names == s) for s in SPLITS}, f"the source's own split ({where})"


def _spec_task(spec: ModelSpec, name: str, reference: str) -> TaskSpec:
    if name not in spec.task_names:
        raise EdgemtlError(f"{reference} has labels for task {name!r}, which the model spec does not have "
                           f"(tasks: {', '.join(spec.task_names)}); rename or drop them")
    return spec.task(name)


def _builtin(name: str, spec: ModelSpec, seed: int, resize: bool) -> DataSource:
    """A built-in set read for this spec: its labels count for the spec's tasks of the same name, kind and shape."""
    from edgemtl.data import data_spec

    data_input, data_tasks = data_spec(name)
    stored = _check_image_shape(tuple(data_input.shape), spec, f"built-in data set {name!r}", resize)
    own = {t.name: t for t in data_tasks}
    labelled = _scored(spec, [t.name for t in spec.tasks if t.name in own
                              and (own[t.name].kind, own[t.name].output_shape) == (t.kind, t.output_shape)])

    def split(part: str) -> Callable[[], _Split]:
        def make() -> _Split:
            if name == "scenes":   # each sample has its own generator: render only the samples read
                count, size = SCENES_DEFAULT_N[part], data_input.shape[-1]

                def render(i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
                    sample = scene_sample(seed, part, i, size)
                    return sample.image, {t: getattr(sample, t) for t in labelled}

                return _Split(SampleReader(count, render), np.arange(count))
            data = load_data(name, part, seed=seed)
            return _Split(_array_reader(data.images, {t: data.targets[t] for t in labelled}), np.arange(len(data)))
        return make

    return DataSource(name, "built-in", spec, labelled, stored, resize, "the built-in set's own splits",
                      {s: split(s) for s in SPLITS})


def _array_reader(images: np.ndarray, labels: dict[str, np.ndarray]) -> SampleReader:
    return SampleReader(len(images), lambda i: (images[i], {t: v[i] for t, v in labels.items()}), cache=False, images=images,
                        labels=labels)


def _npz(path: Path, spec: ModelSpec, seed: int, resize: bool, holdout: tuple[float, float]) -> DataSource:
    if not path.is_file():
        raise EdgemtlError(f"data file {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # zipfile / pickle / format errors
        raise EdgemtlError(f"{path} is not a readable .npz file: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if "images" not in arrays:
        raise EdgemtlError(f"{path} has no 'images' array (found: {', '.join(arrays) or 'nothing'}); save images as (N, C, H, W)")
    images = arrays.pop("images")
    if images.ndim != 4:
        raise EdgemtlError(f"'images' in {path} must be (N, C, H, W), got rank {images.ndim} shape {list(images.shape)}")
    if images.dtype != np.uint8:
        if images.dtype.kind != "f":
            raise EdgemtlError(f"'images' in {path} must be uint8 (0-255) or float in [0, 1], got {images.dtype}")
        if images.size and (not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1):
            raise EdgemtlError(f"float 'images' in {path} must lie in [0, 1] (got {np.nanmin(images):g}..{np.nanmax(images):g}); "
                               "save uint8 0-255 or divide by 255")
        images = images.astype(np.float32, copy=False)
    stored = _check_image_shape(tuple(images.shape[1:]), spec, str(path), resize)
    split_values = arrays.pop("split", None)
    labels = {}
    for name, values in arrays.items():
        task = _spec_task(spec, name, str(path))
        if len(values) != len(images):
            raise EdgemtlError(f"labels of task {name!r} in {path} hold {len(values)} entries for {len(images)} images")
        labels[name] = check_labels(task, values, str(path))
    if split_values is not None and len(split_values) != len(images):
        raise EdgemtlError(f"'split' in {path} holds {len(split_values)} entries for {len(images)} images")
    splits, rule = _named_splits(split_values, str(path)) if split_values is not None else _seeded_splits(len(images), seed, holdout)
    reader = _array_reader(images, labels)
    labelled = _scored(spec, list(labels))
    return DataSource(str(path), "npz", spec, labelled, stored, resize, rule,
                      {s: (lambda s=s: _Split(reader, splits[s])) for s in SPLITS})


# -- folders ---------------------------------------------------------------------------------------------------
def read_image(path: Path) -> np.ndarray:
    """One PNG / JPEG as (C, H, W) uint8: grey stays one channel, RGBA / palette become RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in ("1", "L", "I;16", "I") else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise EdgemtlError(f"cannot read image {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _label_rows(folder: Path) -> tuple[list[dict[str, Any]], str] | None:
    for name in LABEL_FILES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8-sig")
        if name.endswith(".csv"):
            rows = list(csv.DictReader(text.splitlines()))
        else:
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise EdgemtlError(f"{path} line {number} is not JSON: {exc.msg}") from None
        if rows and "image" not in rows[0]:
            raise EdgemtlError(f"{path} needs an 'image' column naming each image file (found: {', '.join(rows[0])})")
        return rows, str(path)
    return None


def _dense_label(folder: Path, cell: Any, task: TaskSpec, where: str) -> np.ndarray:
    path = folder / str(cell)
    if not path.is_file():
        raise EdgemtlError(f"{where}: dense label file {path} for task {task.name!r} does not exist")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:
            raise EdgemtlError(f"cannot read label {path}: {type(exc).__name__}") from None
    label = read_image(path)
    return label[0] if task.kind == "segmentation" else label.astype(np.float32) / (255.0 if task.kind == "edges" else 1.0)


def _cell_value(cell: Any, task: TaskSpec) -> Any:
    """A CSV / JSON cell as the task's raw value: a class index or name, a number, or a list of numbers."""
    if isinstance(cell, str):
        text = cell.strip()
        if task.kind == "classification":
            return int(text) if text.lstrip("-").isdigit() else text
        parts = text.replace(";", " ").replace(",", " ").split()
        return [float(p) for p in parts] if len(parts) > 1 else float(text)
    return cell


def _folder(folder: Path, spec: ModelSpec, seed: int, resize: bool, holdout: tuple[float, float]) -> DataSource:
    found = _label_rows(folder)
    if found is None:
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rows, where, tasks = [{"image": f} for f in files], str(folder), []
    else:
        rows, where = found
        columns = [c for c in rows[0] if c not in ("image", "split")] if rows else []
        tasks = [_spec_task(spec, c, where) for c in columns]
    if not rows:
        raise EdgemtlError(f"{where} lists no images ({'/'.join(IMAGE_SUFFIXES)} files or rows of {' / '.join(LABEL_FILES)})")
    paths = [folder / str(row["image"]) for row in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise EdgemtlError(f"{where} names image {missing[0]}, which does not exist")
    dense = [t for t in tasks if t.kind in DENSE_KINDS or len(t.output_shape) > 1]  # one label file per image
    scalar = [t for t in tasks if t not in dense]
    labels: dict[str, np.ndarray] = {}
    for task in scalar:
        try:
            values = [_cell_value(row[task.name], task) for row in rows]
        except (KeyError, ValueError, TypeError):
            bad = next(i for i, row in enumerate(rows) if not _parses(row.get(task.name), task))
            raise EdgemtlError(f"{where} row {bad + 1}: task {task.name!r} needs a label, got {rows[bad].get(task.name)!r}") from None
        labels[task.name] = check_labels(task, np.array(values), where)
    dense_cells = {t.name: [row.get(t.name) for row in rows] for t in dense}
    for task in dense:
        empty = [i for i, cell in enumerate(dense_cells[task.name]) if cell in (None, "")]
        if empty:
            raise EdgemtlError(f"{where} row {empty[0] + 1}: task {task.name!r} needs a label file, got nothing")
    first = read_image(paths[0])
    stored = _check_image_shape(tuple(first.shape), spec, f"folder {folder} ({paths[0].name})", resize)

    def read_one(i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        image = read_image(paths[i])
        if image.shape[0] != stored[0] or (not resize and image.shape != first.shape):
            raise EdgemtlError(f"image {paths[i]} is {list(image.shape)} but {paths[0].name} is {list(first.shape)}; "
                               "every image must have the model's input shape (or pass --resize)")
        targets = {t: v[i] for t, v in labels.items()}
        for task in dense:
            targets[task.name] = check_labels(task, _dense_label(folder, dense_cells[task.name][i], task, where)[None],
                                              f"{where} row {i + 1}")[0]
        return image, targets

    reader = SampleReader(len(rows), read_one)
    split_values = [row.get("split") for row in rows] if rows and "split" in rows[0] else None
    splits, rule = (_named_splits(np.array(split_values), where) if split_values is not None
                    else _seeded_splits(len(rows), seed, holdout))
    labelled = _scored(spec, [*labels, *dense_cells])
    return DataSource(str(folder), "folder", spec, labelled, stored, resize, rule,
                      {s: (lambda s=s: _Split(reader, splits[s])) for s in SPLITS})


def _parses(cell: Any, task: TaskSpec) -> bool:
    try:
        _cell_value(cell, task)
        return cell not in (None, "")
    except (ValueError, TypeError):
        return False


# -- the user's own Dataset --------------------------------------------------------------------------------
def _as_array(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _factory(reference: str, spec: ModelSpec, seed: int, resize: bool, holdout: tuple[float, float]) -> DataSource:
    function = import_callable(reference, "the data factory")
    takes_split = "split" in inspect.signature(function).parameters
    what = "the data factory"

    def dataset_of(split: str | None) -> Any:
        dataset = call_user(function, reference, what, **({"split": split} if split else {}))
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise EdgemtlError(f"{what} {reference!r} returned {type(dataset).__name__}, not a Dataset (__len__ and __getitem__)")
        return dataset

    def sample(dataset: Any, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        item = call_user(dataset.__getitem__, reference, f"item {i} of {what}", i)
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
            raise EdgemtlError(f"{what} {reference!r}: item {i} is a {type(item).__name__}, not (image, {{task: target}})")
        image = _as_array(item[0])
        if image.dtype != np.uint8:
            image = image.astype(np.float32)
        where = f"item {i} of {reference}"
        targets = {}
        for name, value in item[1].items():
            task = _spec_task(spec, str(name), where)
            targets[task.name] = check_labels(task, _as_array(value)[None], where)[0]
        return image, targets

    probe = dataset_of("train" if takes_split else None)
    if len(probe) == 0:
        raise EdgemtlError(f"{what} {reference!r} returned an empty Dataset")
    image, targets = sample(probe, 0)
    stored = _check_image_shape(tuple(image.shape), spec, f"{reference} (item 0)", resize)
    given = sorted(targets)
    labelled = _scored(spec, given)

    def checked(dataset: Any) -> SampleReader:
        def read_one(i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            image, targets = sample(dataset, i)
            if tuple(image.shape) != stored and not (resize and image.shape[0] == stored[0]):
                raise EdgemtlError(f"item {i} of {reference} has an image of shape {list(image.shape)}, item 0 {list(stored)}")
            if sorted(targets) != given:
                raise EdgemtlError(f"item {i} of {reference} labels tasks {sorted(targets)}, item 0 {given}")
            return image, targets
        return SampleReader(len(dataset), read_one)

    if takes_split:
        readers = {"train": checked(probe)}

        def split(part: str) -> Callable[[], _Split]:
            def make() -> _Split:
                reader = readers.get(part) or checked(dataset_of(part))
                return _Split(reader, np.arange(len(reader)))
            return make

        return DataSource(reference, "factory", spec, labelled, stored, resize, "the factory's split argument",
                          {s: split(s) for s in SPLITS})
    reader = checked(probe)
    splits, rule = _seeded_splits(len(reader), seed, holdout)
    return DataSource(reference, "factory", spec, labelled, stored, resize, rule,
                      {s: (lambda s=s: _Split(reader, splits[s])) for s in SPLITS})
