"""COCO-style AP of the PSRR-MaxpoolNMS experiment (arXiv:2105.12990) on hand examples, and the
seeded synthetic scene generator."""
import pytest
import torch

from honed.core.errors import InputError
from honed.vision.detection_ap import COCO_THRESHOLDS, ImageDetections, box_iou, coco_average_precision
from honed.vision.synthetic_scenes import SceneSpec, make_scenes

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])


def image(boxes, scores, labels, gt=GT, gt_labels=(0, 1)):
    return ImageDetections(torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels), gt,
                           torch.tensor(gt_labels))


def test_box_iou_by_hand():
    iou = box_iou(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(iou, torch.tensor([[50 / 150, 0.0]]))


def test_perfect_detector_has_ap_one_at_every_threshold():
    ap = coco_average_precision([image(GT.tolist(), [0.9, 0.8], [0, 1])])
    assert set(ap) == set(COCO_THRESHOLDS)
    assert all(v == pytest.approx(1.0) for v in ap.values())


def test_hand_example_with_one_false_positive_between_two_hits():
    # one class, 2 GT; ranked TP (0.9), FP (0.8), TP (0.7): precision 1 up to recall 0.5, then 2/3
    im = image([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0], [20.0, 20.0, 40.0, 40.0]],
               [0.9, 0.8, 0.7], [0, 0, 0], gt_labels=(0, 0))
    ap = coco_average_precision([im], thresholds=(0.5,))
    assert ap[0.5] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)


def test_duplicate_is_a_false_positive_and_wrong_class_never_matches():
    dup = image([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]], [0.9, 0.8], [0, 0], gt=GT[:1], gt_labels=(0,))
    assert coco_average_precision([dup], thresholds=(0.5,))[0.5] == pytest.approx(1.0)  # dup ranked after the hit
    dup_first = image([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]],
                      [0.5, 0.4, 0.9], [0, 0, 0], gt=GT[:1], gt_labels=(0,))
    assert coco_average_precision([dup_first], thresholds=(0.5,))[0.5] == pytest.approx(0.5)
    wrong = image([[0.0, 0.0, 10.0, 10.0]], [0.9], [1], gt=GT[:1], gt_labels=(0,))
    assert coco_average_precision([wrong], thresholds=(0.5,))[0.5] == 0.0


def test_loose_box_counts_at_low_threshold_only():
    im = image([[0.0, 0.0, 10.0, 13.0]], [0.9], [0], gt=GT[:1], gt_labels=(0,))  # IoU 10/13 = 0.769
    ap = coco_average_precision([im])
    assert ap[0.75] == pytest.approx(1.0) and ap[0.8] == 0.0


def test_max_dets_drops_low_scores():
    im = image([[50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 10.0, 10.0]], [0.9, 0.1], [0, 0], gt=GT[:1], gt_labels=(0,))
    assert coco_average_precision([im], thresholds=(0.5,), max_dets=1)[0.5] == 0.0
    with pytest.raises(InputError):
        coco_average_precision([im], thresholds=(0.0,))


def test_scene_generator_is_seeded_and_in_spec():
    spec = SceneSpec()
    a, b = make_scenes(3, seed=7, spec=spec), make_scenes(3, seed=7, spec=spec)
    assert all(torch.equal(x.boxes, y.boxes) and torch.equal(x.scores, y.scores) for x, y in zip(a, b))
    for scene in a:
        g = len(scene.gt_boxes)
        assert 1 <= g <= spec.max_objects
        assert 20 * g + 3 * g <= len(scene.boxes) <= 60 * g + 3 * g
        assert scene.boxes.min() >= 0 and scene.boxes.max() <= spec.image_size
        assert scene.scores.min() >= 0 and scene.scores.max() <= 1
        assert set(scene.labels.tolist()) <= {0, 1, 2} and scene.anchors.shape == scene.boxes.shape
    first = make_scenes(2, seed=7, spec=SceneSpec(stage="first"))
    for scene in first:  # proposals are centred on their source anchor's centre (unless clipped)
        centre = (scene.boxes[:, :2] + scene.boxes[:, 2:]) / 2
        anchor_centre = (scene.anchors[:, :2] + scene.anchors[:, 2:]) / 2
        inside = (scene.boxes > 0).all(1) & (scene.boxes < spec.image_size).all(1)
        assert torch.allclose(centre[inside], anchor_centre[inside], atol=1e-3)
