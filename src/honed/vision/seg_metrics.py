"""Semantic-segmentation metrics from one confusion matrix (as the segmentation papers honed reproduces
report them, e.g. ComplexMix arXiv:2101.10156 and aerial-image UDA arXiv:2012.02264): confusion matrix,
per-class IoU, mIoU, per-class F1 and overall pixel accuracy.

Inputs: integer label maps ``pred`` and ``target`` of the same shape (any shape), values in
[0, num_classes); pixels whose target equals ``ignore_index`` are left out.
"""
import torch

from honed.core.errors import InputError


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = target class, columns = predicted class."""
    if pred.shape != target.shape:
        raise InputError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if len(target) and (min(int(pred.min()), int(target.min())) < 0
                        or max(int(pred.max()), int(target.max())) >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN) per class; NaN for a class absent from both target and prediction."""
    tp = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes that occur (NaN classes skipped)."""
    return float(iou_per_class(confusion).nanmean())


def f1_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """F1_c = 2 TP / (2 TP + FP + FN) per class; NaN for a class absent from both."""
    tp = confusion.diag().double()
    denom = confusion.sum(0).double() + confusion.sum(1).double()
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Overall accuracy: correctly labelled pixels / all counted pixels."""
    return float(confusion.diag().sum().double() / confusion.sum().clamp_min(1).double())


def per_image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                   ignore_index: int | None = None) -> list[float]:
    """Per-image mIoU: for each of N label maps (N, H, W), the mean IoU over the classes present in
    that image's target or prediction (:func:`mean_iou` of the image's own confusion matrix). Their
    mean is a per-example outcome (paired intervals across methods), not the dataset-level mIoU."""
    if pred.dim() != 3:
        raise InputError(f"pred and target must be (N, H, W) label maps, got {tuple(pred.shape)}")
    return [mean_iou(confusion_matrix(p, t, num_classes, ignore_index)) for p, t in zip(pred, target)]
