"""Bird's-eye-view input and box coding for the CenterNet detector of the A*3D benchmark reproduction (Pham et
al., ICRA 2020, arXiv:1909.07541): LiDAR points to a BEV grid, LiDAR boxes to CenterNet targets and decoded
detections back to BEV boxes.

Grid: ``x_range`` (forward) by ``y_range`` (left) metres in square cells of ``cell`` metres; pixel row 0 is
the far edge (x = x_max) and column 0 the left edge (y = y_max). LiDAR channels (:func:`rasterize_points`):
occupancy log(1 + n) / log(1 + ``saturation``) clipped to 1, the highest point's height scaled from
``z_range`` to [0, 1] (0 where empty), and the mean reflectance. The fusion variant stacks a camera raster on
the same grid as a fourth channel.

Boxes: a BEV box (x, y, length, width, yaw) becomes, in pixels, its centre, length along its heading and
width across, and the heading's pixel angle phi. A box and its reverse are the same box, so the yaw head
learns (sin 2 phi, cos 2 phi) (``double_angle=True``), which has no jump where the heading flips.
"""
from dataclasses import dataclass

import numpy as np
import torch

from honed.core.errors import InputError
from honed.vision.centernet import CenterNetTargets, Detections, centernet_targets


@dataclass(frozen=True)
class BevGrid:
    """The BEV raster (see the module docstring)."""

    x_range: tuple[float, float] = (0.0, 64.0)
    y_range: tuple[float, float] = (-32.0, 32.0)
    cell: float = 0.5
    z_range: tuple[float, float] = (-2.0, 0.5)
    saturation: float = 16.0

    def __post_init__(self) -> None:
        if not (self.x_range[1] > self.x_range[0] and self.y_range[1] > self.y_range[0] and self.cell > 0
                and self.z_range[1] > self.z_range[0] and self.saturation > 0):
            raise InputError(f"bad BevGrid: {self}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(round((self.x_range[1] - self.x_range[0]) / self.cell)),
                int(round((self.y_range[1] - self.y_range[0]) / self.cell)))

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel (column u, row v) of LiDAR (x, y)."""
        return (self.y_range[1] - y) / self.cell, (self.x_range[1] - x) / self.cell

    def to_lidar(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x_range[1] - v * self.cell, self.y_range[1] - u * self.cell


def rasterize_points(points: np.ndarray, grid: BevGrid = BevGrid()) -> torch.Tensor:
    """LiDAR channels (3, H, W) float32 of ``points`` (P, 4) x, y, z, reflectance (A*3D arXiv:1909.07541
    reproduction); points outside the grid are dropped."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 4 or not np.isfinite(points).all():
        raise InputError(f"points must be a finite (P, 4) array of x, y, z, reflectance, got shape {points.shape}")
    h, w = grid.shape
    u, v = grid.to_pixels(points[:, 0], points[:, 1])
    col, row = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = row[inside] * w + col[inside]
    count = np.bincount(flat, minlength=h * w).astype(np.float64)
    height = np.zeros(h * w)
    scaled = ((points[inside, 2] - grid.z_range[0]) / (grid.z_range[1] - grid.z_range[0])).clip(0, 1)
    np.maximum.at(height, flat, scaled)
    reflect = np.bincount(flat, weights=points[inside, 3], minlength=h * w) / np.maximum(count, 1)
    occupancy = np.minimum(np.log1p(count) / np.log1p(grid.saturation), 1.0)
    return torch.from_numpy(np.stack([occupancy, height, reflect]).reshape(3, h, w).astype(np.float32))


def bev_targets(boxes: np.ndarray, grid: BevGrid, stride: int, max_objects: int = 64,
                double_angle: bool = True) -> CenterNetTargets:
    """CenterNet targets (one class) of BEV boxes (G, 5) x, y, length, width, yaw whose centres lie in the
    grid (others are dropped). A box too long for the image border at its centre is shrunk about its
    centre to fit (CenterNet's unrotated target box must lie inside the image)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    h, w = grid.shape
    u, v = grid.to_pixels(boxes[:, 0], boxes[:, 1])
    keep = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u, v, boxes = u[keep], v[keep], boxes[keep]
    half_l = np.minimum(boxes[:, 2] / grid.cell / 2, np.minimum(u, w - u))
    half_w = np.minimum(boxes[:, 3] / grid.cell / 2, np.minimum(v, h - v))
    phi = np.arctan2(-np.cos(boxes[:, 4]), -np.sin(boxes[:, 4]))
    xyxy = np.stack([u - half_l, v - half_w, u + half_l, v + half_w], 1)
    good = (half_l > 0) & (half_w > 0)
    yaws = torch.tensor((2 * phi if double_angle else phi)[good], dtype=torch.float32)
    return centernet_targets(torch.tensor(xyxy[good], dtype=torch.float32), torch.zeros(int(good.sum()), dtype=torch.long),
                             1, (h, w), stride, max_objects=max_objects, yaws=yaws)


def detections_to_bev(detections: Detections, grid: BevGrid, double_angle: bool = True) -> torch.Tensor:
    """BEV boxes (D, 5) x, y, length, width, yaw of decoded detections (pixel boxes + yaw head)."""
    boxes = detections.boxes.detach().double().cpu()
    u, v = ((boxes[:, 0] + boxes[:, 2]) / 2).numpy(), ((boxes[:, 1] + boxes[:, 3]) / 2).numpy()
    length = ((boxes[:, 2] - boxes[:, 0]).clamp_min(1e-3) * grid.cell).numpy()
    width = ((boxes[:, 3] - boxes[:, 1]).clamp_min(1e-3) * grid.cell).numpy()
    phi = detections.yaws.detach().double().cpu().numpy() / (2 if double_angle else 1)
    x, y = grid.to_lidar(u, v)
    yaw = np.arctan2(-np.cos(phi), -np.sin(phi))
    return torch.tensor(np.stack([x, y, length, width, yaw], 1).reshape(-1, 5))
