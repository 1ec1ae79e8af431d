"""Issue 11: the NMS family (PSRR-MaxpoolNMS, MaxpoolNMS, GreedyNMS, AnchorSet) and COCO AP on the output
of a detector head defined here, image by image in a plain loop, with normalised, negative and pixel
coordinates; bad inputs (NaN, wrong shapes, an unused IoU threshold, normalised boxes with pixel
anchors, coordinates too large for a score map) give one InputError and leave the inputs untouched."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.vision.detection_ap import ImageDetections, coco_average_precision
from honed.vision.nms import AnchorSet, greedy_nms, maxpool_nms, psrr_maxpool_nms

HEIGHT, WIDTH = 256, 320


class UserDetectorHead(nn.Module):
    """A user's one-stage head, simulated: for each ground-truth box (G, 4) normalised xyxy it emits
    ``per_object`` regressed candidates (cx, cy, w, h) normalised, one score logit and class logits each,
    plus the source anchor of each candidate (the anchor it was regressed from)."""

    def __init__(self, per_object: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.per_object, self.classes = per_object, classes

    def forward(self, gt: torch.Tensor, gt_labels: torch.Tensor):
        g = torch.Generator().manual_seed(int(gt.sum() * 1000))
        pick = torch.arange(len(gt)).repeat_interleave(self.per_object)
        centre, size = (gt[:, :2] + gt[:, 2:]) / 2, gt[:, 2:] - gt[:, :2]
        jitter = torch.randn(len(pick), 4, generator=g)
        boxes = torch.cat([centre[pick] + 0.08 * size[pick] * jitter[:, :2], size[pick] * (1 + 0.1 * jitter[:, 2:])], 1)
        score_logits = 2 - jitter.abs().sum(1)
        class_logits = torch.nn.functional.one_hot(gt_labels[pick], self.classes) * 4.0
        anchors = torch.cat([centre[pick] + 0.2 * size[pick] * torch.randn(len(pick), 2, generator=g), size[pick]], 1)
        return boxes, score_logits, class_logits, anchors


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)


def scene(seed: int):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(6, 2, generator=g) * 0.6 + 0.05
    gt = torch.cat([corner, corner + torch.rand(6, 2, generator=g) * 0.25 + 0.1], 1)
    return gt, torch.randint(3, (6,), generator=g)


PIXELS = torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT], dtype=torch.float32)


def test_nms_family_and_ap_on_a_user_detector_head_in_a_plain_loop():
    head = UserDetectorHead()
    kept = {"greedy": [], "psrr": [], "maxpool": []}
    images = {name: [] for name in kept}
    for seed in range(4):
        gt, gt_labels = scene(seed)
        raw, score_logits, class_logits, anchors = head(gt, gt_labels)
        boxes, scores, labels = cxcywh_to_xyxy(raw), score_logits.sigmoid(), class_logits.argmax(1)
        copy = boxes.clone()
        keep = {"greedy": greedy_nms(boxes, scores, 0.5, classes=labels),
                "psrr": psrr_maxpool_nms(boxes, scores, classes=labels, normalized=True, image_size=(HEIGHT, WIDTH)),
                "maxpool": maxpool_nms(boxes, scores, anchors=cxcywh_to_xyxy(anchors), classes=labels,
                                       normalized=True, image_size=(HEIGHT, WIDTH))}
        assert torch.equal(boxes, copy)  # inputs untouched
        for name, k in keep.items():
            assert k.dtype == torch.int64 and len(set(k.tolist())) == len(k) and (scores[k].diff() <= 0).all()
            kept[name].append(len(k))
            images[name].append(ImageDetections(boxes[k] * PIXELS, scores[k], labels[k], gt * PIXELS, gt_labels))
    for name in kept:
        ap = coco_average_precision(images[name])
        assert 0 < ap[0.5] <= 1, (name, ap)
        assert sum(kept[name]) < 4 * 6 * 12  # duplicates were removed
    # the pixel call with a pixel anchor set and the normalised call agree
    gt, gt_labels = scene(0)
    raw, logits, _, _ = head(gt, gt_labels)
    boxes = cxcywh_to_xyxy(raw)
    assert torch.equal(psrr_maxpool_nms(boxes * PIXELS, logits, image_size=(HEIGHT, WIDTH)),
                       psrr_maxpool_nms(boxes, logits, normalized=True, image_size=(HEIGHT, WIDTH)))


def test_negative_coordinates_and_an_anchor_set_in_the_boxes_units():
    gt, gt_labels = scene(1)
    raw, logits, _, _ = UserDetectorHead()(gt, gt_labels)
    boxes = cxcywh_to_xyxy(raw) * PIXELS
    boxes = boxes - boxes.amin(0)[:2].repeat(2)  # lowest corner at the origin
    shifted = boxes - 16.0 * torch.tensor([20.0, 7.0, 20.0, 7.0])  # whole cells into the negatives
    assert torch.equal(psrr_maxpool_nms(shifted, logits), psrr_maxpool_nms(boxes, logits))
    metres = AnchorSet(sides=tuple(s / 100 for s in AnchorSet().sides), stride=0.16)  # any unit, if consistent
    assert torch.equal(psrr_maxpool_nms(boxes / 100, logits, anchor_set=metres), psrr_maxpool_nms(boxes, logits))


@pytest.mark.parametrize("call, match", [
    (lambda b, s: psrr_maxpool_nms(b, s), "normalized=True"),
    (lambda b, s: psrr_maxpool_nms(b, s, normalized=True), "image_size"),
    (lambda b, s: psrr_maxpool_nms(b, s, 0.5, normalized=True, image_size=(HEIGHT, WIDTH)), "alpha"),
    (lambda b, s: psrr_maxpool_nms(b * 1e9, s), "score map would hold"),
    (lambda b, s: psrr_maxpool_nms(b.clone().fill_(float("nan")), s), "finite"),
    (lambda b, s: psrr_maxpool_nms(torch.cat([b, b[:, :1]], 1), s), r"\(N, 4\)"),
    (lambda b, s: greedy_nms(b, s[:-1], 0.5), "scores must have shape"),
    (lambda b, s: greedy_nms(b[:, [2, 1, 0, 3]], s, 0.5), "x1 <= x2"),
    (lambda b, s: greedy_nms(b, s, 0.5, classes=s), "classes"),
    (lambda b, s: psrr_maxpool_nms(b, s, normalized=True, image_size=(0, WIDTH)), "image_size"),
])
def test_bad_inputs_are_refused_in_one_line_and_inputs_stay_untouched(call, match):
    gt, gt_labels = scene(2)
    raw, logits, _, _ = UserDetectorHead()(gt, gt_labels)
    boxes, scores = cxcywh_to_xyxy(raw), logits.sigmoid()
    copies = boxes.clone(), scores.clone()
    with pytest.raises(InputError, match=match):
        call(boxes, scores)
    assert torch.equal(boxes, copies[0]) and torch.equal(scores, copies[1])


def test_an_image_without_detections_gives_an_empty_int64_keep():
    for keep in (greedy_nms(torch.zeros(0, 4), torch.zeros(0), 0.5),
                 psrr_maxpool_nms(torch.zeros(0, 4), torch.zeros(0), normalized=True, image_size=(HEIGHT, WIDTH))):
        assert keep.shape == (0,) and keep.dtype == torch.int64
