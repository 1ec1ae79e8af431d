"""Instance-search metrics of the DASR reproduction (arXiv:2002.00185): retrieval average precision and
localisation recall at an IoU threshold (boxes xyxy, IoU from :func:`honed.vision.detection_ap.box_iou`)."""
import torch
from sklearn.metrics import average_precision_score

from honed.core.errors import InputError
from honed.vision.detection_ap import box_iou


def average_precision(scores: torch.Tensor, relevant: torch.Tensor) -> float:
    """Retrieval AP (DASR evaluation, arXiv:2002.00185) of one query: database items ranked by falling
    ``scores`` (N,); AP = mean over the relevant items (``relevant`` (N,) bool, at least one True) of the
    precision at their rank (scikit-learn's ``average_precision_score``: tied scores share one rank
    threshold, so the result does not depend on the items' order)."""
    if scores.shape != relevant.shape or scores.dim() != 1 or torch.isnan(scores).any():
        raise InputError("scores and relevant must be (N,) tensors of one shape, scores without NaN")
    n_rel = int(relevant.sum())
    if n_rel == 0:
        raise InputError("a query needs at least one relevant item")
    return float(average_precision_score(relevant.cpu().numpy(), scores.detach().double().cpu().numpy()))


def mean_average_precision(scores: torch.Tensor, relevant: torch.Tensor) -> float:
    """mAP (DASR evaluation, arXiv:2002.00185) over queries: ``scores`` and ``relevant`` are (Q, N)."""
    if scores.dim() != 2 or scores.shape != relevant.shape or len(scores) == 0:
        raise InputError(f"scores and relevant must be (Q, N) of one shape, got {tuple(scores.shape)}, "
                         f"{tuple(relevant.shape)}")
    return sum(average_precision(s, r) for s, r in zip(scores, relevant)) / len(scores)


def localisation_recall(pred_boxes: list[torch.Tensor], gt_boxes: list[torch.Tensor],
                        iou_threshold: float = 0.5) -> float:
    """Share of ground-truth boxes whose best-overlapping predicted box of the same image has IoU >=
    ``iou_threshold`` (DASR localisation, arXiv:2002.00185). Lists of (K_i, 4) and (G_i, 4) xyxy boxes."""
    if len(pred_boxes) != len(gt_boxes):
        raise InputError("pred_boxes and gt_boxes must list the same images")
    hit = total = 0
    for pred, gt in zip(pred_boxes, gt_boxes):
        total += len(gt)
        if len(pred) and len(gt):
            hit += int((box_iou(gt.double(), pred.double()).max(1).values >= iou_threshold).sum())
    if total == 0:
        raise InputError("no ground-truth boxes")
    return hit / total
