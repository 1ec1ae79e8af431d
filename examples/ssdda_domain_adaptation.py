"""SSDDA (Chen et al. 2021, card 05): semi-supervised domain adaptation for segmentation in a plain loop.

Your own segmenter (any module mapping (N, 3, H, W) to logits (N, K, H, W)) learns from many labeled
source images, a few labeled target images and many unlabeled target images in two steps:
step 1 pastes ClassMix regions of source images (ground truth) onto labeled target images; step 2 trains
a separate student-teacher pair, initialised from step 1, on ClassMix mixes of unlabeled target pairs
labelled by the EMA teacher. ``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import copy
import os

import torch
from torch import nn

from honed.data.segmentation_scenes import SSDA_SHAPES, make_ssda_splits
from honed.vision.seg_metrics import confusion_matrix, mean_iou
from honed.vision.ssdda import IntraDomainMixing, inter_domain_loss

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
STEPS = 5 if TINY else 400
K = len(SSDA_SHAPES) + 1  # background + disk, square, triangle
torch.set_num_threads(1)


class MySegmenter(nn.Module):
    """The user's own segmenter: a small encoder-decoder."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(width, width, 3, padding=1),
                                nn.ReLU(), nn.Conv2d(width, K, 1))

    def forward(self, x):
        return self.up(self.down(x))


def miou(model, scenes):
    model.eval()
    with torch.no_grad():
        pred = model(scenes.x).argmax(1)
    model.train()
    return mean_iou(confusion_matrix(pred, scenes.y, K))


data = make_ssda_splits(seed=0, n_source=40 if TINY else 400, n_target_unlabeled=16 if TINY else 400,
                        n_target_test=20 if TINY else 200)
source, labeled, unlabeled = data["source"], data["target_labeled"], data["target_unlabeled"]
torch.manual_seed(0)
model, gen = MySegmenter(), torch.Generator().manual_seed(0)
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
for step in range(STEPS):  # step 1: inter-domain mixing with ground truth on both sides
    s = torch.randint(len(source), (8,), generator=gen)
    t = torch.randint(len(labeled), (8,), generator=gen)
    loss = inter_domain_loss(model, source.x[s], source.y[s], labeled.x[t], labeled.y[t], K, gen)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"after step 1: target test mIoU {miou(model, data['target_test']):.3f}")

student = copy.deepcopy(model)  # step 2: its own student-teacher pair and a fresh optimizer
step2 = IntraDomainMixing(student, torch.optim.Adam(student.parameters(), 1e-3), K, ema_decay=0.99, tau=0.968)
for step in range(STEPS):
    t = torch.randint(len(labeled), (8,), generator=gen)
    u = torch.randperm(len(unlabeled), generator=gen)[:8]
    log = step2.step(labeled.x[t], labeled.y[t], unlabeled.x[u], gen)
    if step % 100 == 0:
        print(f"step 2, iteration {step}: unlabeled weight {log['weight']:.3f}")
print(f"after step 2: target test mIoU {miou(student, data['target_test']):.3f}")
