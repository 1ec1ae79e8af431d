"""Synthetic detection scenes for NMS experiments (PSRR-MaxpoolNMS reproduction, arXiv:2105.12990):
ground-truth boxes and the candidate boxes a detector would send to NMS, with the source anchor of
each candidate, seeded, in plain torch.

A scene holds 1..``max_objects`` GT boxes (side sqrt(area) log-uniform in ``side_range`` px, ratio
h/w in ``ratios``, one of ``num_classes`` labels). Each GT yields ``candidates`` jittered copies.
``stage="final"``: centre jittered +-``centre_jitter`` and size +-``size_jitter`` of the GT size, i.e.
regressed boxes off their anchor grid; ``stage="first"``: proposals centred on their source anchor's
cell centre (size jittered the same way). Source anchors: a cell within +-``anchor_spread`` of the GT
size around the GT centre (the anchors a detector would call positive, IoU ~>= 0.5) and the GT's
nearest anchor channel or, with probability ``neighbour_channel``, an adjacent scale or ratio.
Scores = IoU with the GT + N(0, ``score_noise``); a candidate takes a wrong class with probability
``label_noise``; ``fp_per_object`` x objects random boxes with scores U(0, ``fp_max_score``) are added.
"""
import math
from dataclasses import dataclass

import torch

from honed.core.errors import InputError
from honed.vision.detection_ap import box_iou
from honed.vision.nms import AnchorSet


@dataclass(frozen=True)
class SceneSpec:
    """Parameters of :func:`make_scene` (see the module docstring)."""

    image_size: int = 512
    max_objects: int = 30
    side_range: tuple[float, float] = (16.0, 256.0)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    num_classes: int = 3
    candidates: tuple[int, int] = (20, 60)
    centre_jitter: float = 0.1
    size_jitter: float = 0.15
    score_noise: float = 0.1
    label_noise: float = 0.1
    fp_per_object: float = 3.0
    fp_max_score: float = 0.5
    anchor_spread: float = 0.2
    neighbour_channel: float = 0.5
    stage: str = "final"

    def __post_init__(self) -> None:
        lo, hi = self.side_range
        if not (0 < lo <= hi and 1 <= self.candidates[0] <= self.candidates[1] and self.max_objects >= 1
                and self.num_classes >= 1 and self.stage in ("final", "first") and self.image_size > 0):
            raise InputError(f"bad SceneSpec: {self}")


@dataclass(frozen=True)
class Scene:
    """``gt_boxes`` (G, 4), ``gt_labels`` (G,); candidates ``boxes`` (N, 4) xyxy clipped to the
    image, ``scores`` (N,) in [0, 1], ``labels`` (N,), ``anchors`` (N, 4) their source anchor boxes."""

    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    anchors: torch.Tensor


def uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def random_boxes(gen: torch.Generator, n: int, spec: SceneSpec) -> torch.Tensor:
    """(n, 4) GT-like boxes: log-uniform side, ratio from spec.ratios, centre inside the image."""
    lo, hi = spec.side_range
    side = torch.exp(uniform(gen, n, math.log(lo), math.log(hi)))
    ratio = torch.tensor(spec.ratios, dtype=torch.float64)[torch.randint(len(spec.ratios), (n,), generator=gen)]
    w, h = side / ratio.sqrt(), side * ratio.sqrt()
    cx, cy = uniform(gen, n, 0, spec.image_size), uniform(gen, n, 0, spec.image_size)
    return clip(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), spec.image_size)


def clip(boxes: torch.Tensor, size: int) -> torch.Tensor:
    return boxes.clamp(0, size)


