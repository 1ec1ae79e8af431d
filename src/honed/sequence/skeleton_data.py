"""Synthetic 2D->3D skeleton motion windows for Skeleton-Graph (Skeleton-Graph: Long-Term 3D Motion
Prediction From 2D Observations Using Deep Spatio-Temporal Graph CNNs, arXiv:2109.10257).

The GTA-IM / PROX recordings the paper uses are not shippable offline, so this module generates the
card's small-scale stand-in (numpy only, seeded):

* the GTA-IM 21-joint limb tree (:data:`GTA_IM_LIMBS`, 20 limbs, torso joint 13) with FIXED bone lengths;
* clips of ``t_in + t_out`` frames at ``fps`` (default 5 fps, 5 + 10 frames) of three kinds: walking
  (root along a heading at 0.5-1.5 m/s, slow heading drift), turning (fast heading change) and
  sitting-like (the walk slows while the pelvis drops and hips/knees flex); sinusoidal hip / knee /
  shoulder / elbow swings with random phase and amplitude; 5 mm joint jitter;
* a camera 3-6 m from the person, looking at them horizontally (yaw jitter), pinhole projection with
  f = 500 px and the principal point at the centre of a 1920 x 1080 image.

Coordinates: camera frame x right, y down, z forward (depth), metres; 2D in pixels.
Window shapes: ``x2d`` (N, t_in, 21, 2) pixels (input), ``y3d`` (N, t_out, 21, 3) metres (target),
``x3d`` (N, t_in, 21, 3) the observed frames' 3D (for analysis / the analytic baseline's calibration).
"""
from dataclasses import dataclass

import numpy as np
import torch

from honed.core.errors import InputError, check_count, check_number

NUM_JOINTS = 21
TORSO_JOINT = 13  # spine3, the "path" joint of GTA-IM
PELVIS = 14
# (parent, child): head-neck, right arm, left arm, spine, right leg, left leg (GTA-IM joint order)
GTA_IM_LIMBS = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (1, 6), (6, 7), (7, 8), (8, 9), (1, 10),
                (10, 11), (11, 12), (12, 13), (13, 14), (14, 15), (15, 16), (16, 17), (14, 18),
                (18, 19), (19, 20))
FOCAL_PX = 500.0
IMAGE_SIZE = (1920, 1080)  # (width, height): principal point at the centre
MOTIONS = ("walk", "turn", "sit")
# bone lengths in metres (fixed for every clip)
SPINE_STEP, NECK_LEN, HEAD_LEN = 0.12, 0.10, 0.15
THIGH, SHIN, UPPER_ARM, FOREARM = 0.45, 0.43, 0.30, 0.27
HIP_OFFSET = np.array([0.10, -0.05, 0.0])
CLAVICLE_OFFSET, SHOULDER_OFFSET = np.array([0.08, -0.02, 0.0]), np.array([0.10, -0.02, 0.0])
STAND_PELVIS_HEIGHT, SIT_DROP = 0.95, 0.45


def skeleton_adjacency(limbs=GTA_IM_LIMBS, num_joints: int = NUM_JOINTS,
                       device: str | torch.device | None = None) -> torch.Tensor:
    """Skeleton-Graph (arXiv:2109.10257) adjacency: the raw symmetric 0/1 limb matrix (J, J), no
    self-loops, not normalised (the paper's loader computes a Laplacian but never uses it)."""
    A = torch.zeros(num_joints, num_joints, device=device)
    for i, j in limbs:
        if not (0 <= i < num_joints and 0 <= j < num_joints) or i == j:
            raise InputError(f"limb ({i}, {j}) is not a pair of distinct joints in [0, {num_joints})")
        A[i, j] = A[j, i] = 1.0
    return A


def _principal_point() -> tuple[float, float]:
    return IMAGE_SIZE[0] / 2, IMAGE_SIZE[1] / 2


