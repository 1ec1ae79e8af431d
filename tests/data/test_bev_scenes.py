"""Synthetic BEV scenes of the A*3D reproduction: seeded, in spec, LiDAR density falls with range, ray
occlusion, night changes only the camera; KITTI files round-trip; the split builder is exact."""
import math

import numpy as np
import pytest

from honed.core.errors import InputError
from honed.data.bev_kitti import read_frame, read_frame_index, synthetic_calib, write_bev_dataset
from honed.data.bev_scenes import (DENSITY, SceneSpec, attribute_split, footprint_corners, hidden_fractions,
                                   make_bev_scene, render_camera, simulate_lidar)
from honed.data.kitti_boxes import kitti_objects, label_fields, lidar_boxes, points_in_boxes

SPEC = SceneSpec()


def car(x, y, yaw=0.0):
    return [x, y, 0.75 - SPEC.sensor_height, 4.0, 1.8, 1.5, yaw]


def test_scenes_are_seeded_and_in_spec():
    a = make_bev_scene(np.random.default_rng(1), "high")
    b = make_bev_scene(np.random.default_rng(1), "high")
    assert a.types == b.types and np.array_equal(a.points, b.points)
    assert DENSITY["high"][0] - 3 <= len(a.types) <= DENSITY["high"][1]  # placement may give up on a few
    corners = footprint_corners(a.boxes)
    assert corners[..., 0].min() >= SPEC.min_forward and corners[..., 0].max() <= SPEC.area
    assert np.abs(corners[..., 1]).max() <= SPEC.area / 2
    centres = a.boxes[:, :2]
    gaps = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1)) + np.eye(len(centres)) * 1e9
    assert gaps.min() > 0.3  # no two objects overlap
    low = make_bev_scene(np.random.default_rng(2), "low")
    assert DENSITY["low"][0] <= len(low.types) <= DENSITY["low"][1]
    with pytest.raises(InputError, match="density"):
        make_bev_scene(np.random.default_rng(0), "medium")


def test_lidar_density_falls_with_range_and_occluded_objects_lose_points():
    rng = np.random.default_rng(0)
    near, far = np.array([car(10, 0)]), np.array([car(40, 0)])
    n_near = points_in_boxes(simulate_lidar(near, rng, SPEC), near)[0]
    n_far = points_in_boxes(simulate_lidar(far, rng, SPEC), far)[0]
    assert n_far < n_near / 4  # (10 / 40)^2 = 1/16 per unit surface; the far car shows the same face
    pair = np.array([car(10, 0, math.pi / 2), car(25, 0)])  # a car across the ray hides the one behind it
    counts = points_in_boxes(simulate_lidar(pair, rng, SPEC), pair)
    alone = points_in_boxes(simulate_lidar(pair[1:], rng, SPEC), pair[1:])[0]
    assert counts[0] > 0 and counts[1] < alone / 4  # only beams passing over the near car reach the far one
    hidden = hidden_fractions(pair)
    assert hidden[0] == 0.0 and hidden[1] == 1.0


def test_night_changes_only_the_camera():
    scene = make_bev_scene(np.random.default_rng(3), "low")
    cams = render_camera(scene)
    assert cams["day"].shape == (SPEC.grid_size, SPEC.grid_size) and 0 <= cams["night"].min() <= cams["night"].max() <= 1
    assert np.corrcoef(cams["night"].ravel(), cams["day"].ravel())[0, 1] < 0.6  # night: mostly noise
    assert all(np.array_equal(render_camera(scene)[t], cams[t]) for t in cams)  # seeded by the scene


def test_attribute_split_gives_exact_counts_without_repeats():
    pools = {"low": list(range(10)), "high": list(range(10, 30))}
    split = attribute_split(pools, {"low": 4, "high": 6}, seed=0)
    assert len(split) == 10 and sum(a == "low" for _, a in split) == 4 and len({i for i, _ in split}) == 10
    assert all((i < 10) == (a == "low") for i, a in split)
    with pytest.raises(InputError, match="pool holds 10"):
        attribute_split(pools, {"low": 11}, seed=0)


def test_kitti_conversions_round_trip_and_match_the_standard_axes():
    calib = synthetic_calib()
    boxes = np.array([car(12.3, -4.5, 0.7), car(30.0, 8.0, -2.9)])
    loc, ry, _ = label_fields(boxes, calib)
    assert np.allclose(ry, [math.remainder(-0.7 - math.pi / 2, 2 * math.pi), math.remainder(2.9 - math.pi / 2, 2 * math.pi)])
    assert np.allclose(loc[0], [4.5, SPEC.sensor_height, 12.3])  # camera x right = -y, y down, z forward
    back = lidar_boxes(kitti_objects(["Car", "Car"], boxes, calib, (1242, 375)), calib)
    assert np.allclose(back[:, :6], boxes[:, :6], atol=1e-9)
    assert np.allclose(np.cos(back[:, 6] - boxes[:, 6]), 1.0)


def test_dataset_round_trips_through_kitti_files_and_names_a_bad_line(tmp_path):
    rng = np.random.default_rng(4)
    scenes = [make_bev_scene(rng, d) for d in ("low", "high")]
    write_bev_dataset(tmp_path, scenes)
    assert [f["density"] for f in read_frame_index(tmp_path)] == ["low", "high"]
    frame = read_frame(tmp_path, "000001")
    assert frame.types == scenes[1].types and np.array_equal(frame.occluded, scenes[1].occluded)
    assert np.allclose(frame.boxes[:, :2], scenes[1].boxes[:, :2], atol=0.006)  # labels keep 2 decimals
    assert np.array_equal(frame.points, scenes[1].points) and set(frame.camera) == {"day", "night"}
    label = tmp_path / "label_2" / "000000.txt"
    label.write_text(label.read_text() + "Car 0.00 0 oops\n")
    with pytest.raises(InputError, match=f"{label}:{len(scenes[0].types) + 1}"):
        read_frame(tmp_path, "000000")
    assert read_frame_index(tmp_path / "missing") is None
