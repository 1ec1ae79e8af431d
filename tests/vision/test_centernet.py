"""CenterNet-style detector: targets decode back to the boxes, the focal loss by hand, training helps."""
import math

import pytest
import torch

from honed.core.errors import InputError
from honed.vision.centernet import (CenterNet, centernet_loss, centernet_targets, decode_detections, draw_gaussian,
                                    focal_loss, gaussian_radius, stack_targets)


def perfect_outputs(targets, num_classes):
    """Outputs a perfect network would give: the target heatmap as logits, size/offset/yaw at centres."""
    heat = targets.heatmap.clamp(1e-6, 1 - 1e-6)
    b, _, h, w = heat.shape
    maps = {name: torch.zeros(b, 2, h * w) for name in ("size", "offset", "yaw")}
    for i in range(b):
        for k in torch.nonzero(targets.mask[i]).flatten():
            for name in maps:
                maps[name][i, :, targets.index[i, k]] = getattr(targets, name)[i, k]
    out = {name: m.view(b, 2, h, w) for name, m in maps.items()}
    out["heatmap"] = torch.log(heat / (1 - heat))
    return out


def test_targets_decode_back_to_the_ground_truth_boxes_and_yaws():
    boxes = torch.tensor([[3.0, 5.0, 19.0, 15.0], [30.0, 33.0, 41.5, 60.0], [44.0, 2.0, 63.0, 9.0]])
    labels = torch.tensor([0, 2, 1])
    yaws = torch.tensor([0.3, -1.2, 2.0])
    t = stack_targets([centernet_targets(boxes, labels, 3, (64, 64), stride=4, max_objects=8, yaws=yaws)])
    dets = decode_detections(perfect_outputs(t, 3), stride=4, k=10, threshold=0.9)[0]
    order = torch.argsort(dets.boxes[:, 0])
    assert torch.allclose(dets.boxes[order], boxes, atol=1e-5)
    assert dets.labels[order].tolist() == [0, 2, 1]
    assert torch.allclose(dets.yaws[order], yaws, atol=1e-5)
    assert torch.allclose(dets.scores, torch.ones(3), atol=1e-5)


def test_focal_loss_by_hand():
    logits = torch.tensor([[[[0.0, 2.0]]]])  # p = 0.5 at the positive, sigmoid(2) at a negative
    target = torch.tensor([[[[1.0, 0.5]]]])
    p = 1 / (1 + math.exp(-2.0))
    expected = -(0.5 ** 2 * math.log(0.5) + (1 - 0.5) ** 4 * p ** 2 * math.log(1 - p))
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_gaussian_has_its_peak_at_the_centre_and_keeps_the_max_of_overlaps():
    heat = torch.zeros(9, 9)
    draw_gaussian(heat, 4, 4, 2)
    draw_gaussian(heat, 5, 4, 2)
    assert heat[4, 4] == 1 and heat[4, 5] == 1 and heat[0, 0] == 0 and 0 < heat[4, 2] < 1
    assert gaussian_radius(10, 10) > gaussian_radius(10, 10, min_overlap=0.9) > 0


def test_a_few_training_steps_lower_the_loss_on_one_scene():
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 8:16, 4:20] = 1.0
    t = stack_targets([centernet_targets(torch.tensor([[4.0, 8.0, 20.0, 16.0]]), torch.tensor([0]), 1, (32, 32), 4)])
    model = CenterNet(1, 1, width=8, stride=4)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss = centernet_loss(model(image), t)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("boxes, labels, words", [
    (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "(N, 4)"),
    (torch.tensor([[5.0, 5.0, 4.0, 9.0]]), torch.tensor([0]), "x2 > x1"),
    (torch.tensor([[0.1, 0.1, 0.5, 0.5]]) * 100, torch.tensor([0]), "inside"),
    (torch.tensor([[1.0, 1.0, float("nan"), 5.0]]), torch.tensor([0]), "NaN"),
    (torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.tensor([3]), "labels"),
])
def test_bad_boxes_are_refused_in_one_line(boxes, labels, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        centernet_targets(boxes, labels, 3, (32, 32), 4)


def test_image_size_must_fit_the_stride():
    with pytest.raises(InputError, match="multiples of 4"):
        CenterNet(1, 2)(torch.zeros(1, 1, 30, 32))
