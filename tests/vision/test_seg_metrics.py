"""Segmentation metrics against hand-computed values (and sklearn's confusion matrix)."""
import math

import pytest
import torch

from honed.core.errors import InputError
from honed.vision.seg_metrics import (confusion_matrix, f1_per_class, iou_per_class, mean_iou,
                                      pixel_accuracy)


def test_hand_counted_toy_case():
    target = torch.tensor([[0, 0, 1], [1, 2, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: class0 1/(1+1+1), class1 2/(2+1+0), class2 1/(1+0+1)
    assert torch.allclose(iou_per_class(cm), torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert math.isclose(mean_iou(cm), (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert torch.allclose(f1_per_class(cm), torch.tensor([2 / 4, 4 / 5, 2 / 3], dtype=torch.float64))
    assert math.isclose(pixel_accuracy(cm), 4 / 6)


def test_matches_sklearn_and_skips_ignored_and_absent_classes():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    target, pred = torch.randint(0, 4, (50,), generator=gen), torch.randint(0, 4, (50,), generator=gen)
    ours = confusion_matrix(pred, target, 4)
    assert ours.tolist() == sklearn_metrics.confusion_matrix(target, pred, labels=[0, 1, 2, 3]).tolist()
    target[:5] = 255
    assert int(confusion_matrix(pred, target, 4, ignore_index=255).sum()) == 45
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 3)
    assert mean_iou(cm) == 1.0  # classes 1 and 2 never occur: skipped, not counted as 0


def test_bad_labels_and_shapes_are_refused():
    with pytest.raises(InputError, match="same shape"):
        confusion_matrix(torch.zeros(3), torch.zeros(4), 2)
    with pytest.raises(InputError, match=r"\[0, 2\)"):
        confusion_matrix(torch.tensor([2]), torch.tensor([0]), 2)


def test_per_image_miou_hand_counted():
    from honed.vision.seg_metrics import per_image_miou

    target = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [2, 2]]])
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 0]]])
    # image 0: class0 1/2, class1 2/3; image 1: class2 3/4, class0 0/1 (predicted only)
    assert per_image_miou(pred, target, 3) == pytest.approx([(1 / 2 + 2 / 3) / 2, (3 / 4 + 0) / 2])
    with pytest.raises(InputError):
        per_image_miou(pred[0], target[0], 3)
