"""Procedural indoor scenes with exact dense labels, rendered by analytic ray casting.

Real multi-task data sets (NYUv2, Taskonomy) are gigabytes and need a network; these scenes give the same
task mix (semantic segmentation, depth, surface normals, edges, a scene-level class) from a seed in
milliseconds, and every label is exact because it comes from the same ray hit that shades the pixel.

Geometry: a pinhole camera at the origin, pitched down a little, inside a closed room (floor, ceiling,
left/right/back walls; no ray in the field of view points backwards, so no front wall is needed) holding
2-5 axis-aligned boxes, spheres and vertical capped cylinders standing on the floor. World axes: x right,
y up, z forward. Camera axes are the same before the pitch: x right, y up, z along the optical axis, so
`depth` is the camera z of the hit and `normals` are expressed in those camera axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edgemtl.errors import EdgemtlError

CLASS_NAMES = ("floor", "wall", "box", "sphere", "cylinder")
SCENE_NAMES = ("box", "sphere", "cylinder")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
VERTICAL_FOV_DEG = 60.0

FLOOR, WALL, BOX, SPHERE, CYLINDER = range(5)
# Instance ids: the five room surfaces first (so walls stay distinct instances), then one per object.
_ROOM_INSTANCES = 5
_CORNERS = np.array([[(i >> a) & 1 for a in range(3)] for i in range(8)], dtype=bool)  # pick lo or hi per axis
_MIN_DISC = 1e-9  # tangent rays count as misses, so a hit's normal is never perpendicular to its ray


@dataclass(frozen=True)
class Scene:
    """One rendered sample: the image and every label, at the renderer's resolution."""

    image: np.ndarray  # (3, H, W) float32 in [0, 1]
    segmentation: np.ndarray  # (H, W) int64, CLASS_NAMES indices
    depth: np.ndarray  # (1, H, W) float32, metres along the optical axis
    normals: np.ndarray  # (3, H, W) float32, unit, camera axes, facing the camera
    edges: np.ndarray  # (1, H, W) float32 in {0, 1}, instance boundaries
    instance: np.ndarray  # (H, W) int64, one id per room surface / object
    scene: int  # SCENE_NAMES index of the object type covering the most pixels


@lru_cache(maxsize=8)
def camera_rays(size: int) -> np.ndarray:
    """Per-pixel ray directions in camera axes with z = 1, so the hit parameter t *is* the z-depth."""
    focal = (size / 2) / np.tan(np.radians(VERTICAL_FOV_DEG / 2))
    centres = (np.arange(size) + 0.5 - size / 2) / focal
    x = np.broadcast_to(centres[None, :], (size, size))
    y = np.broadcast_to(-centres[:, None], (size, size))  # image rows go down, camera y goes up
    rays = np.stack([x, y, np.ones((size, size))], axis=-1).reshape(-1, 3)
    rays.flags.writeable = False
    return rays


def _pitch_matrix(pitch: float) -> np.ndarray:
    """Camera-to-world rotation for a camera pitched down by `pitch` radians about its x axis."""
    c, s = np.cos(pitch), np.sin(pitch)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _quadratic_entry(a: np.ndarray, b_half: np.ndarray, c: float) -> np.ndarray:
    """Nearer positive root of a t^2 - 2 b_half t + c = 0 (ray entering a convex quadric), inf if none."""
    disc = b_half * b_half - a * c
    ok = disc > _MIN_DISC
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (b_half - np.sqrt(np.where(ok, disc, 0.0))) / a
    return np.where(ok & (t > 0), t, np.inf)


