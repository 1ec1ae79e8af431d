"""KITTI-style bird's-eye-view average precision with Easy / Moderate / Hard difficulty, the metric of the A*3D
benchmark (Pham et al., ICRA 2020, arXiv:1909.07541; KITTI protocol).

Per difficulty level, a ground-truth object either counts (it passes the level's filters) or is ignored.
Detections of a class, per frame in descending score, are matched greedily to the unmatched ground truth of
highest rotated-box IoU >= ``iou_threshold``, a counting object first: a detection matched to a counting
object is a true positive, one matched to an ignored object is dropped (neither TP nor FP), one matched to
nothing is a false positive. Over all frames the detections are sorted by score; AP is the mean, over the
recall points, of the interpolated precision (the highest precision at any recall >= the point):
``recall_points=11`` samples 0, 0.1, ..., 1 (KITTI until 2019), ``40`` samples 1/40, ..., 1 (KITTI R40).

Difficulty rules (``rule``): ``"points"`` (the card's small-scale rule: occlusion level and LiDAR points
inside the box; levels ``POINT_LEVELS`` of (max occlusion, min points)) or ``"kitti"`` (2D box height in
pixels, occlusion level, truncation; ``KITTI_LEVELS`` of (min height, max occlusion, max truncation)).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from honed.core.errors import InputError
from honed.vision.rotated_iou import check_bev_boxes, rotated_iou

LEVELS = ("Easy", "Moderate", "Hard")
POINT_LEVELS = {"Easy": (0, 50), "Moderate": (1, 20), "Hard": (2, 5)}  # (R) card: by occlusion and point count
KITTI_LEVELS = {"Easy": (40.0, 0, 0.15), "Moderate": (25.0, 1, 0.30), "Hard": (25.0, 2, 0.50)}


def difficulty_mask(level: str, occluded: np.ndarray, points: np.ndarray | None = None, height: np.ndarray | None = None,
                    truncated: np.ndarray | None = None, rule: str = "points") -> np.ndarray:
    """Which ground-truth objects count at ``level`` (A*3D arXiv:1909.07541, KITTI protocol); (G,) bool.
    ``rule="points"`` needs ``points`` (LiDAR points inside each box); ``"kitti"`` needs ``height`` (2D box
    height, pixels) and ``truncated``."""
    if level not in LEVELS or rule not in ("points", "kitti"):
        raise InputError(f"level must be one of {LEVELS} and rule 'points' or 'kitti', got {level!r}, {rule!r}")
    occluded = np.asarray(occluded)
    if rule == "points":
        if points is None:
            raise InputError("rule='points' needs the LiDAR point count of each object")
        max_occ, min_points = POINT_LEVELS[level]
        return (occluded <= max_occ) & (np.asarray(points) >= min_points)
    if height is None or truncated is None:
        raise InputError("rule='kitti' needs each object's 2D box height and truncation")
    min_height, max_occ, max_trunc = KITTI_LEVELS[level]
    return (np.asarray(height) >= min_height) & (occluded <= max_occ) & (np.asarray(truncated) <= max_trunc)


@dataclass(frozen=True)
class BevFrameResult:
    """One frame of one class: detections ``boxes`` (D, 5) and ``scores`` (D,), ground truth ``gt_boxes``
    (G, 5) and ``counts`` (G,) bool: which ground-truth objects count at the level evaluated (the others are
    ignored). Boxes are (x, y, length, width, yaw)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    gt_boxes: torch.Tensor
    counts: torch.Tensor

    def __post_init__(self) -> None:
        check_bev_boxes(self.boxes, "boxes")
        check_bev_boxes(self.gt_boxes, "gt_boxes")
        if self.scores.shape != (len(self.boxes),) or self.counts.shape != (len(self.gt_boxes),):
            raise InputError(f"scores must be (D,) and counts (G,), got {tuple(self.scores.shape)} and "
                             f"{tuple(self.counts.shape)} for {len(self.boxes)} boxes, {len(self.gt_boxes)} objects")