def source_anchors(gen: torch.Generator, targets: torch.Tensor, spec: SceneSpec, anchors: AnchorSet) -> torch.Tensor:
    """(n, 4) source anchor box of each candidate of ``targets`` (n, 4) (see the module docstring)."""
    n = len(targets)
    wh = targets[:, 2:] - targets[:, :2]
    centre = (targets[:, :2] + targets[:, 2:]) / 2 + (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) \
        * spec.anchor_spread * wh
    grid = math.ceil(spec.image_size / anchors.stride)
    cell = torch.floor(centre / anchors.stride).clamp(0, grid - 1)
    channel = anchors.channel_of(targets)
    n_r = len(anchors.ratios)
    s, r = channel // n_r, channel % n_r
    move = torch.rand(n, generator=gen) < spec.neighbour_channel
    step = torch.where(torch.rand(n, generator=gen) < 0.5, -1, 1)
    along_scale = torch.rand(n, generator=gen) < 0.5
    s = torch.where(move & along_scale, (s + step).clamp(0, len(anchors.sides) - 1), s)
    r = torch.where(move & ~along_scale, (r + step).clamp(0, n_r - 1), r)
    anchor_wh = anchors.anchor_wh()[s * n_r + r]
    cc = (cell + 0.5) * anchors.stride
    return torch.cat([cc - anchor_wh / 2, cc + anchor_wh / 2], 1)


def candidates_of(gen: torch.Generator, gt: torch.Tensor, spec: SceneSpec, anchors: AnchorSet):
    """Jittered candidates of the GT boxes (G, 4): (boxes, index of their GT, source anchors)."""
    lo, hi = spec.candidates
    counts = torch.randint(lo, hi + 1, (len(gt),), generator=gen)
    owner = torch.repeat_interleave(torch.arange(len(gt)), counts)
    target = gt[owner]
    src = source_anchors(gen, target, spec, anchors)
    n = len(owner)
    wh = target[:, 2:] - target[:, :2]
    size = wh * (1 + spec.size_jitter * (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1))
    if spec.stage == "final":
        centre = (target[:, :2] + target[:, 2:]) / 2 \
            + spec.centre_jitter * wh * (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1)
    else:
        centre = (src[:, :2] + src[:, 2:]) / 2
    boxes = clip(torch.cat([centre - size / 2, centre + size / 2], 1), spec.image_size)
    return boxes, owner, src


def make_scene(gen: torch.Generator, spec: SceneSpec = SceneSpec(), anchors: AnchorSet = AnchorSet()) -> Scene:
    """One synthetic scene drawn from ``gen`` (PSRR-MaxpoolNMS reproduction, arXiv:2105.12990)."""
    n_obj = int(torch.randint(1, spec.max_objects + 1, (1,), generator=gen))
    gt = random_boxes(gen, n_obj, spec)
    gt_labels = torch.randint(spec.num_classes, (n_obj,), generator=gen)
    boxes, owner, src = candidates_of(gen, gt, spec, anchors)
    iou = box_iou(boxes, gt)[torch.arange(len(owner)), owner]
    scores = iou + spec.score_noise * torch.randn(len(owner), generator=gen, dtype=torch.float64)
    labels = gt_labels[owner].clone()
    if spec.num_classes > 1:
        wrong = torch.rand(len(owner), generator=gen) < spec.label_noise
        other = (labels + torch.randint(1, spec.num_classes, (len(owner),), generator=gen)) % spec.num_classes
        labels = torch.where(wrong, other, labels)
    n_fp = int(round(spec.fp_per_object * n_obj))
    fp = random_boxes(gen, n_fp, spec)
    fp_src = source_anchors(gen, fp, spec, anchors)
    if spec.stage == "first":
        fp = clip(fp - (fp[:, :2] + fp[:, 2:]).repeat(1, 2) / 2 + (fp_src[:, :2] + fp_src[:, 2:]).repeat(1, 2) / 2,
                  spec.image_size)
    fp_scores = spec.fp_max_score * torch.rand(n_fp, generator=gen, dtype=torch.float64)
    return Scene(gt.float(), gt_labels, torch.cat([boxes, fp]).float(),
                 torch.cat([scores, fp_scores]).clamp(0, 1).float(),
                 torch.cat([labels, torch.randint(spec.num_classes, (n_fp,), generator=gen)]),
                 torch.cat([src, fp_src]).float())


def make_scenes(count: int, seed: int, spec: SceneSpec = SceneSpec(), anchors: AnchorSet = AnchorSet()) -> list[Scene]:
    """``count`` scenes from one seeded generator (same seed -> same scenes)."""
    gen = torch.Generator().manual_seed(seed)
    return [make_scene(gen, spec, anchors) for _ in range(count)]
