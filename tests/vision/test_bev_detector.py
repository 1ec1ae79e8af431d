"""BEV coding of the A*3D reproduction's detector: targets decode back to the boxes (heading mod pi), the
raster by hand, bad points refused."""
import math

import numpy as np
import pytest
import torch

from honed.core.errors import InputError
from honed.vision.bev_detector import BevGrid, bev_targets, detections_to_bev, rasterize_points
from honed.vision.centernet import decode_detections, stack_targets
from honed.vision.rotated_iou import rotated_iou

GRID = BevGrid(x_range=(0.0, 32.0), y_range=(-16.0, 16.0), cell=0.5)


def perfect_outputs(t):
    heat = t.heatmap.clamp(1e-6, 1 - 1e-6)
    b, _, h, w = heat.shape
    maps = {name: torch.zeros(b, 2, h * w) for name in ("size", "offset", "yaw")}
    for k in torch.nonzero(t.mask[0]).flatten():
        for name in maps:
            maps[name][0, :, t.index[0, k]] = getattr(t, name)[0, k]
    out = {name: m.view(b, 2, h, w) for name, m in maps.items()}
    out["heatmap"] = torch.log(heat / (1 - heat))
    return out


def test_targets_decode_back_to_the_boxes():
    boxes = np.array([[10.0, 3.0, 4.2, 1.8, 0.3], [20.0, -6.0, 4.0, 1.7, 2.5], [6.0, 9.0, 0.8, 0.6, -1.4]])
    t = stack_targets([bev_targets(boxes, GRID, stride=4)])
    dets = decode_detections(perfect_outputs(t), 4, k=10, threshold=0.9)[0]
    back = detections_to_bev(dets, GRID)
    iou = rotated_iou(back, torch.tensor(boxes))
    assert len(back) == 3 and torch.allclose(iou.max(0).values, torch.ones(3, dtype=iou.dtype), atol=1e-4)
    reversed_heading = boxes.copy()
    reversed_heading[:, 4] += math.pi  # the same boxes: identical targets
    same = stack_targets([bev_targets(reversed_heading, GRID, stride=4)])
    assert torch.allclose(same.yaw, t.yaw, atol=1e-5) and torch.equal(same.index, t.index)


def test_boxes_outside_the_grid_are_dropped_and_border_boxes_shrunk_to_fit():
    t = bev_targets(np.array([[40.0, 0.0, 4.0, 2.0, 0.0], [31.9, 0.0, 4.0, 2.0, 1.5708]]), GRID, stride=4)
    assert int(t.mask.sum()) == 1


def test_raster_by_hand():
    points = np.array([[31.9, 15.9, 0.5, 0.8], [31.8, 15.8, -1.0, 0.2], [0.1, -15.9, -2.0, 0.5], [50.0, 0.0, 0.0, 1.0]])
    r = rasterize_points(points, GRID)
    assert r.shape == (3, 64, 64)
    assert r[0, 0, 0] == pytest.approx(math.log(3) / math.log(17)) and r[1, 0, 0] == pytest.approx(1.0)
    assert r[2, 0, 0] == pytest.approx(0.5) and r[0, 63, 63] > 0 and r[1, 63, 63] == 0.0 and r[0].sum() > 0
    assert int((r[0] > 0).sum()) == 2  # the point 50 m ahead is off the grid
    with pytest.raises(InputError, match=r"\(P, 4\)"):
        rasterize_points(np.zeros((3, 2)), GRID)
