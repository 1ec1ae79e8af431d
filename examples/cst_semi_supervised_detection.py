"""Cycle Self-Training (arXiv:2207.05334) for a semi-supervised detector, in a plain PyTorch loop.

Two students of your own detector architecture (any module returning CenterNet-style maps: "heatmap"
logits (B, K, h, w), "size" and "offset" (B, 2, h, w) at a fixed output stride) are burned in on a few
labeled images, then trained with CycleSelfTraining on labeled + unlabeled batches: teacher T1 = EMA(S1)
labels S2's unlabeled images and T2 labels S1's, with pseudo-boxes weighted by how much the two teachers
agree. Evaluate a teacher. ``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch
from torch import nn

from honed.data.detection_scenes import CLASSES, make_ssod_splits
from honed.vision.centernet import centernet_loss, centernet_targets, decode_detections, stack_targets
from honed.vision.cycle_self_training import CycleSelfTraining, strong_view
from honed.vision.detection_ap import ImageDetections, coco_average_precision

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
STRIDE, K = 4, len(CLASSES)
BURN_IN, SEMI = (5, 5) if TINY else (300, 300)
torch.set_num_threads(1)


class MyDetector(nn.Module):
    """The user's own dense detector: a small strided CNN with three 1x1 heads."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 1, 1), nn.ReLU())
        self.heatmap, self.size, self.offset = nn.Conv2d(width, K, 1), nn.Conv2d(width, 2, 1), nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)

    def forward(self, x):
        f = self.body(x)
        return {"heatmap": self.heatmap(f), "size": self.size(f), "offset": self.offset(f)}


def batch_of(scenes, index):
    targets = [centernet_targets(scenes.boxes[i], scenes.labels[i], K, (64, 64), STRIDE) for i in index]
    return scenes.images[index], stack_targets(targets)


def ap50(model, scenes):
    model.eval()
    with torch.no_grad():
        dets = decode_detections(model(scenes.images), STRIDE, threshold=0.01)
    images = [ImageDetections(d.boxes, d.scores, d.labels, b, l) for d, b, l in zip(dets, scenes.boxes, scenes.labels)]
    return coco_average_precision(images, (0.5,))[0.5]


data = make_ssod_splits(seed=0, n_labeled=60, n_unlabeled=40 if TINY else 1500, n_test=20 if TINY else 300)
students = []
for seed in (0, 1):  # the two students MUST differ: other init and data order
    torch.manual_seed(seed)
    model, order = MyDetector(), torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(BURN_IN):
        x, targets = batch_of(data["labeled"], torch.randint(60, (8,), generator=order).tolist())
        loss = centernet_loss(model(x), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    students.append(model)
print(f"after burn-in: student 1 AP50 = {ap50(students[0], data['test']):.3f}")

cst = CycleSelfTraining(students, [torch.optim.Adam(s.parameters(), 1e-3) for s in students], stride=STRIDE,
                        num_classes=K, threshold=0.5, ema_decay=0.99, unsup_weight=4.0, reweight="js")
gen = torch.Generator().manual_seed(0)
for step in range(SEMI):
    x_l, targets = batch_of(data["labeled"], torch.randint(60, (8,), generator=gen).tolist())
    weak = data["unlabeled"].images[torch.randint(len(data["unlabeled"]), (8,), generator=gen)]
    log = cst.step(x_l, targets, weak, strong_view(weak, gen))  # same images, strong photometric view
    if step % 100 == 0:
        print(f"step {step}: pseudo-boxes per image {log['pseudo_boxes']}, mean weight {log['mean_weight']}")
print(f"after CST: teacher T1 AP50 = {ap50(cst.teacher(0), data['test']):.3f}")
