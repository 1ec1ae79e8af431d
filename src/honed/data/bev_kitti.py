"""The synthetic BEV scenes of the A*3D reproduction (arXiv:1909.07541) as a KITTI-format folder, written and
read back through :mod:`honed.data.kitti`, so the benchmark's evaluation runs unchanged on real KITTI-format
data.

Layout under ``root``: ``velodyne/NNNNNN.bin``, ``label_2/NNNNNN.txt``, ``calib/NNNNNN.txt`` (KITTI files; a
KITTI-like camera P2, identity R0_rect, the standard velodyne-to-camera axes), ``camera_bev/{day,night}/
NNNNNN.png`` (the camera raster already on the BEV grid: not a KITTI folder) and ``frames.json`` (frame
attributes: density level and object count, as A*3D's metadata; written last, so its presence marks a
complete folder).
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from honed.core.atomic import atomic_write, atomic_write_text
from honed.core.errors import InputError
from honed.data.bev_scenes import TIMES, BevScene, SceneSpec, render_camera
from honed.data.kitti import read_calib, read_labels, read_velodyne, write_calib, write_labels, write_velodyne
from honed.data.kitti_boxes import kitti_objects, lidar_boxes

IMAGE_WH = (1242, 375)
FOCAL, CX, CY = 721.5377, 609.5593, 172.854  # KITTI-like intrinsics of the virtual camera


def synthetic_calib() -> dict[str, np.ndarray]:
    """Calibration of the synthetic frames: camera at the LiDAR origin with KITTI's axes."""
    p = np.array([[FOCAL, 0, CX, 0], [0, FOCAL, CY, 0], [0, 0, 1, 0]], dtype=np.float64)
    tr = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]], dtype=np.float64)
    return {"P0": p, "P1": p, "P2": p, "P3": p, "R0_rect": np.eye(3), "Tr_velo_to_cam": tr,
            "Tr_imu_to_velo": np.c_[np.eye(3), np.zeros(3)]}


@dataclass
class KittiFrame:
    """A frame read back: object ``types`` (G,), LiDAR ``boxes`` (G, 7), ``occluded`` (G,) and ``truncated``
    (G,) from label_2, the ``points`` (P, 4) from velodyne and, when present, ``camera`` {time: (S, S)}."""

    frame: str
    types: list[str]
    boxes: np.ndarray
    occluded: np.ndarray
    truncated: np.ndarray
    points: np.ndarray
    camera: dict[str, np.ndarray]


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image  # pillow ships with matplotlib, a core dependency

    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"), dtype=np.float32) / 255
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: not a readable PNG ({err})") from None


def write_frame(root: Path, frame: str, scene: BevScene, spec: SceneSpec) -> None:
    """One scene as KITTI files plus its day and night camera rasters."""
    calib = synthetic_calib()
    objects = kitti_objects(scene.types, scene.boxes, calib, IMAGE_WH, occluded=scene.occluded.tolist())
    write_velodyne(root / "velodyne" / f"{frame}.bin", scene.points)
    write_labels(root / "label_2" / f"{frame}.txt", objects)
    write_calib(root / "calib" / f"{frame}.txt", calib)
    for time, raster in render_camera(scene, spec).items():
        write_png(root / "camera_bev" / time / f"{frame}.png", raster)


def write_bev_dataset(root: str | Path, scenes: list[BevScene], spec: SceneSpec = SceneSpec(), start: int = 0) -> Path:
    """Write ``scenes`` as frames ``start``, ``start + 1``, ... under ``root`` and then ``frames.json``."""
    root = Path(root)
    index = []
    for k, scene in enumerate(scenes):
        frame = f"{start + k:06d}"
        write_frame(root, frame, scene, spec)
        index.append({"frame": frame, "density": scene.density, "objects": len(scene.types)})
    atomic_write_text(root / "frames.json", json.dumps({"spec": asdict(spec), "frames": index}, indent=1))
    return root


def read_frame_index(root: str | Path) -> list[dict] | None:
    """The ``frames`` of ``root/frames.json`` (None when the folder is incomplete or absent)."""
    path = Path(root) / "frames.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["frames"]
    except (ValueError, KeyError) as err:
        raise InputError(f"{path}: not a frame index ({err})") from None


def read_frame(root: str | Path, frame: str, times: tuple[str, ...] = TIMES) -> KittiFrame:
    """Frame ``frame`` of a KITTI-format folder through :mod:`honed.data.kitti` (labels, calib, velodyne),
    with the camera rasters of ``times`` when the folder has them (real KITTI data has none)."""
    root = Path(root)
    objects = read_labels(root / "label_2" / f"{frame}.txt")
    calib = read_calib(root / "calib" / f"{frame}.txt")
    kept = [o for o in objects if o.type != "DontCare"]
    camera = {t: read_png(root / "camera_bev" / t / f"{frame}.png") for t in times
              if (root / "camera_bev" / t / f"{frame}.png").exists()}
    return KittiFrame(frame, [o.type for o in kept], lidar_boxes(kept, calib),
                      np.array([o.occluded for o in kept], dtype=np.int64),
                      np.array([o.truncated for o in kept]), read_velodyne(root / "velodyne" / f"{frame}.bin"), camera)
