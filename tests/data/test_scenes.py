"""The procedural scenes: deterministic, exact and self-consistent labels, fast enough to generate on the fly."""


import numpy as np
import pytest

from edgemtl.data import load_data
from edgemtl.data.scenes import CLASS_NAMES, SCENE_NAMES, camera_rays, generate_scenes, scene_sample
from edgemtl.errors import EdgemtlError


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    return generate_scenes(300, seed=3, split="train", size=64)


def test_same_seed_is_identical_and_other_seeds_differ() -> None:
    a, b = generate_scenes(4, seed=7), generate_scenes(4, seed=7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], generate_scenes(4, seed=8)["image"])
    assert not np.array_equal(a["image"], generate_scenes(4, seed=7, split="val")["image"])
    # sample i depends only on (seed, split, i), not on how many were generated
    np.testing.assert_array_equal(scene_sample(7, "train", 2).depth, a["depth"][2])


def test_shapes_dtypes_and_ranges(batch: dict[str, np.ndarray]) -> None:
    n = 300
    expected = {
        "image": ((n, 3, 64, 64), np.float32),
        "segmentation": ((n, 64, 64), np.int64),
        "depth": ((n, 1, 64, 64), np.float32),
        "normals": ((n, 3, 64, 64), np.float32),
        "edges": ((n, 1, 64, 64), np.float32),
        "scene": ((n,), np.int64),
    }
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["depth"].min() > 0 and np.isfinite(batch["depth"]).all()
    assert set(np.unique(batch["edges"])) == {0.0, 1.0}
    small = generate_scenes(2, size=32)
    assert small["image"].shape == (2, 3, 32, 32) and small["normals"].shape == (2, 3, 32, 32)


def test_normals_are_unit_and_face_the_camera(batch: dict[str, np.ndarray]) -> None:
    normals = batch["normals"]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    rays = camera_rays(64).reshape(64, 64, 3).transpose(2, 0, 1)  # camera axes, per pixel
    facing = (normals * rays[None]).sum(axis=1)
    assert facing.max() < 0


def test_depth_matches_ray_geometry() -> None:
    """The floor is a plane: its camera-space points must all satisfy one plane equation."""
    s = scene_sample(0, "test", 5)
    rays = camera_rays(64).reshape(64, 64, 3)
    points = rays * s.depth[0][..., None]  # rays have z = 1, so depth scales them to the hit
    floor = s.segmentation == CLASS_NAMES.index("floor")
    normal = s.normals[:, floor].mean(axis=1)
    offsets = points[floor] @ normal
    assert offsets.std() < 1e-4 * abs(offsets.mean())


def test_every_class_boundary_is_an_edge(batch: dict[str, np.ndarray]) -> None:
    seg, edges = batch["segmentation"], batch["edges"][:, 0]
    across = seg[:, :, :-1] != seg[:, :, 1:]
    down = seg[:, :-1, :] != seg[:, 1:, :]
    assert (edges[:, :, :-1][across] == 1).all() and (edges[:, :, 1:][across] == 1).all()
    assert (edges[:, :-1, :][down] == 1).all() and (edges[:, 1:, :][down] == 1).all()
    assert edges.mean() < 0.25  # edges are thin


def test_all_classes_appear_and_scene_follows_the_area_rule(batch: dict[str, np.ndarray]) -> None:
    seg = batch["segmentation"]
    assert set(np.unique(seg)) == set(range(len(CLASS_NAMES)))
    assert set(np.unique(batch["scene"])) == set(range(len(SCENE_NAMES)))
    for i in range(len(seg)):
        areas = np.bincount(seg[i].ravel(), minlength=5)[2:]
        assert areas.sum() > 0  # at least one object is visible
        assert batch["scene"][i] == areas.argmax()


def test_colour_does_not_give_the_class(batch: dict[str, np.ndarray]) -> None:
    """Mean colour per object class is close to grey: colours are drawn independently of the type."""
    image, seg = batch["image"], batch["segmentation"]
    for cls in (2, 3, 4):
        mask = seg == cls
        means = np.array([image[:, c][mask].mean() for c in range(3)])
        assert np.ptp(means) < 0.08, (CLASS_NAMES[cls], means)


def test_load_data_scenes_and_errors() -> None:
    data = load_data("scenes", "val", n=6, seed=2)
    assert len(data) == 6 and data.images.shape == (6, 3, 64, 64)
    assert [t.name for t in data.tasks] == ["segmentation", "depth", "normals", "edges", "scene"]
    assert set(data.targets) == {t.name for t in data.tasks}
    shapes = {name: t.shape[1:] for name, t in data.targets.items()}
    assert shapes == {"segmentation": (64, 64), "depth": (1, 64, 64), "normals": (3, 64, 64),
                      "edges": (1, 64, 64), "scene": ()}
    x, targets = next(data.batches(4, shuffle=True, seed=1))
    assert x.shape == (4, 3, 64, 64) and x.dtype.is_floating_point
    assert abs(float(x.mean())) < 1.5  # normalised, not raw [0, 1]
    assert targets["segmentation"].shape == (4, 64, 64) and targets["scene"].shape == (4,)
    assert sum(len(b[0]) for b in data.batches(4, shuffle=False)) == 6
    with pytest.raises(EdgemtlError, match="valid data sets are scenes, digits"):
        load_data("nyu")
    with pytest.raises(EdgemtlError, match="valid splits are train, val, test"):
        load_data("scenes", "dev")
