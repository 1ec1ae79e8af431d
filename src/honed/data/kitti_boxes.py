"""KITTI 3D boxes between the label files' camera frame and the LiDAR (velodyne) frame, for the A*3D
benchmark's BEV evaluation (Pham et al., ICRA 2020, arXiv:1909.07541), which runs in the KITTI protocol.

A LiDAR box is (x, y, z, length, width, height, yaw): the box CENTRE in velodyne coordinates (x forward,
y left, z up), its size along / across / up, and the heading's angle from the x axis about z. A KITTI label
holds the BOTTOM centre in rectified camera coordinates (x right, y down, z forward), dimensions (h, w, l)
and ``rotation_y`` about the camera's y axis; the calib's ``R0_rect`` and ``Tr_velo_to_cam`` relate the two
(the heading is carried through the same rotation, so any calibration works, not only KITTI's axes).
"""
import math

import numpy as np

from honed.core.errors import InputError
from honed.data.kitti import KittiObject


def velo_to_rect(calib: dict[str, np.ndarray]) -> np.ndarray:
    """The 4x4 transform from velodyne to rectified camera coordinates: R0_rect @ Tr_velo_to_cam."""
    for key in ("R0_rect", "Tr_velo_to_cam"):
        if key not in calib:
            raise InputError(f"calib lacks {key} (needed to relate camera and LiDAR boxes)")
    r0, tr = np.eye(4), np.eye(4)
    r0[:3, :3] = np.asarray(calib["R0_rect"], dtype=np.float64).reshape(3, 3)
    tr[:3, :4] = np.asarray(calib["Tr_velo_to_cam"], dtype=np.float64).reshape(3, 4)
    return r0 @ tr


def lidar_boxes(objects: list[KittiObject], calib: dict[str, np.ndarray]) -> np.ndarray:
    """LiDAR boxes (G, 7) of KITTI label objects (A*3D arXiv:1909.07541 BEV evaluation)."""
    if not objects:
        return np.zeros((0, 7))
    to_velo = np.linalg.inv(velo_to_rect(calib))
    loc = np.array([o.location for o in objects], dtype=np.float64)
    h, w, length = (np.array([o.dimensions[i] for o in objects]) for i in range(3))
    ry = np.array([o.rotation_y for o in objects])
    bottom = (to_velo @ np.c_[loc, np.ones(len(loc))].T).T[:, :3]
    up = to_velo[:3, :3] @ np.array([0.0, -1.0, 0.0])  # camera "up" (-y) in velodyne axes
    heading = (to_velo[:3, :3] @ np.stack([np.cos(ry), np.zeros_like(ry), -np.sin(ry)])).T
    centre = bottom + up[None] * (h / 2)[:, None]
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    return np.c_[centre, length, w, h, yaw]


def label_fields(boxes: np.ndarray, calib: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame label fields of LiDAR boxes (G, 7): bottom-centre locations (G, 3), rotation_y (G,)
    in [-pi, pi] and the observation angle alpha (G,)."""
    to_rect = velo_to_rect(calib)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    up = np.array([0.0, 0.0, 1.0])
    bottom = boxes[:, :3] - up[None] * (boxes[:, 5] / 2)[:, None]
    loc = (to_rect @ np.c_[bottom, np.ones(len(bottom))].T).T[:, :3]
    heading = (to_rect[:3, :3] @ np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.zeros(len(boxes))])).T
    ry = np.arctan2(-heading[:, 2], heading[:, 0])
    alpha = np.arctan2(np.sin(ry - np.arctan2(loc[:, 0], loc[:, 2])), np.cos(ry - np.arctan2(loc[:, 0], loc[:, 2])))
    return loc, ry, alpha


def box_corners_3d(boxes: np.ndarray) -> np.ndarray:
    """The 8 corners (G, 8, 3) of LiDAR boxes (G, 7)."""
    signs = np.array([[sx, sy, sz] for sx in (0.5, -0.5) for sy in (0.5, -0.5) for sz in (0.5, -0.5)])
    local = signs[None] * boxes[:, None, 3:6]
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return np.stack([x, y, local[..., 2]], -1) + boxes[:, None, :3]


def image_boxes(boxes: np.ndarray, calib: dict[str, np.ndarray], image_wh: tuple[int, int]) -> np.ndarray:
    """2D boxes (G, 4) x1 y1 x2 y2: the P2 projection of each LiDAR box's corners in front of the camera,
    clipped to the image; all zeros for a box wholly behind the camera."""
    if "P2" not in calib:
        raise InputError("calib lacks P2 (needed to project boxes into the image)")
    corners = box_corners_3d(np.asarray(boxes, dtype=np.float64).reshape(-1, 7))
    rect = velo_to_rect(calib)
    out = np.zeros((len(corners), 4))
    for g, c in enumerate(corners):
        cam = (rect @ np.c_[c, np.ones(8)].T)[:3]
        front = cam[2] > 0.1
        if not front.any():
            continue
        pix = np.asarray(calib["P2"]).reshape(3, 4) @ np.r_[cam[:, front], np.ones((1, int(front.sum())))]
        u, v = pix[0] / pix[2], pix[1] / pix[2]
        out[g] = [np.clip(u.min(), 0, image_wh[0]), np.clip(v.min(), 0, image_wh[1]),
                  np.clip(u.max(), 0, image_wh[0]), np.clip(v.max(), 0, image_wh[1])]
    return out


def kitti_objects(types: list[str], boxes: np.ndarray, calib: dict[str, np.ndarray], image_wh: tuple[int, int],
                  occluded: list[int] | None = None, truncated: list[float] | None = None,
                  scores: list[float] | None = None) -> list[KittiObject]:
    """KITTI label objects of LiDAR boxes (G, 7) with their ``types`` (A*3D arXiv:1909.07541 format):
    camera-frame location / rotation_y / alpha, the projected 2D box, and the given occlusion level,
    truncation and (for detections) score."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    if len(types) != len(boxes):
        raise InputError(f"{len(types)} types for {len(boxes)} boxes")
    loc, ry, alpha = label_fields(boxes, calib)
    bbox = image_boxes(boxes, calib, image_wh)
    occluded = occluded if occluded is not None else [0] * len(boxes)
    truncated = truncated if truncated is not None else [0.0] * len(boxes)
    return [KittiObject(t, float(truncated[g]), int(occluded[g]), float(alpha[g]), tuple(float(v) for v in bbox[g]),
                        (float(boxes[g, 5]), float(boxes[g, 4]), float(boxes[g, 3])), tuple(float(v) for v in loc[g]),
                        float(math.remainder(ry[g], 2 * math.pi)), None if scores is None else float(scores[g]))
            for g, t in enumerate(types)]


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """How many of ``points`` (P, >=3, velodyne x y z ...) lie inside each LiDAR box (G, 7): the A*3D
    benchmark's points-inside-box count (arXiv:1909.07541)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    counts = np.zeros(len(boxes), dtype=np.int64)
    for g, (x, y, z, length, width, height, yaw) in enumerate(boxes):
        d = xyz - (x, y, z)
        near = (np.abs(d[:, 2]) <= height / 2) & (np.abs(d[:, 0]) <= length + width) & (np.abs(d[:, 1]) <= length + width)
        u = d[near, 0] * math.cos(yaw) + d[near, 1] * math.sin(yaw)
        v = -d[near, 0] * math.sin(yaw) + d[near, 1] * math.cos(yaw)
        counts[g] = int(((np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)).sum())
    return counts