def match_frame(frame: BevFrameResult, iou_threshold: float) -> tuple[list[float], list[bool]]:
    """Scores and TP flags of the frame's detections that are not dropped (see the module docstring)."""
    order = torch.argsort(frame.scores, descending=True, stable=True)
    if len(frame.gt_boxes) == 0:
        return frame.scores[order].tolist(), [False] * len(order)
    iou = rotated_iou(frame.boxes[order].double(), frame.gt_boxes.double()).cpu().numpy()  # greedy matching in NumPy
    counts = frame.counts.cpu().numpy().astype(bool)
    free = np.ones(len(frame.gt_boxes), dtype=bool)
    scores, flags = [], []
    for d, row in enumerate(iou):
        hit = None
        for care in (True, False):
            candidates = np.where(free & (counts == care) & (row >= iou_threshold))[0]
            if len(candidates):
                hit = candidates[row[candidates].argmax()]
                break
        if hit is not None:
            free[hit] = False
            if not counts[hit]:
                continue  # matched to an ignored object: neither TP nor FP
        scores.append(float(frame.scores[order[d]]))
        flags.append(hit is not None)
    return scores, flags


def interpolated_ap(scores: list[float], tp: list[bool], n_gt: int, recall_points: int = 11) -> float:
    """Mean interpolated precision at the recall points (11: 0, 0.1, ..., 1; 40: 1/40, ..., 1); NaN without
    ground truth, 0 without detections."""
    if recall_points not in (11, 40):
        raise InputError(f"recall_points must be 11 or 40, got {recall_points}")
    if n_gt == 0:
        return float("nan")
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(tp, dtype=np.float64)[order]
    tp_cum, fp_cum = np.cumsum(hits), np.cumsum(1 - hits)
    recall, precision = tp_cum / n_gt, tp_cum / (tp_cum + fp_cum)
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0, 1, 11) if recall_points == 11 else np.arange(1, 41) / 40
    idx = np.searchsorted(recall, points - 1e-12, side="left")
    return float(np.mean(np.where(idx < len(recall), best_after[np.minimum(idx, len(recall) - 1)], 0.0)))


def bev_average_precision(frames: list[BevFrameResult], iou_threshold: float = 0.5, recall_points: int = 11) -> float:
    """KITTI-style BEV AP in [0, 1] of one class at one difficulty over ``frames`` (A*3D arXiv:1909.07541)."""
    if not 0 < iou_threshold <= 1:
        raise InputError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    scores, flags, n_gt = [], [], 0
    for frame in frames:
        s, f = match_frame(frame, iou_threshold)
        scores += s
        flags += f
        n_gt += int(frame.counts.sum())
    return interpolated_ap(scores, flags, n_gt, recall_points)


def evaluate_kitti_bev(gt_root: str | Path, det_dir: str | Path, frames: list[str], cls: str = "Car",
                       iou_threshold: float = 0.5, rule: str = "points", recall_points: int = 11) -> dict[str, float]:
    """KITTI-style BEV AP {level: AP} of the detection label files ``det_dir/<frame>.txt`` (16 fields, with
    scores) against a KITTI-format folder ``gt_root`` (label_2, calib, velodyne; A*3D arXiv:1909.07541
    protocol). The point rule counts each object's LiDAR points in ``velodyne``; the kitti rule reads the 2D
    box height and truncation from the labels. A missing detection file means no detections."""
    from honed.data.kitti import read_calib, read_labels, read_velodyne
    from honed.data.kitti_boxes import lidar_boxes, points_in_boxes

    gt_root, det_dir = Path(gt_root), Path(det_dir)
    per_level: dict[str, list[BevFrameResult]] = {level: [] for level in LEVELS}
    for frame in frames:
        calib = read_calib(gt_root / "calib" / f"{frame}.txt")
        gt = [o for o in read_labels(gt_root / "label_2" / f"{frame}.txt") if o.type == cls]
        det_path = det_dir / f"{frame}.txt"
        dets = [o for o in (read_labels(det_path) if det_path.exists() else []) if o.type == cls]
        if any(o.score is None for o in dets):
            raise InputError(f"{det_path}: detection lines need a 16th field, the score")
        gt_boxes, det_boxes = (torch.tensor(lidar_boxes(objs, calib)[:, [0, 1, 3, 4, 6]]).reshape(-1, 5) for objs in (gt, dets))
        occluded = np.array([o.occluded for o in gt])
        points = points_in_boxes(read_velodyne(gt_root / "velodyne" / f"{frame}.bin"), lidar_boxes(gt, calib)) \
            if rule == "points" else None
        height = np.array([o.bbox[3] - o.bbox[1] for o in gt])
        truncated = np.array([o.truncated for o in gt])
        scores = torch.tensor([o.score for o in dets], dtype=torch.float64)
        for level in LEVELS:
            counts = torch.from_numpy(difficulty_mask(level, occluded, points, height, truncated, rule).astype(bool))
            per_level[level].append(BevFrameResult(det_boxes, scores, gt_boxes, counts))
    return {level: bev_average_precision(results, iou_threshold, recall_points) for level, results in per_level.items()}
