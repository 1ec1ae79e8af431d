"""Synthetic bird's-eye-view driving scenes with attributes, for the A*3D benchmark reproduction (Pham et
al., "A*3D Dataset: Towards Autonomous Driving in Challenging Environments", ICRA 2020, arXiv:1909.07541,
card 40 "Reproduction at small scale"), in numpy; written in KITTI format by :mod:`honed.data.bev_kitti`.

A scene covers ``area`` x ``area`` metres ahead of the ego vehicle (LiDAR x in [0, area], y in
[-area/2, area/2], the sensor at the origin, ``sensor_height`` above flat ground). Objects are oriented
boxes of ``CLASS_SIZES`` (cars 70%, pedestrians and cyclists 15% each) that never overlap; their count
sets the density attribute (``DENSITY``: low 2-6, high 15-30 objects per frame).

LiDAR (:func:`simulate_lidar`): one ray per azimuth step over the forward half-plane and per elevation
beam; a ray stops at the first object whose side it meets at a height inside the object, else at the
ground. Point density on a surface therefore falls with range squared and objects behind others lose
their points (ray occlusion). Each object's hidden fraction (its azimuth rays stopped by another object
first) gives its KITTI occlusion level (0 / 1 / 2, thresholds ``OCCLUSION_LEVELS``).

Camera (:func:`render_camera`): a raster on the BEV grid, the camera image already lifted to the ground
plane: a smooth ground texture and, where the ego can see them, the object footprints in each object's
own brightness, blurred. Night keeps 0.2 of the day contrast and adds strong noise; the LiDAR is
unchanged by the time of day.
"""
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from honed.core.errors import InputError

CLASS_SIZES = {"Car": ((3.5, 4.8), (1.6, 2.0), (1.4, 1.7)),  # (length, width, height) ranges in metres
               "Pedestrian": ((0.5, 0.9), (0.5, 0.8), (1.6, 1.9)),
               "Cyclist": ((1.5, 1.9), (0.5, 0.8), (1.6, 1.8))}
CLASS_SHARE = {"Car": 0.7, "Pedestrian": 0.15, "Cyclist": 0.15}
DENSITY = {"low": (2, 6), "high": (15, 30)}
TIMES = ("day", "night")
OCCLUSION_LEVELS = (0.1, 0.5)  # hidden fraction <= 0.1: level 0; <= 0.5: level 1; else 2


@dataclass(frozen=True)
class SceneSpec:
    """World and sensor of :func:`make_bev_scene` (see the module docstring); angles in degrees."""

    area: float = 64.0
    min_forward: float = 3.0  # objects start this far ahead of the sensor
    sensor_height: float = 1.73
    azimuth_step: float = 0.4
    elevations: tuple[float, float, int] = (-20.0, 2.0, 32)  # lowest, highest, number of beams
    range_noise: float = 0.02
    cell: float = 0.5  # camera raster cell (metres)

    def __post_init__(self) -> None:
        if not (self.area > 2 * self.min_forward >= 0 and self.sensor_height > 0 and 0 < self.azimuth_step <= 10
                and self.elevations[2] >= 1 and self.elevations[0] < self.elevations[1] and self.cell > 0):
            raise InputError(f"bad SceneSpec: {self}")

    @property
    def grid_size(self) -> int:
        return int(round(self.area / self.cell))


@dataclass
class BevScene:
    """One frame: object ``types`` (O,), LiDAR ``boxes`` (O, 7) (x, y, z centre, length, width, height,
    yaw), ``points`` (P, 4) float32 x, y, z, reflectance, per object ``hidden`` fraction, ``occluded``
    level and camera ``brightness``, the ``density`` label, and the seed of its camera texture."""

    types: list[str]
    boxes: np.ndarray
    points: np.ndarray
    hidden: np.ndarray
    occluded: np.ndarray
    brightness: np.ndarray
    density: str
    texture_seed: int
    extra: dict = field(default_factory=dict)