def project(points: torch.Tensor, focal: float = FOCAL_PX) -> torch.Tensor:
    """Skeleton-Graph (arXiv:2109.10257) data: pinhole projection of camera-frame points (..., 3),
    metres with depth z > 0, to pixels (..., 2): u = f x / z + cx, v = f y / z + cy."""
    if points.shape[-1] != 3:
        raise InputError(f"points must end in 3 coordinates (x, y, z), got shape {tuple(points.shape)}")
    if not bool((points[..., 2] > 0).all()):
        raise InputError("every point must lie in front of the camera (z > 0)")
    cx, cy = _principal_point()
    z = points[..., 2]
    return torch.stack((focal * points[..., 0] / z + cx, focal * points[..., 1] / z + cy), dim=-1)


def unproject(pixels: torch.Tensor, depth: torch.Tensor, focal: float = FOCAL_PX) -> torch.Tensor:
    """Skeleton-Graph (arXiv:2109.10257) data: inverse of :func:`project`; pixels (..., 2) and depth
    (...) in metres (> 0) -> camera-frame points (..., 3)."""
    if pixels.shape[-1] != 2 or depth.shape != pixels.shape[:-1]:
        raise InputError(f"need pixels (..., 2) and depth (...), got {tuple(pixels.shape)} and {tuple(depth.shape)}")
    if not bool((depth > 0).all()):
        raise InputError("depth must be > 0")
    cx, cy = _principal_point()
    x = (pixels[..., 0] - cx) * depth / focal
    y = (pixels[..., 1] - cy) * depth / focal
    return torch.stack((x, y, depth), dim=-1)


def _down(angle: np.ndarray) -> np.ndarray:
    """Unit vector pointing down, swung forward by ``angle`` (rad) in the sagittal plane: (..., 3)."""
    return np.stack((np.zeros_like(angle), -np.cos(angle), np.sin(angle)), axis=-1)


