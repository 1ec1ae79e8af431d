"""Cycle Self-Training (arXiv:2207.05334) on a detector defined here: a user's own dense head (no honed
CenterNet) trained in a plain loop on a toy 'bright square' task, two students labelling each other; bad
inputs give one InputError and leave the students as they were."""
import copy

import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.vision.centernet import centernet_targets, decode_detections, stack_targets
from honed.vision.cycle_self_training import CycleSelfTraining, mean_teacher_detection, strong_view

SIZE, STRIDE = 32, 4


class UserDenseDetector(nn.Module):
    """A user's detector: two strided convs and 1x1 heads returning CenterNet-style maps."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.heatmap, self.size, self.offset = nn.Conv2d(8, 1, 1), nn.Conv2d(8, 2, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        f = self.body(x)
        return {"heatmap": self.heatmap(f), "size": self.size(f), "offset": self.offset(f)}


def squares(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x, boxes = 0.2 * torch.rand(n, 3, SIZE, SIZE, generator=g), []
    for i in range(n):
        x0, y0 = (int(v) for v in torch.randint(0, SIZE - 10, (2,), generator=g))
        x[i, :, y0:y0 + 10, x0:x0 + 10] = 0.9
        boxes.append(torch.tensor([[x0, y0, x0 + 10, y0 + 10]], dtype=torch.float32))
    return x, boxes


def targets_of(boxes):
    return stack_targets([centernet_targets(b, torch.zeros(1, dtype=torch.long), 1, (SIZE, SIZE), STRIDE) for b in boxes])


def test_two_user_students_learn_in_a_plain_loop():
    torch.manual_seed(0)
    s1 = UserDenseDetector()
    torch.manual_seed(1)
    s2 = UserDenseDetector()
    cst = CycleSelfTraining([s1, s2], [torch.optim.Adam(s.parameters(), 5e-3) for s in (s1, s2)], stride=STRIDE,
                            num_classes=1, threshold=0.3, ema_decay=0.9, unsup_weight=1.0)
    x_l, boxes = squares(8, 0)
    x_u, _ = squares(8, 1)
    gen = torch.Generator().manual_seed(0)
    first = cst.step(x_l, targets_of(boxes), x_u, strong_view(x_u, gen))
    for _ in range(60):
        last = cst.step(x_l, targets_of(boxes), x_u, strong_view(x_u, gen))
    assert last["supervised"][0] < 0.5 * first["supervised"][0]
    x_t, gt = squares(4, 2)
    dets = decode_detections(cst.teacher(0)(x_t), STRIDE, k=1)
    centres = torch.stack([(d.boxes[0, :2] + d.boxes[0, 2:]) / 2 for d in dets])
    truth = torch.stack([(b[0, :2] + b[0, 2:]) / 2 for b in gt])
    assert (centres - truth).abs().max() < 4  # the teacher finds each square within one output cell


def test_mean_teacher_baseline_wraps_one_user_model_and_refuses_bad_input_cleanly():
    student = UserDenseDetector()
    mt = mean_teacher_detection(student, torch.optim.SGD(student.parameters(), 0.1), stride=STRIDE, num_classes=1)
    x, boxes = squares(2, 0)
    before = copy.deepcopy(student.state_dict())
    student.eval()
    with pytest.raises(InputError, match="views of the same images"):
        mt.step(x, targets_of(boxes), x, x[:1])
    with pytest.raises(InputError, match="NaN"):
        mt.step(x * float("nan"), targets_of(boxes), x, x)
    assert not student.training and all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    with pytest.raises(InputError, match="two teachers"):
        CycleSelfTraining([student], [torch.optim.SGD(student.parameters(), 0.1)], stride=STRIDE, num_classes=1,
                          routing="self", reweight="js")
