"""A*3D benchmark pieces (arXiv:1909.07541) used as a user would: a KITTI-format folder written here, a
user's own BEV detector (not honed's CenterNet) trained in a plain loop on rasterised LiDAR, its detections
written as KITTI result files and scored by evaluate_kitti_bev; malformed files give one error naming the
file and line."""
import numpy as np
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.data.bev_kitti import read_frame, read_frame_index, synthetic_calib, write_bev_dataset
from honed.data.bev_scenes import SceneSpec, make_bev_scene
from honed.data.kitti import write_labels
from honed.data.kitti_boxes import kitti_objects
from honed.vision.bev_ap import evaluate_kitti_bev
from honed.vision.bev_detector import BevGrid, bev_targets, detections_to_bev, rasterize_points
from honed.vision.centernet import centernet_loss, decode_detections, stack_targets

SPEC, GRID, STRIDE = SceneSpec(area=32.0, cell=1.0), BevGrid(x_range=(0.0, 32.0), y_range=(-16.0, 16.0), cell=1.0), 2


class UserBevNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Conv2d(16, c, 1) for k, c in (("heatmap", 1), ("size", 2), ("offset", 2), ("yaw", 2))})

    def forward(self, x):
        f = self.body(x)
        return {k: h(f) for k, h in self.heads.items()}


def test_user_detector_trains_and_is_scored_from_kitti_files(tmp_path):
    rng = np.random.default_rng(0)
    write_bev_dataset(tmp_path / "data", [make_bev_scene(rng, "low", SPEC) for _ in range(6)], SPEC)
    frames = [read_frame(tmp_path / "data", f["frame"]) for f in read_frame_index(tmp_path / "data")]
    x = torch.stack([rasterize_points(f.points, GRID) for f in frames])
    cars = [f.boxes[[t == "Car" for t in f.types]] for f in frames]
    targets = stack_targets([bev_targets(c[:, [0, 1, 3, 4, 6]], GRID, STRIDE) for c in cars])
    torch.manual_seed(0)
    model = UserBevNet()
    optimizer = torch.optim.Adam(model.parameters(), 5e-3)
    first = None
    for _ in range(40):
        loss = centernet_loss(model(x), targets)["loss"]
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < first
    calib = synthetic_calib()
    with torch.no_grad():
        for frame, det in zip(frames, decode_detections(model(x), STRIDE, k=20, threshold=0.05)):
            bev = detections_to_bev(det, GRID).numpy()
            boxes = np.c_[bev[:, :2], np.full(len(bev), -1.0), bev[:, 2:4], np.full(len(bev), 1.5), bev[:, 4]]
            write_labels(tmp_path / "results" / f"{frame.frame}.txt",
                         kitti_objects(["Car"] * len(bev), boxes, calib, (1242, 375), scores=det.scores.tolist()))
    ap = evaluate_kitti_bev(tmp_path / "data", tmp_path / "results", [f.frame for f in frames])
    assert set(ap) == {"Easy", "Moderate", "Hard"} and all(np.isnan(v) or 0 <= v <= 1 for v in ap.values())


def test_malformed_result_file_names_its_line(tmp_path):
    rng = np.random.default_rng(1)
    write_bev_dataset(tmp_path / "data", [make_bev_scene(rng, "low", SPEC)], SPEC)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "000000.txt").write_text("Car 0.00 0 0.1 1 2 3 4 1.5 1.8 4.0 1.0 1.6 10.0 0.2 0.9\nCar 0 0\n")
    with pytest.raises(InputError, match="000000.txt:2"):
        evaluate_kitti_bev(tmp_path / "data", tmp_path / "results", ["000000"])
    (tmp_path / "results" / "000000.txt").write_text("Car 0.00 0 0.1 1 2 3 4 1.5 1.8 4.0 1.0 1.6 10.0 0.2\n")
    with pytest.raises(InputError, match="score"):
        evaluate_kitti_bev(tmp_path / "data", tmp_path / "results", ["000000"])