def _hit_box(d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test: entry distance and outward normal of the face entered."""
    safe = np.where(d == 0.0, 1e-30, d)
    t1, t2 = lo / safe, hi / safe
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = near.argmax(axis=1)
    t_in = near[np.arange(len(d)), axis]
    t_out = far.min(axis=1)
    t = np.where((t_in <= t_out) & (t_in > 0), t_in, np.inf)
    normal = np.zeros_like(d)
    normal[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
    return t, normal


def _hit_sphere(d: np.ndarray, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    t = _quadratic_entry((d * d).sum(1), d @ centre, float(centre @ centre - radius * radius))
    finite = np.where(np.isfinite(t), t, 0.0)
    return t, (finite[:, None] * d - centre) / radius


def _hit_cylinder(
    d: np.ndarray, cx: float, cz: float, radius: float, y0: float, y1: float
) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cylinder from y0 to y1 with a top cap (the bottom lies on the floor, never visible)."""
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    t_side = _quadratic_entry(dx * dx + dz * dz, dx * cx + dz * cz, cx * cx + cz * cz - radius * radius)
    y_side = np.where(np.isfinite(t_side), t_side, 0.0) * dy
    t_side = np.where((y_side >= y0) & (y_side <= y1), t_side, np.inf)
    t_plane = y1 / np.where(dy < 0, dy, -1.0)  # the camera is above every cap, so only rays going down hit
    cap_x, cap_z = t_plane * dx - cx, t_plane * dz - cz
    t_cap = np.where((dy < 0) & (cap_x * cap_x + cap_z * cap_z <= radius * radius), t_plane, np.inf)
    use_cap = t_cap < t_side
    t = np.minimum(t_side, t_cap)
    finite = np.where(np.isfinite(t), t, 0.0)
    side_normal = np.stack([finite * dx - cx, np.zeros_like(dx), finite * dz - cz], axis=1) / radius
    normal = np.where(use_cap[:, None], np.array([0.0, 1.0, 0.0]), side_normal)
    return t, normal


@dataclass(frozen=True)
class _Object:
    kind: int  # BOX, SPHERE or CYLINDER
    x: float
    z: float
    footprint: float  # radius of the object's disc on the floor, for non-overlapping placement
    height: float
    params: tuple[float, ...]

    def bounds(self, floor_y: float) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounding box (a box's own extent, the footprint square otherwise)."""
        half = self.params[:2] if self.kind == BOX else (self.footprint, self.footprint)
        lo = np.array([self.x - half[0], floor_y, self.z - half[1]])
        hi = np.array([self.x + half[0], floor_y + self.height, self.z + half[1]])
        return lo, hi

    def hit(self, d: np.ndarray, floor_y: float) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == BOX:
            return _hit_box(d, *self.bounds(floor_y))
        if self.kind == SPHERE:
            r = self.params[0]
            return _hit_sphere(d, np.array([self.x, floor_y + r, self.z]), r)
        return _hit_cylinder(d, self.x, self.z, self.params[0], floor_y, floor_y + self.height)


def _place_objects(rng: np.random.Generator, left: float, right: float, back: float) -> list[_Object]:
    """2-5 non-overlapping objects of random type and size, inside the room and the horizontal view."""
    count = int(rng.integers(2, 6))
    half_fov = np.tan(np.radians(VERTICAL_FOV_DEG / 2))
    objects: list[_Object] = []
    for _ in range(400):
        if len(objects) == count:
            break
        kind = int(rng.integers(BOX, CYLINDER + 1))
        if kind == BOX:
            hx, hz, h = rng.uniform(0.15, 0.45), rng.uniform(0.15, 0.45), rng.uniform(0.25, 0.9)
            footprint, params = float(np.hypot(hx, hz)), (hx, hz)
        elif kind == SPHERE:
            r = rng.uniform(0.25, 0.6)
            footprint, h, params = r, 2 * r, (r,)
        else:
            r, h = rng.uniform(0.15, 0.4), rng.uniform(0.4, 1.1)
            footprint, params = r, (r,)
        z = rng.uniform(1.7, back - 0.2 - footprint)
        reach = min(z * half_fov * 0.8, left - footprint - 0.05, right - footprint - 0.05)
        x = rng.uniform(-reach, reach) if reach > 0 else 0.0
        if all(np.hypot(x - o.x, z - o.z) > footprint + o.footprint + 0.05 for o in objects):
            objects.append(_Object(kind, float(x), float(z), float(footprint), float(h), tuple(map(float, params))))
    return objects


def _screen_window(lo: np.ndarray, hi: np.ndarray, rotation: np.ndarray, size: int) -> tuple[slice, slice]:
    """Pixel rows/columns whose rays can meet the box [lo, hi]: its projected corners, padded by a pixel.

    Tracing an object only inside this window is exact (the projection of a convex box lies inside the
    hull of its projected corners) and makes an object cost its screen area, not the whole image.
    """
    corners = np.where(_CORNERS, hi, lo) @ rotation
    if corners[:, 2].min() <= 1e-3:
        return slice(0, size), slice(0, size)
    focal = (size / 2) / np.tan(np.radians(VERTICAL_FOV_DEG / 2))
    cols = corners[:, 0] / corners[:, 2] * focal + size / 2 - 0.5
    rows = size / 2 - 0.5 - corners[:, 1] / corners[:, 2] * focal
    c0, c1 = max(int(np.floor(cols.min())) - 1, 0), min(int(np.ceil(cols.max())) + 2, size)
    r0, r1 = max(int(np.floor(rows.min())) - 1, 0), min(int(np.ceil(rows.max())) + 2, size)
    return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))


