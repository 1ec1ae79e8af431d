"""COCO-style average precision for box detections, written in plain torch/Python (no pycocotools):
the metric of the PSRR-MaxpoolNMS reproduction (arXiv:2105.12990).

Per class, detections of all images are sorted by score (at most ``max_dets`` per image and class,
highest scores first, as pycocotools' COCOeval keeps them), each is matched to the unmatched ground truth of its image and class with the highest
IoU >= t (COCO's rule), precision is made monotone from the right and sampled at the 101 recall points
0, 0.01, ..., 1. AP is averaged over the classes that have ground truth. No crowd or area ranges.
On the same detections it equals pycocotools' COCOeval (area range "all"), which the tests use as oracle.
Why not COCOeval at run time: it needs the boxes as COCO json structures (image / category / annotation
ids), prints while it evaluates, and is only in the ``dev`` extra; this module takes tensors per image.
"""
from dataclasses import dataclass

import torch

from honed.core.errors import InputError

COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (N, M) of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4) (PSRR-MaxpoolNMS experiment,
    arXiv:2105.12990); zero-area pairs give 0."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


@dataclass(frozen=True)
class ImageDetections:
    """One image for AP: ``boxes`` (D, 4) xyxy, ``scores`` (D,), ``labels`` (D,) int64 of the
    detections; ``gt_boxes`` (G, 4), ``gt_labels`` (G,) int64 of the ground truth."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor


def match_image(image: ImageDetections, label: int, thresholds: tuple[float, ...],
                max_dets: int) -> tuple[list[float], list[list[bool]], int]:
    """Scores of the image's detections of ``label``, their TP flags per threshold, and its GT count."""
    mine = torch.nonzero(image.labels == label).flatten()
    det = mine[torch.sort(image.scores[mine], descending=True, stable=True).indices][:max_dets]
    gts = image.gt_boxes[image.gt_labels == label]
    scores = image.scores[det].tolist()
    if len(det) == 0 or len(gts) == 0:
        return scores, [[False] * len(det) for _ in thresholds], len(gts)
    iou = box_iou(image.boxes[det].double(), gts.double()).tolist()
    flags = []
    for t in thresholds:
        free = [True] * len(gts)
        row_flags = []
        for row in iou:
            best, best_iou = -1, t
            for g, v in enumerate(row):
                if free[g] and v >= best_iou:
                    best, best_iou = g, v
            if best >= 0:
                free[best] = False
            row_flags.append(best >= 0)
        flags.append(row_flags)
    return scores, flags, len(gts)


def interpolated_ap(scores: list[float], tp: list[bool], n_gt: int) -> float:
    """101-point interpolated AP (COCO) of detections with ``scores`` and TP flags against n_gt."""
    if n_gt == 0:
        return float("nan")
    if not scores:
        return 0.0
    order = torch.sort(torch.tensor(scores, dtype=torch.float64), descending=True, stable=True).indices
    hits = torch.tensor(tp, dtype=torch.float64)[order]
    tp_cum, fp_cum = hits.cumsum(0), (1 - hits).cumsum(0)
    recall = tp_cum / n_gt
    precision = tp_cum / (tp_cum + fp_cum)
    precision = precision.flip(0).cummax(0).values.flip(0)
    points = torch.linspace(0, 1, 101, dtype=torch.float64)
    idx = torch.searchsorted(recall, points, side="left")
    sampled = torch.where(idx < len(recall), precision[idx.clamp_max(len(recall) - 1)], torch.zeros(()))
    return float(sampled.mean())


def coco_average_precision(images: list[ImageDetections], thresholds: tuple[float, ...] = COCO_THRESHOLDS,
                           max_dets: int = 100) -> dict[float, float]:
    """COCO-style AP (PSRR-MaxpoolNMS experiment, arXiv:2105.12990): {IoU threshold: AP in [0, 1]}
    averaged over classes with ground truth; AP@[.5:.95] is the mean over COCO_THRESHOLDS."""
    if not thresholds or not all(0 < t <= 1 for t in thresholds) or max_dets < 1:
        raise InputError(f"thresholds must lie in (0, 1] and max_dets >= 1, got {thresholds}, {max_dets}")
    labels = sorted({int(v) for im in images for v in im.gt_labels.tolist()})
    per_class = {t: [] for t in thresholds}
    for label in labels:
        scores, flags, n_gt = [], [[] for _ in thresholds], 0
        for image in images:
            s, f, g = match_image(image, label, thresholds, max_dets)
            scores += s
            n_gt += g
            for k in range(len(thresholds)):
                flags[k] += f[k]
        for k, t in enumerate(thresholds):
            per_class[t].append(interpolated_ap(scores, flags[k], n_gt))
    return {t: (sum(v) / len(v) if v else float("nan")) for t, v in per_class.items()}
