"""A*3D-style attribute benchmark (arXiv:1909.07541) on a KITTI-format folder, in a plain PyTorch loop.

Writes synthetic BEV driving scenes (low and high object density) as a KITTI folder (velodyne, label_2,
calib), trains a CenterNet BEV detector with a yaw head on rasterised LiDAR from the low-density frames,
writes its detections as KITTI result files (16 fields, with scores) and scores them with
``evaluate_kitti_bev`` (rotated BEV IoU 0.5, 11 recall points, Easy / Moderate / Hard) on low- and
high-density test frames. Point ``DATA`` at a real KITTI-format folder to evaluate your own detector's
result files the same way. ``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from honed.data.bev_kitti import read_frame, synthetic_calib, write_bev_dataset
from honed.data.bev_scenes import SceneSpec, make_bev_scene
from honed.data.kitti import write_labels
from honed.data.kitti_boxes import kitti_objects
from honed.vision.bev_ap import evaluate_kitti_bev
from honed.vision.bev_detector import BevGrid, bev_targets, detections_to_bev, rasterize_points
from honed.vision.centernet import CenterNet, centernet_loss, decode_detections, stack_targets

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
N_TRAIN, N_TEST, STEPS = (8, 4, 5) if TINY else (200, 60, 300)
SPEC, GRID, STRIDE = SceneSpec(cell=1.0), BevGrid(cell=1.0), 2
torch.set_num_threads(1)

work = Path(tempfile.mkdtemp())
DATA = work / "kitti"
rng = np.random.default_rng(0)
densities = ["low"] * N_TRAIN + ["low"] * N_TEST + ["high"] * N_TEST
write_bev_dataset(DATA, [make_bev_scene(rng, d, SPEC) for d in densities], SPEC)
frames = [read_frame(DATA, f"{i:06d}", times=()) for i in range(len(densities))]
x = torch.stack([rasterize_points(f.points, GRID) for f in frames])
cars = [f.boxes[[t == "Car" for t in f.types]][:, [0, 1, 3, 4, 6]] for f in frames]
targets = [bev_targets(c, GRID, STRIDE) for c in cars]

torch.manual_seed(0)
model = CenterNet(3, 1, width=16, stride=STRIDE, yaw=True)
optimizer = torch.optim.Adam(model.parameters(), 2e-3)
for step in range(STEPS):
    batch = torch.randint(N_TRAIN, (8,)).tolist()
    loss = centernet_loss(model(x[batch]), stack_targets([targets[i] for i in batch]))["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

model.eval()
calib = synthetic_calib()
with torch.no_grad():
    for i in range(N_TRAIN, len(frames)):
        det = decode_detections(model(x[i:i + 1]), STRIDE, k=50, threshold=0.05)[0]
        bev = detections_to_bev(det, GRID).numpy()  # x, y, length, width, yaw; KITTI also wants z and height
        boxes = np.c_[bev[:, :2], np.full(len(bev), 0.75 - SPEC.sensor_height), bev[:, 2:4], np.full(len(bev), 1.5), bev[:, 4]]
        write_labels(work / "results" / f"{frames[i].frame}.txt",
                     kitti_objects(["Car"] * len(bev), boxes, calib, (1242, 375), scores=det.scores.tolist()))
for name, ids in (("low", range(N_TRAIN, N_TRAIN + N_TEST)), ("high", range(N_TRAIN + N_TEST, len(frames)))):
    ap = evaluate_kitti_bev(DATA, work / "results", [frames[i].frame for i in ids])
    print(f"trained on low density, tested on {name} density: " + ", ".join(f"{k} {v:.3f}" for k, v in ap.items()))