def place_objects(rng: np.random.Generator, count: int, spec: SceneSpec, tries: int = 200) -> tuple[list[str], np.ndarray]:
    """Up to ``count`` non-overlapping objects (circumscribed circles kept 0.3 m apart) inside the area."""
    names = list(CLASS_SHARE)
    types, boxes = [], []
    for _ in range(count):
        for _ in range(tries):
            kind = names[rng.choice(len(names), p=list(CLASS_SHARE.values()))]
            length, width, height = (rng.uniform(*r) for r in CLASS_SIZES[kind])
            radius = math.hypot(length, width) / 2
            x = rng.uniform(spec.min_forward + radius, spec.area - radius)
            y = rng.uniform(-spec.area / 2 + radius, spec.area / 2 - radius)
            if all(math.hypot(x - b[0], y - b[1]) >= radius + math.hypot(b[3], b[4]) / 2 + 0.3 for b in boxes):
                boxes.append([x, y, height / 2 - spec.sensor_height, length, width, height, rng.uniform(-math.pi, math.pi)])
                types.append(kind)
                break
    return types, np.array(boxes, dtype=np.float64).reshape(-1, 7)


def ray_entries(azimuths: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(A, O) distance along each azimuth ray (radians, from the origin) to where it first meets each box's
    footprint outline; inf where it misses."""
    corners = footprint_corners(boxes)  # (O, 4, 2)
    p, e = corners, np.roll(corners, -1, axis=1) - corners
    d = np.stack([np.cos(azimuths), np.sin(azimuths)], -1)[:, None, None, :]  # (A, 1, 1, 2)
    denom = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]  # (A, O, 4)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (p[..., 0] * e[..., 1] - p[..., 1] * e[..., 0]) / denom
        u = (p[..., 0] * d[..., 1] - p[..., 1] * d[..., 0]) / denom
    ok = (np.abs(denom) > 1e-12) & (t > 0) & (u >= 0) & (u <= 1)
    return np.where(ok, t, np.inf).min(-1)


def footprint_corners(boxes: np.ndarray) -> np.ndarray:
    """The 4 footprint corners (O, 4, 2) of LiDAR boxes (O, 7), counter-clockwise."""
    unit = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    local = unit[None] * boxes[:, None, 3:5]
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    return np.stack([local[..., 0] * cos - local[..., 1] * sin + boxes[:, None, 0],
                     local[..., 0] * sin + local[..., 1] * cos + boxes[:, None, 1]], -1)


def hidden_fractions(boxes: np.ndarray, step_deg: float = 0.1) -> np.ndarray:
    """Per object, the fraction of the azimuth rays that meet it whose first hit is another object."""
    if len(boxes) == 0:
        return np.zeros(0)
    entries = ray_entries(np.deg2rad(np.arange(-90, 90, step_deg)), boxes)
    first = entries.argmin(1)
    meets = np.isfinite(entries)
    seen = meets & (first[:, None] == np.arange(len(boxes))[None])
    return 1 - seen.sum(0) / np.maximum(meets.sum(0), 1)


def simulate_lidar(boxes: np.ndarray, rng: np.random.Generator, spec: SceneSpec) -> np.ndarray:
    """LiDAR points (P, 4) float32 of a scene (see the module docstring), inside the scene's area."""
    azimuths = np.deg2rad(np.arange(-90, 90, spec.azimuth_step))
    tan_e = np.tan(np.deg2rad(np.linspace(*spec.elevations[:2], spec.elevations[2])))  # (E,)
    obj_range = np.full((len(azimuths), len(tan_e)), np.inf)
    obj_id = np.zeros(obj_range.shape, dtype=np.int64)
    if len(boxes):
        entries = ray_entries(azimuths, boxes)  # (A, O)
        beam_z = spec.sensor_height + entries[:, None, :] * tan_e[None, :, None]  # height above ground (A, E, O)
        hit = np.where((beam_z >= 0) & (beam_z <= boxes[None, None, :, 5]), entries[:, None, :], np.inf)
        obj_range, obj_id = hit.min(-1), hit.argmin(-1)
    with np.errstate(divide="ignore"):
        ground = np.where(tan_e < 0, spec.sensor_height / -tan_e, np.inf)[None, :].repeat(len(azimuths), 0)
    on_object = obj_range < ground
    rng_dist = np.where(on_object, obj_range, ground)
    keep = np.isfinite(rng_dist)
    r = rng_dist[keep] + rng.normal(0, spec.range_noise, int(keep.sum()))
    az = np.broadcast_to(azimuths[:, None], rng_dist.shape)[keep]
    z = (np.broadcast_to(tan_e[None, :], rng_dist.shape)[keep] * rng_dist[keep])
    reflect = rng.uniform(0.05, 0.2, int(keep.sum()))
    if len(boxes):
        object_reflect = rng.uniform(0.3, 0.9, len(boxes))
        reflect = np.where(on_object[keep], object_reflect[obj_id[keep]], reflect)
    points = np.stack([r * np.cos(az), r * np.sin(az), z, reflect], 1)
    inside = (points[:, 0] >= 0) & (points[:, 0] <= spec.area) & (np.abs(points[:, 1]) <= spec.area / 2)
    return points[inside].astype(np.float32)


def make_bev_scene(rng: np.random.Generator, density: str, spec: SceneSpec = SceneSpec()) -> BevScene:
    """One scene of the given ``density`` ("low" or "high") (A*3D arXiv:1909.07541 reproduction data)."""
    if density not in DENSITY:
        raise InputError(f"density must be one of {tuple(DENSITY)}, got {density!r}")
    types, boxes = place_objects(rng, int(rng.integers(DENSITY[density][0], DENSITY[density][1] + 1)), spec)
    points = simulate_lidar(boxes, rng, spec)
    hidden = hidden_fractions(boxes)
    occluded = np.digitize(hidden, OCCLUSION_LEVELS, right=True).astype(np.int64)
    return BevScene(types, boxes, points, hidden, occluded, rng.uniform(0.0, 1.0, len(boxes)), density,
                    int(rng.integers(2**31)))


def grid_centres(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """LiDAR (x, y) of the camera raster's cell centres, each (S, S): row 0 is the far edge, column 0 the
    left (+y) edge."""
    s = spec.grid_size
    centres = (np.arange(s) + 0.5) * spec.cell
    return np.broadcast_to((spec.area - centres)[:, None], (s, s)), np.broadcast_to((spec.area / 2 - centres)[None, :], (s, s))


def first_object_map(scene: BevScene, spec: SceneSpec, step_deg: float = 0.1) -> np.ndarray:
    """(S, S) index of the first object on the ray from the sensor to each raster cell (azimuth bins of
    ``step_deg``), -1 where the ray meets none."""
    xs, ys = grid_centres(spec)
    if len(scene.boxes) == 0:
        return np.full(xs.shape, -1)
    bins = np.deg2rad(np.arange(-90, 90 + step_deg, step_deg))
    entries = ray_entries(bins, scene.boxes)
    first = np.where(np.isfinite(entries).any(1), entries.argmin(1), -1)
    which = np.clip(np.round((np.rad2deg(np.arctan2(ys, xs)) + 90) / step_deg).astype(np.int64), 0, len(bins) - 1)
    return first[which]


def render_camera(scene: BevScene, spec: SceneSpec = SceneSpec()) -> dict[str, np.ndarray]:
    """The camera rasters {"day", "night"} (S, S) in [0, 1] of ``scene`` (A*3D arXiv:1909.07541
    reproduction), seeded by the scene: the same ground and objects, night at 0.2 of the contrast plus noise."""
    rng = np.random.default_rng(scene.texture_seed)
    s = spec.grid_size
    image = 0.25 + 0.35 * zoom(rng.random((8, 8)), s / 8, order=3)[:s, :s].clip(0, 1)
    xs, ys = grid_centres(spec)
    first = first_object_map(scene, spec)
    for k, box in enumerate(scene.boxes):
        u = (xs - box[0]) * math.cos(box[6]) + (ys - box[1]) * math.sin(box[6])
        v = -(xs - box[0]) * math.sin(box[6]) + (ys - box[1]) * math.cos(box[6])
        image[(np.abs(u) <= box[3] / 2) & (np.abs(v) <= box[4] / 2) & (first == k)] = scene.brightness[k]
    image = gaussian_filter(image, 0.7)
    noise = np.random.default_rng(scene.texture_seed + 1)
    day = (image + noise.normal(0, 0.03, image.shape)).clip(0, 1)
    night = (0.2 * image + 0.1 + noise.normal(0, 0.2, image.shape)).clip(0, 1)
    return {"day": day, "night": night}


def attribute_split(pools: dict[str, list[int]], counts: dict[str, int], seed: int) -> list[tuple[int, str]]:
    """A training set with exactly ``counts[a]`` frames of attribute ``a`` (A*3D arXiv:1909.07541 attribute
    slices at equal size): drawn without replacement from ``pools[a]`` (frame indices), shuffled together;
    (frame, attribute) pairs."""
    rng = np.random.default_rng(seed)
    chosen = []
    for attr, n in counts.items():
        pool = pools.get(attr, [])
        if not 0 <= n <= len(pool):
            raise InputError(f"attribute {attr!r}: asked for {n} frames, its pool holds {len(pool)}")
        chosen += [(int(i), attr) for i in rng.choice(pool, size=n, replace=False)]
    return [chosen[k] for k in rng.permutation(len(chosen))]
