"""KITTI-style BEV AP: perfect = 1, empty = 0, 11-point interpolation by hand, ignored objects, difficulty
thresholds, and the KITTI-file path equal to the in-memory one."""
import math

import numpy as np
import pytest
import torch

from honed.core.errors import InputError
from honed.data.bev_kitti import synthetic_calib
from honed.data.kitti import write_calib, write_labels, write_velodyne
from honed.data.kitti_boxes import kitti_objects
from honed.vision.bev_ap import (BevFrameResult, bev_average_precision, difficulty_mask, evaluate_kitti_bev,
                                 interpolated_ap, match_frame)


def box(x, y, yaw=0.0, length=4.0, width=2.0):
    return [x, y, length, width, yaw]


def frame(dets, scores, gts, counts=None):
    gt = torch.tensor(gts, dtype=torch.float64).reshape(-1, 5)
    return BevFrameResult(torch.tensor(dets, dtype=torch.float64).reshape(-1, 5), torch.tensor(scores, dtype=torch.float64),
                          gt, torch.ones(len(gt), dtype=torch.bool) if counts is None else torch.tensor(counts))


def test_perfect_detector_scores_one_and_empty_detector_zero():
    gts = [box(10, 0, 0.3), box(20, 5, -1.0)]
    assert bev_average_precision([frame(gts, [0.9, 0.8], gts)]) == 1.0
    assert bev_average_precision([frame([], [], gts)]) == 0.0
    assert math.isnan(bev_average_precision([frame([], [], [])]))


def test_eleven_point_interpolation_by_hand():
    # ranked TP, FP, TP with 4 objects: recall 0.25, 0.25, 0.5; precision 1, 0.5, 0.667
    # interpolated precision: 1 at recall 0, 0.1, 0.2; 0.667 at 0.3, 0.4, 0.5; 0 beyond -> (3 + 2) / 11
    assert interpolated_ap([0.9, 0.8, 0.7], [True, False, True], 4) == pytest.approx((3 * 1 + 3 * 2 / 3) / 11)
    assert interpolated_ap([0.9, 0.8, 0.7], [True, False, True], 4, recall_points=40) == pytest.approx(
        (10 * 1 + 10 * 2 / 3) / 40)


def test_rotation_matters_and_ignored_objects_are_neither_hit_nor_miss():
    gts = [box(10, 0, 0.0), box(30, 0, 0.0)]
    turned = frame([box(10, 0, math.pi / 2)], [0.9], gts[:1])  # same centre, quarter turn: IoU 1/3
    assert bev_average_precision([turned]) == 0.0
    flipped = frame([box(10, 0, math.pi)], [0.9], gts[:1])  # reversed heading is the same box
    assert bev_average_precision([flipped]) == 1.0
    ignored = frame([box(10, 0), box(30, 0)], [0.9, 0.8], gts, counts=[True, False])
    scores, flags = match_frame(ignored, 0.5)
    assert scores == [0.9] and flags == [True]  # the detection of the ignored object is dropped, not a FP
    assert bev_average_precision([ignored]) == 1.0


def test_difficulty_follows_the_thresholds():
    occluded, points = np.array([0, 0, 1, 1, 2, 2]), np.array([50, 49, 20, 19, 5, 4])
    assert difficulty_mask("Easy", occluded, points).tolist() == [True, False, False, False, False, False]
    assert difficulty_mask("Moderate", occluded, points).tolist() == [True, True, True, False, False, False]
    assert difficulty_mask("Hard", occluded, points).tolist() == [True, True, True, True, True, False]
    height, trunc = np.array([40.0, 39.0, 25.0, 30.0]), np.array([0.0, 0.0, 0.3, 0.6])
    assert difficulty_mask("Easy", np.array([0, 0, 1, 0]), height=height, truncated=trunc, rule="kitti").tolist() == \
        [True, False, False, False]
    assert difficulty_mask("Moderate", np.array([0, 0, 1, 0]), height=height, truncated=trunc, rule="kitti").tolist() == \
        [True, True, True, False]
    with pytest.raises(InputError, match="point count"):
        difficulty_mask("Easy", occluded)


def test_kitti_files_evaluate_like_memory(tmp_path):
    calib = synthetic_calib()
    gt_lidar = np.array([[10.0, 1.0, -0.9, 4.0, 1.8, 1.5, 0.0], [25.0, -3.0, -0.9, 4.2, 1.9, 1.5, -1.2]])
    det_lidar = gt_lidar + np.array([0.3, -0.2, 0, 0.1, 0, 0, 0.05])
    rng = np.random.default_rng(0)
    points = np.c_[gt_lidar[0, :3] + rng.uniform(-0.5, 0.5, (60, 3)) * [4, 1.8, 1.5], np.ones(60)].astype(np.float32)
    write_velodyne(tmp_path / "gt" / "velodyne" / "000000.bin", points)
    write_calib(tmp_path / "gt" / "calib" / "000000.txt", calib)
    write_labels(tmp_path / "gt" / "label_2" / "000000.txt", kitti_objects(["Car", "Car"], gt_lidar, calib, (1242, 375)))
    write_labels(tmp_path / "det" / "000000.txt", kitti_objects(["Car", "Car"], det_lidar, calib, (1242, 375), scores=[0.9, 0.7]))
    from_files = evaluate_kitti_bev(tmp_path / "gt", tmp_path / "det", ["000000"])
    counts = [True, False]  # 60 points in the first car, none in the second: only the first counts (Hard >= 5)
    in_memory = bev_average_precision([frame(det_lidar[:, [0, 1, 3, 4, 6]].tolist(), [0.9, 0.7],
                                             gt_lidar[:, [0, 1, 3, 4, 6]].tolist(), counts)])
    assert from_files["Hard"] == pytest.approx(in_memory) and from_files["Hard"] == 1.0
    assert from_files["Easy"] == 1.0 and from_files["Moderate"] == 1.0  # 60 points, not occluded: every level


def test_bad_frames_are_refused_in_one_line():
    with pytest.raises(InputError, match=r"counts \(G,\)"):
        BevFrameResult(torch.zeros(0, 5), torch.zeros(0), torch.tensor([box(1, 1)]), torch.ones(2, dtype=torch.bool))
    with pytest.raises(InputError, match="recall_points"):
        interpolated_ap([0.5], [True], 1, recall_points=7)
