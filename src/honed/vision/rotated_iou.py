"""Rotated (bird's-eye-view) box IoU in plain torch, for the KITTI-style BEV evaluation of the A*3D benchmark
(Pham et al., ICRA 2020, arXiv:1909.07541).

A BEV box is (cx, cy, length, width, yaw): centre, size along and across its heading, and the heading's
angle in radians from the x axis (counter-clockwise). The intersection of two convex quadrilaterals is the
convex polygon spanned by the corners of each that lie inside the other and the crossings of their edges;
its area comes from the shoelace formula over those points sorted by angle around their mean. Computed
for all pairs at once in float64; shapely's polygon intersection is the test oracle.
"""
import torch

from honed.core.errors import InputError

UNIT_CORNERS = ((0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5))  # counter-clockwise


def check_bev_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    """InputError unless ``boxes`` is (N, 5) finite (cx, cy, length, width, yaw) with positive sizes."""
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise InputError(f"{name} must be an (N, 5) tensor of (cx, cy, length, width, yaw), got {shape}")
    if not torch.isfinite(boxes).all():
        raise InputError(f"{name} contain NaN or inf")
    if (boxes[:, 2:4] <= 0).any():
        raise InputError(f"{name} must have positive length and width")


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """Corners (N, 4, 2), counter-clockwise, of BEV boxes (N, 5) (A*3D benchmark, arXiv:1909.07541)."""
    unit = torch.tensor(UNIT_CORNERS, dtype=boxes.dtype, device=boxes.device)
    local = unit[None] * boxes[:, None, 2:4]
    cos, sin = boxes[:, 4].cos()[:, None], boxes[:, 4].sin()[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin + boxes[:, None, 0]
    y = local[..., 0] * sin + local[..., 1] * cos + boxes[:, None, 1]
    return torch.stack([x, y], -1)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: torch.Tensor, polygon: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, M, P) whether each point (N, M, P, 2) lies in the convex CCW ``polygon`` (N, M, 4, 2)."""
    edges = polygon.roll(-1, dims=-2) - polygon  # (N, M, 4, 2)
    rel = points[..., :, None, :] - polygon[..., None, :, :]  # (N, M, P, 4, 2)
    return (_cross(edges[..., None, :, :], rel) >= -eps).all(-1)


def _edge_crossings(a: torch.Tensor, b: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Crossing points (N, M, 16, 2) of the 4 x 4 edge pairs of polygons a, b (N, M, 4, 2) and their mask."""
    p, r = a, a.roll(-1, dims=-2) - a
    q, s = b, b.roll(-1, dims=-2) - b
    p, r = p[..., :, None, :], r[..., :, None, :]
    q, s = q[..., None, :, :], s[..., None, :, :]
    denom = _cross(r, s)  # (N, M, 4, 4)
    safe = torch.where(denom.abs() > eps, denom, torch.ones_like(denom))
    t, u = _cross(q - p, s) / safe, _cross(q - p, r) / safe
    valid = (denom.abs() > eps) & (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    points = p + t[..., None] * r
    return points.flatten(-3, -2), valid.flatten(-2)


def intersection_area(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Areas (N, M) of the intersections of BEV boxes a (N, 5) and b (M, 5)."""
    ca, cb = box_corners(a.double()), box_corners(b.double())
    n, m = len(a), len(b)
    ca, cb = ca[:, None].expand(n, m, 4, 2), cb[None].expand(n, m, 4, 2)
    crossing, crossing_ok = _edge_crossings(ca, cb, eps)
    points = torch.cat([ca, cb, crossing], -2)  # (N, M, 24, 2)
    valid = torch.cat([_inside(ca, cb, eps), _inside(cb, ca, eps), crossing_ok], -1)
    count = valid.sum(-1, keepdim=True)
    centre = (points * valid[..., None]).sum(-2) / count.clamp_min(1)
    angle = torch.atan2(points[..., 1] - centre[..., None, 1], points[..., 0] - centre[..., None, 0])
    order = torch.where(valid, angle, torch.full_like(angle, float("inf"))).argsort(-1)
    points = points.gather(-2, order[..., None].expand(-1, -1, -1, 2))
    valid = valid.gather(-1, order)
    points = torch.where(valid[..., None], points, points[..., :1, :])  # padding repeats the first point
    area = 0.5 * _cross(points, points.roll(-1, dims=-2)).sum(-1).abs()
    return torch.where(count[..., 0] >= 3, area, torch.zeros_like(area))


def rotated_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (N, M) in [0, 1] of BEV boxes ``a`` (N, 5) and ``b`` (M, 5), rows (cx, cy, length, width,
    yaw) (A*3D benchmark, arXiv:1909.07541). Follows the device of ``a``; returned in ``a``'s dtype."""
    check_bev_boxes(a, "a")
    check_bev_boxes(b, "b")
    if len(a) == 0 or len(b) == 0:
        return torch.zeros(len(a), len(b), dtype=a.dtype, device=a.device)
    inter = intersection_area(a, b.to(a.device))
    area_a, area_b = (a[:, 2] * a[:, 3]).double(), (b[:, 2] * b[:, 3]).double().to(a.device)
    union = area_a[:, None] + area_b[None, :] - inter
    return (inter / union).clamp(0, 1).to(a.dtype)
