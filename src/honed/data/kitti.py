"""KITTI object-detection format: ``label_2`` text files, ``calib`` files and ``velodyne`` point clouds
(A*3D benchmark, arXiv:1909.07541, evaluates in the KITTI protocol; its synthetic BEV scenes are written
in this format and read back through it, so the same evaluation runs on real KITTI-format data).

- label line: ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry [score]`` (15 fields, a 16th
  score for detections): 2D box in image pixels, 3D size in metres, location in camera coordinates,
  rotation ``ry`` about the camera's y axis in [-pi, pi].
- calib: lines ``KEY: v1 v2 ...`` (P0-P3 3x4, R0_rect 3x3, Tr_velo_to_cam 3x4, Tr_imu_to_velo 3x4).
- velodyne ``.bin``: float32 (N, 4) rows x, y, z, reflectance.
A malformed line or file raises InputError naming the file and line.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from honed.core.atomic import atomic_write, atomic_write_text
from honed.core.errors import InputError

CALIB_SHAPES = {"P0": (3, 4), "P1": (3, 4), "P2": (3, 4), "P3": (3, 4), "R0_rect": (3, 3),
                "Tr_velo_to_cam": (3, 4), "Tr_imu_to_velo": (3, 4)}


@dataclass(frozen=True)
class KittiObject:
    """One object of a KITTI label file (see the module docstring for the fields' meaning)."""

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: tuple[float, float, float, float]
    dimensions: tuple[float, float, float]  # h, w, l
    location: tuple[float, float, float]  # x, y, z (camera coordinates)
    rotation_y: float
    score: float | None = None

    def to_line(self) -> str:
        fields = [self.type, f"{self.truncated:.2f}", str(self.occluded), f"{self.alpha:.2f}",
                  *(f"{v:.2f}" for v in self.bbox), *(f"{v:.2f}" for v in self.dimensions),
                  *(f"{v:.2f}" for v in self.location), f"{self.rotation_y:.2f}"]
        return " ".join(fields + ([f"{self.score:.4f}"] if self.score is not None else []))


def parse_label_line(line: str, where: str) -> KittiObject:
    """One label line -> KittiObject; InputError naming ``where`` (file:line) when malformed."""
    parts = line.split()
    if len(parts) not in (15, 16):
        raise InputError(f"{where}: a KITTI label line has 15 or 16 fields, got {len(parts)}")
    try:
        values = [float(v) for v in parts[1:]]
    except ValueError:
        raise InputError(f"{where}: fields 2-{len(parts)} must be numbers: {line.strip()!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{where}: NaN or inf in {line.strip()!r}")
    occluded = values[1]
    if occluded != int(occluded) or not 0 <= values[0] <= 1:
        raise InputError(f"{where}: truncated must lie in [0, 1] and occluded be an integer")
    x1, y1, x2, y2 = values[3:7]
    if x2 < x1 or y2 < y1 or min(values[7:10]) < 0 and parts[0] != "DontCare":
        raise InputError(f"{where}: the 2D box must be x1 <= x2, y1 <= y2 and the 3D size non-negative")
    return KittiObject(parts[0], values[0], int(occluded), values[2], (x1, y1, x2, y2), tuple(values[7:10]),
                       tuple(values[10:13]), values[13], values[14] if len(values) == 15 else None)


def read_labels(path: str | Path) -> list[KittiObject]:
    """The objects of a ``label_2`` file (blank lines skipped)."""
    path = Path(path)
    text = _read_text(path)
    return [parse_label_line(line, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def write_labels(path: str | Path, objects: list[KittiObject]) -> Path:
    """Write ``objects`` as a ``label_2`` file (atomically)."""
    return atomic_write_text(path, "".join(o.to_line() + "\n" for o in objects))


def read_calib(path: str | Path) -> dict[str, np.ndarray]:
    """The matrices of a calib file, reshaped to their KITTI shapes (unknown keys kept as flat arrays)."""
    path = Path(path)
    calib: dict[str, np.ndarray] = {}
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        where = f"{path}:{n}"
        if not sep:
            raise InputError(f"{where}: a calib line is 'KEY: v1 v2 ...', got {line.strip()!r}")
        try:
            values = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            raise InputError(f"{where}: {key} holds a value that is not a number") from None
        shape = CALIB_SHAPES.get(key.strip())
        if shape is not None and values.size != shape[0] * shape[1]:
            raise InputError(f"{where}: {key} needs {shape[0] * shape[1]} numbers, got {values.size}")
        calib[key.strip()] = values.reshape(shape) if shape else values
    return calib


def write_calib(path: str | Path, calib: dict[str, np.ndarray]) -> Path:
    """Write calibration matrices as ``KEY: v1 v2 ...`` lines (atomically)."""
    lines = [f"{key}: " + " ".join(f"{v:.12e}" for v in np.asarray(m, dtype=np.float64).ravel()) for key, m in calib.items()]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_velodyne(path: str | Path) -> np.ndarray:
    """A velodyne ``.bin`` point cloud as float32 (N, 4): x, y, z, reflectance."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) % 16:
        raise InputError(f"{path}: {len(data)} bytes is not a whole number of float32 (x, y, z, r) points")
    return np.frombuffer(data, dtype="<f4").reshape(-1, 4).copy()


def write_velodyne(path: str | Path, points: np.ndarray) -> Path:
    """Write (N, 4) points as a little-endian float32 ``.bin`` file (atomically)."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 4:
        raise InputError(f"points must be (N, 4) x, y, z, reflectance, got {points.shape}")
    if not np.isfinite(points).all():
        raise InputError("points contain NaN or inf")
    blob = points.astype("<f4").tobytes()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None
