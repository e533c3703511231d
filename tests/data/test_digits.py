"""The real-image digits set: shapes, derived labels and fixed stratified splits."""

import numpy as np
import pytest

from edgemtl.data import data_spec, load_data
from edgemtl.data.digits import INK_THRESHOLD, split_indices
from edgemtl.errors import EdgemtlError


@pytest.fixture(scope="module")
def splits():
    return {s: load_data("digits", s) for s in ("train", "val", "test")}


def test_shapes_dtypes_and_labels(splits) -> None:
    train = splits["train"]
    n = len(train)
    assert train.images.shape == (n, 1, 32, 32) and train.images.dtype == np.float32
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    t = train.targets
    assert t["digit"].shape == (n,) and t["digit"].dtype == np.int64
    np.testing.assert_array_equal(t["parity"], t["digit"] % 2)
    assert t["mask"].shape == (n, 32, 32) and t["mask"].dtype == np.int64
    np.testing.assert_array_equal(t["mask"], train.images[:, 0] > INK_THRESHOLD)
    assert t["ink"].shape == (n, 1) and t["ink"].dtype == np.float32
    np.testing.assert_allclose(t["ink"][:, 0], train.images.mean(axis=(1, 2, 3)), rtol=1e-5)
    assert [task.name for task in train.tasks] == ["digit", "parity", "mask", "ink"]


def test_splits_are_stratified_disjoint_and_fixed(splits) -> None:
    sizes = {s: len(d) for s, d in splits.items()}
    assert sizes == {"train": 1257, "val": 270, "test": 270}
    for data in splits.values():
        counts = np.bincount(data.targets["digit"], minlength=10)
        assert (counts > 0).all()
        assert counts.max() - counts.min() <= max(3, 0.05 * len(data))
    index = split_indices()
    assert len(set(index["train"]) | set(index["val"]) | set(index["test"])) == 1797
    np.testing.assert_array_equal(load_data("digits", "val", seed=5).images, splits["val"].images)


def test_n_truncates_and_size_is_configurable() -> None:
    small = load_data("digits", "test", n=10, image_size=16)
    assert small.images.shape == (10, 1, 16, 16) and small.targets["mask"].shape == (10, 16, 16)
    assert data_spec("digits", 16)[1][2].output_shape == [2, 16, 16]


def test_input_spec_and_batches(splits) -> None:
    data = splits["val"]
    spec, tasks = data_spec("digits")
    assert data.input == spec and data.tasks == tasks
    x, targets = next(data.batches(32, shuffle=False))
    np.testing.assert_allclose(x.numpy(), (data.images[:32] - spec.mean[0]) / spec.std[0], rtol=1e-5, atol=1e-6)
    assert targets["digit"].shape == (32,) and targets["ink"].shape == (32, 1)


def test_bad_split_or_n() -> None:
    with pytest.raises(EdgemtlError, match="valid splits are train, val, test"):
        load_data("digits", "holdout")
    with pytest.raises(EdgemtlError, match="at least 1"):
        load_data("digits", "train", n=0)