def _trace(
    d: np.ndarray, rotation: np.ndarray, room: tuple[float, float, float, float, float], objects: list[_Object]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit per ray of the (S, S, 3) world ray grid: distance, world normal and instance id."""
    floor_y, ceiling_y, left, right, back = room
    size = d.shape[0]
    # Room surfaces in instance order: floor, ceiling, left, right, back (normals point into the room).
    axes = np.array([1, 1, 0, 0, 2])
    values = np.array([floor_y, ceiling_y, -left, right, back])
    inward = np.zeros((5, 3))
    inward[np.arange(5), axes] = [1.0, -1.0, 1.0, -1.0, -1.0]
    comp = d[..., axes]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_room = values / comp
    t_room = np.where((comp != 0) & (t_room > 0), t_room, np.inf)
    instance = t_room.argmin(axis=-1)
    t = np.take_along_axis(t_room, instance[..., None], axis=-1)[..., 0]
    normal = inward[instance]
    for k, obj in enumerate(objects):
        rows, cols = _screen_window(*obj.bounds(floor_y), rotation, size)
        window = d[rows, cols].reshape(-1, 3)
        if len(window) == 0:
            continue
        t_obj, n_obj = obj.hit(window, floor_y)
        shape = t[rows, cols].shape
        t_obj, n_obj = t_obj.reshape(shape), n_obj.reshape(*shape, 3)
        closer = t_obj < t[rows, cols]
        t[rows, cols][closer] = t_obj[closer]
        normal[rows, cols][closer] = n_obj[closer]
        instance[rows, cols][closer] = _ROOM_INSTANCES + k
    return t.reshape(-1), normal.reshape(-1, 3), instance.reshape(-1)


def _edges(instance: np.ndarray) -> np.ndarray:
    """1 on both sides of every place where the instance id changes between 4-neighbours."""
    edge = np.zeros(instance.shape, dtype=bool)
    across = instance[:, :-1] != instance[:, 1:]
    edge[:, :-1] |= across
    edge[:, 1:] |= across
    down = instance[:-1, :] != instance[1:, :]
    edge[:-1, :] |= down
    edge[1:, :] |= down
    return edge


def render_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    """Draw a room, its objects, colours and light from `rng` and render image and labels at size x size."""
    if size < 8:
        raise EdgemtlError(f"scene image size must be at least 8 pixels, got {size}")
    camera_height = rng.uniform(1.3, 1.7)
    floor_y = -camera_height
    ceiling_y = rng.uniform(2.5, 3.2) - camera_height
    left, right, back = rng.uniform(2.0, 3.0), rng.uniform(2.0, 3.0), rng.uniform(5.0, 8.0)
    rotation = _pitch_matrix(np.radians(rng.uniform(8.0, 18.0)))
    objects = _place_objects(rng, left, right, back)

    d = camera_rays(size) @ rotation.T
    room = (floor_y, ceiling_y, left, right, back)
    t, normal_w, instance = _trace(d.reshape(size, size, 3), rotation, room, objects)
    points = t[:, None] * d

    # Colours are drawn independently of the object type, so colour alone never tells the class.
    n_inst = _ROOM_INSTANCES + len(objects)
    palette = rng.uniform(0.15, 0.95, size=(n_inst, 3))
    palette[1] = palette[2] = palette[3] = palette[4] = rng.uniform(0.45, 0.95, size=3)  # painted walls
    palette[1] *= 1.05  # a slightly brighter ceiling keeps the ceiling/wall boundary visible
    tile = rng.uniform(0.3, 0.7)
    floor_dark = rng.uniform(0.5, 0.85)
    albedo = palette[instance]
    on_floor = instance == 0
    checker = (np.floor(points[:, 0] / tile) + np.floor(points[:, 2] / tile)) % 2 == 1
    albedo[on_floor & checker] *= floor_dark

    light = np.array([rng.uniform(-left + 0.3, right - 0.3), ceiling_y - 0.15, rng.uniform(1.0, back - 1.0)])
    to_light = light - points
    dist = np.sqrt(np.einsum("ij,ij->i", to_light, to_light))
    lambert = np.clip((normal_w * to_light).sum(1) / dist, 0.0, None)
    ambient = rng.uniform(0.2, 0.4)
    shade = ambient + (1.0 - ambient) * lambert * np.minimum(1.0, 6.0 / (1.0 + dist * dist * 0.25))
    image = albedo * shade[:, None]
    image = image.T.reshape(3, size, size).astype(np.float32)
    image += rng.uniform(0.005, 0.02) * rng.standard_normal(image.shape, dtype=np.float32)
    np.clip(image, 0.0, 1.0, out=image)

    instance_map = instance.reshape(size, size).astype(np.int64)
    kinds = np.array([FLOOR, WALL, WALL, WALL, WALL] + [o.kind for o in objects], dtype=np.int64)
    segmentation = kinds[instance_map]
    areas = np.bincount(segmentation.ravel(), minlength=5)[BOX:]
    normal_c = normal_w @ rotation  # world -> camera is rotation.T, applied to row vectors
    normal_c /= np.sqrt(np.einsum("ij,ij->i", normal_c, normal_c))[:, None]
    return Scene(
        image=image,
        segmentation=segmentation,
        depth=t.reshape(1, size, size).astype(np.float32),
        normals=normal_c.T.reshape(3, size, size).astype(np.float32),
        edges=_edges(instance_map)[None].astype(np.float32),
        instance=instance_map,
        scene=int(areas.argmax()),
    )


def scene_sample(seed: int, split: str, index: int, size: int = 64) -> Scene:
    """Sample `index` of a split: its own generator, so any sample can be rebuilt without the others."""
    if split not in SPLIT_IDS:
        raise EdgemtlError(f"unknown split {split!r}: valid splits are {', '.join(SPLIT_IDS)}")
    return render_scene(np.random.default_rng((seed, SPLIT_IDS[split], index)), size)


def generate_scenes(n: int, *, seed: int = 0, split: str = "train", size: int = 64) -> dict[str, np.ndarray]:
    """n samples stacked: `image` (n,3,S,S) plus every label, batch-first, dtypes as in `Scene`."""
    if split not in SPLIT_IDS:
        raise EdgemtlError(f"unknown split {split!r}: valid splits are {', '.join(SPLIT_IDS)}")
    out = {
        "image": np.empty((n, 3, size, size), np.float32),
        "segmentation": np.empty((n, size, size), np.int64),
        "depth": np.empty((n, 1, size, size), np.float32),
        "normals": np.empty((n, 3, size, size), np.float32),
        "edges": np.empty((n, 1, size, size), np.float32),
        "scene": np.empty((n,), np.int64),
    }
    for i in range(n):
        sample = scene_sample(seed, split, i, size)
        for key, array in out.items():
            array[i] = getattr(sample, key)
    return out