def _rotate_x(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate (..., 3) vectors about the body x axis (lean forward for positive angle)."""
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    y, z = v[..., 1:2], v[..., 2:3]
    return np.concatenate((v[..., 0:1], c * y - s * z, s * y + c * z), axis=-1)


def body_pose(hip: np.ndarray, knee: np.ndarray, shoulder: np.ndarray, elbow: np.ndarray,
              lean: np.ndarray) -> np.ndarray:
    """Forward kinematics in the body frame (x left, y up, z forward, pelvis at the origin).

    Each angle array is (..., 2) for (right, left) except ``lean`` (...); returns (..., 21, 3).
    Bone lengths are the module constants, so every pose has the same limb lengths."""
    shape = lean.shape
    P = np.zeros(shape + (NUM_JOINTS, 3))
    up = np.array([0.0, 1.0, 0.0])
    chain = (PELVIS, 13, 12, 11, 10)
    for parent, child in zip(chain[:-1], chain[1:]):
        P[..., child, :] = P[..., parent, :] + SPINE_STEP * up
    P[..., 1, :] = P[..., 10, :] + NECK_LEN * up
    P[..., 0, :] = P[..., 1, :] + HEAD_LEN * up
    for side, (clav, sho, elb, wri, sign) in enumerate(((2, 3, 4, 5, -1.0), (6, 7, 8, 9, 1.0))):
        flip = np.array([sign, 1.0, 1.0])
        P[..., clav, :] = P[..., 1, :] + flip * CLAVICLE_OFFSET
        P[..., sho, :] = P[..., clav, :] + flip * SHOULDER_OFFSET
        P[..., elb, :] = P[..., sho, :] + UPPER_ARM * _down(shoulder[..., side])
        P[..., wri, :] = P[..., elb, :] + FOREARM * _down(shoulder[..., side] + elbow[..., side])
    upper = [j for j in range(NUM_JOINTS) if j not in (PELVIS, 15, 16, 17, 18, 19, 20)]
    P[..., upper, :] = _rotate_x(P[..., upper, :], lean[..., None])
    for side, (h, k, a, sign) in enumerate(((15, 16, 17, -1.0), (18, 19, 20, 1.0))):
        P[..., h, :] = np.array([sign, 1.0, 1.0]) * HIP_OFFSET
        P[..., k, :] = P[..., h, :] + THIGH * _down(hip[..., side])
        P[..., a, :] = P[..., k, :] + SHIN * _down(hip[..., side] - knee[..., side])
    return P


@dataclass
class SkeletonWindows:
    """Skeleton-Graph (arXiv:2109.10257) windows: ``x2d`` (N, t_in, J, 2) pixels, ``y3d`` (N, t_out, J, 3)
    metres (camera frame), ``x3d`` (N, t_in, J, 3) metres, ``motion`` (N,) index into :data:`MOTIONS`."""

    x2d: torch.Tensor
    y3d: torch.Tensor
    x3d: torch.Tensor
    motion: torch.Tensor

    def __len__(self) -> int:
        return len(self.x2d)


def _motion_angles(kind: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-clip gait angles, root speed, heading and pelvis height; every array is (N, T[, 2])."""
    n = len(kind)
    u = lambda lo, hi: rng.uniform(lo, hi, size=(n, 1))  # noqa: E731 - one draw per clip
    speed = u(0.5, 1.5)
    phase = 2 * np.pi * (u(0.7, 1.1) + 0.3 * (speed - 0.5)) * t + u(0, 2 * np.pi)
    sit = (kind == 2)[:, None]
    # sitting-like clips: a smooth 0 -> 1 progress s(t) centred inside the window
    progress = np.where(sit, 1 / (1 + np.exp(-(t - u(0.6, 2.4)) / u(0.15, 0.35))), 0.0)
    walking = 1.0 - progress
    turn_rate = np.where((kind == 1)[:, None], rng.choice([-1.0, 1.0], size=(n, 1)) * u(0.4, 0.9), u(-0.12, 0.12))
    swing = np.sin(phase)
    hip_amp, knee_amp, arm_amp = u(0.25, 0.55), u(0.4, 0.9), u(0.15, 0.45)
    hip = walking[..., None] * np.stack((hip_amp * swing, -hip_amp * swing), -1) + 1.5 * progress[..., None]
    knee_swing = np.stack((np.maximum(0, np.sin(phase + 1.2)), np.maximum(0, np.sin(phase + np.pi + 1.2))), -1)
    knee = walking[..., None] * knee_amp[..., None] * knee_swing + 1.6 * progress[..., None]
    shoulder = walking[..., None] * np.stack((-arm_amp * swing, arm_amp * swing), -1)
    elbow = np.stack((u(0.1, 0.5), u(0.1, 0.5)), -1) + 0.2 * walking[..., None] * np.stack((swing, -swing), -1)
    elbow = elbow + 0.6 * progress[..., None]
    lean = u(0.0, 0.1) + 0.6 * progress * (1 - progress) + 0.1 * progress  # lean in while sitting down
    height = STAND_PELVIS_HEIGHT + 0.02 * walking * np.cos(2 * phase) - SIT_DROP * progress
    return {"hip": hip, "knee": knee, "shoulder": shoulder, "elbow": np.maximum(elbow, 0.0), "lean": lean,
            "speed": speed * walking, "heading": u(0, 2 * np.pi) + turn_rate * t, "height": height}


def _root_path(speed: np.ndarray, heading: np.ndarray, dt: float) -> np.ndarray:
    """Ground-plane root positions (N, T, 2) as (x, z), starting at the origin; midpoint heading per step."""
    mid = 0.5 * (heading[:, 1:] + heading[:, :-1])
    step = 0.5 * (speed[:, 1:] + speed[:, :-1]) * dt
    dx, dz = step * np.sin(mid), step * np.cos(mid)
    start = np.zeros((len(speed), 1))
    return np.stack((np.concatenate((start, np.cumsum(dx, 1)), 1), np.concatenate((start, np.cumsum(dz, 1)), 1)), -1)


def _to_camera(world: np.ndarray, rng: np.random.Generator, distance: tuple[float, float]) -> np.ndarray:
    """World (N, T, J, 3) (y up) -> camera frame (x right, y down, z forward) of a camera placed
    ``distance`` metres from the clip's start, at 1.0-1.8 m height, looking at the start (yaw jitter)."""
    n = len(world)
    around = rng.uniform(0, 2 * np.pi, n)
    dist = rng.uniform(*distance, n)
    centre = np.stack((dist * np.sin(around), rng.uniform(1.0, 1.8, n), dist * np.cos(around)), -1)
    look = around + np.pi + rng.uniform(-0.15, 0.15, n)
    fwd = np.stack((np.sin(look), np.zeros(n), np.cos(look)), -1)
    down = np.broadcast_to(np.array([0.0, -1.0, 0.0]), fwd.shape)
    right = np.cross(down, fwd)
    rel = world - centre[:, None, None, :]
    axes = np.stack((right, down, fwd), 1)  # (N, 3, 3): rows are camera axes in world coordinates
    return np.einsum("nij,ntkj->ntki", axes, rel)


def simulate_clips(n: int, frames: int, rng: np.random.Generator, fps: float = 5.0,
                   distance: tuple[float, float] = (3.0, 6.0), jitter: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """Skeleton-Graph (arXiv:2109.10257) stand-in data: ``n`` clips of ``frames`` frames -> camera-frame
    joints (n, frames, 21, 3) in metres and the motion kind (n,) (0 walk, 1 turn, 2 sit)."""
    kind = rng.integers(0, len(MOTIONS), n)
    t = np.arange(frames)[None, :] / fps
    a = _motion_angles(kind, t, rng)
    body = body_pose(a["hip"], a["knee"], a["shoulder"], a["elbow"], a["lean"])
    c, s = np.cos(a["heading"])[..., None], np.sin(a["heading"])[..., None]
    bx, by, bz = body[..., 0], body[..., 1], body[..., 2]
    root = _root_path(a["speed"], a["heading"], 1.0 / fps)
    world = np.stack((c * bx + s * bz + root[..., 0:1], by + a["height"][..., None],
                      -s * bx + c * bz + root[..., 1:2]), -1)
    world = world + jitter * rng.standard_normal(world.shape)
    return _to_camera(world, rng, distance), kind


def make_skeleton_windows(n: int, seed: int, t_in: int = 5, t_out: int = 10, fps: float = 5.0,
                          distance: tuple[float, float] = (3.0, 6.0), pixel_noise: float = 1.0,
                          min_depth: float = 1.0, device: str | torch.device | None = None) -> SkeletonWindows:
    """Skeleton-Graph (arXiv:2109.10257) synthetic windows (seeded): ``n`` independent clips of
    ``t_in + t_out`` frames, projected with f = 500 px; clips that come closer than ``min_depth`` metres
    to the camera are redrawn. ``pixel_noise`` (px std) is added to the 2D input only."""
    check_count(n, "n"), check_count(t_in, "t_in"), check_count(t_out, "t_out")
    check_number(fps, "fps", strict=True), check_number(pixel_noise, "pixel_noise")
    if not 0 < min_depth < distance[0] <= distance[1]:
        raise InputError(f"need 0 < min_depth < distance[0] <= distance[1], got {min_depth}, {distance}")
    rng = np.random.default_rng(seed)
    kept_pts, kept_kind, have = [], [], 0
    while have < n:
        pts, kind = simulate_clips(max(2 * (n - have), 16), t_in + t_out, rng, fps, distance)
        ok = pts[..., 2].min(axis=(1, 2)) > min_depth
        kept_pts.append(pts[ok]), kept_kind.append(kind[ok])
        have += int(ok.sum())
    pts = torch.tensor(np.concatenate(kept_pts)[:n], dtype=torch.float32)
    kind = torch.tensor(np.concatenate(kept_kind)[:n], dtype=torch.int64)
    x2d = project(pts[:, :t_in])
    gen = torch.Generator().manual_seed(seed + 1)
    x2d = x2d + pixel_noise * torch.randn(x2d.shape, generator=gen)
    return SkeletonWindows(x2d.to(device), pts[:, t_in:].to(device), pts[:, :t_in].to(device), kind.to(device))
