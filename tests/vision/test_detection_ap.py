"""COCO-style AP of the PSRR-MaxpoolNMS experiment (arXiv:2105.12990) on hand examples, and the
seeded synthetic scene generator."""
import pytest
import torch

from honed.core.errors import InputError
from honed.vision.detection_ap import COCO_THRESHOLDS, ImageDetections, box_iou, coco_average_precision
from honed.data.synthetic_scenes import SceneSpec, make_scenes

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


def random_images(seed: int, n_images: int = 6, classes: int = 3) -> list[ImageDetections]:
    gen = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(n_images):
        g, d = int(torch.randint(0, 6, (1,), generator=gen)), int(torch.randint(0, 25, (1,), generator=gen))
        gt = torch.rand(g, 4, generator=gen) * 50
        gt[:, 2:] = gt[:, :2] + 2 + torch.rand(g, 2, generator=gen) * 20
        jitter = torch.randn(d, 4, generator=gen) * 3
        base = gt[torch.randint(0, max(g, 1), (d,), generator=gen)] if g else torch.rand(d, 4, generator=gen) * 50
        det = base + jitter
        det[:, 2:] = torch.maximum(det[:, 2:], det[:, :2] + 0.5)
        images.append(ImageDetections(det, torch.rand(d, generator=gen), torch.randint(0, classes, (d,), generator=gen),
                                      gt, torch.randint(0, classes, (g,), generator=gen)))
    return images


def pycocotools_ap(images: list[ImageDetections], max_dets: int) -> dict[float, float]:
    """AP per IoU threshold from pycocotools' COCOeval (area range 'all'), mean over classes with GT."""
    import numpy as np

    coco = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]  # noqa: E731
    anns, dets = [], []
    for i, im in enumerate(images):
        for box, label in zip(im.gt_boxes, im.gt_labels):
            w = xywh(box)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label), "bbox": w,
                         "area": w[2] * w[3], "iscrowd": 0})
        for box, score, label in zip(im.boxes, im.scores, im.labels):
            dets.append({"image_id": i, "category_id": int(label), "bbox": xywh(box), "score": float(score)})
    gt = coco.COCO()
    gt.dataset = {"images": [{"id": i} for i in range(len(images))], "annotations": anns,
                  "categories": [{"id": c} for c in range(3)]}
    gt.createIndex()
    evaluator = cocoeval.COCOeval(gt, gt.loadRes(dets) if dets else coco.COCO(), "bbox")
    evaluator.params.maxDets = [max_dets]
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 0]  # (T, R, K) at area 'all'
    out = {}
    for t_index, t in enumerate(evaluator.params.iouThrs):
        per_class = [precision[t_index, :, k].mean() for k in range(precision.shape[2]) if precision[t_index, 0, k] > -1]
        out[round(float(t), 2)] = float(np.mean(per_class))
    return out


@pytest.mark.parametrize("seed, max_dets", [(0, 100), (1, 100), (2, 5), (3, 2)])
def test_average_precision_equals_pycocotools(seed, max_dets, capsys):
    images = random_images(seed)
    ours = coco_average_precision(images, max_dets=max_dets)
    theirs = pycocotools_ap(images, max_dets)
    capsys.readouterr()  # COCOeval prints its progress
    for t in COCO_THRESHOLDS:
        assert ours[t] == pytest.approx(theirs[t], abs=1e-12), (t, ours[t], theirs[t])
