"""PSRR-MaxpoolNMS (arXiv:2105.12990) on detector-style output in normalised coordinates.

A one-stage detector head typically emits, per image, many candidate boxes as (cx, cy, w, h) in [0, 1]
of the image, a score and a class each. PSRR-MaxpoolNMS suppresses duplicates with max-pools over
anchor score maps instead of GreedyNMS's sequential IoU loop; its anchors and stride are in pixels, so
normalised boxes go in with ``normalized=True`` and the image size. Compared here with GreedyNMS (IoU
0.5) on simulated output: jittered candidates around ground-truth objects plus false positives.
``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch

from honed.core.errors import InputError
from honed.vision.nms import greedy_nms, psrr_maxpool_nms

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
HEIGHT, WIDTH = 480, 640


def detector_output(generator: torch.Generator, objects: int = 8, per_object: int = 40, classes: int = 3):
    """(cxcywh in [0, 1], scores, classes): candidates jittered around ``objects`` ground-truth boxes."""
    centre = torch.rand(objects, 2, generator=generator) * 0.8 + 0.1
    size = torch.rand(objects, 2, generator=generator) * 0.25 + 0.05
    label = torch.randint(classes, (objects,), generator=generator)
    pick = torch.arange(objects).repeat_interleave(per_object)
    jitter = torch.randn(len(pick), 4, generator=generator)
    cxcy = centre[pick] + 0.08 * size[pick] * jitter[:, :2]
    wh = size[pick] * (1 + 0.1 * jitter[:, 2:])
    score = (1 - jitter.abs().mean(1) / 3).clamp(0, 1) * torch.rand(len(pick), generator=generator).sqrt()
    false = torch.rand(objects * 4, 4, generator=generator) * torch.tensor([1.0, 1.0, 0.2, 0.2])
    false_score = 0.3 * torch.rand(len(false), generator=generator)
    false_label = torch.randint(classes, (len(false),), generator=generator)
    return (torch.cat([torch.cat([cxcy, wh], 1), false]), torch.cat([score, false_score]),
            torch.cat([label[pick], false_label]))


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)


generator = torch.Generator().manual_seed(0)
kept_psrr = kept_greedy = shared = 0
for image in range(2 if TINY else 50):
    raw, scores, classes = detector_output(generator)
    boxes = cxcywh_to_xyxy(raw)  # still normalised; may overshoot [0, 1] at the borders
    if image == 0:
        try:
            psrr_maxpool_nms(boxes, scores, classes=classes)  # pixel anchors, normalised boxes: refused
        except InputError as err:
            print(f"without normalized=True: {err}")
    keep = psrr_maxpool_nms(boxes, scores, classes=classes, normalized=True, image_size=(HEIGHT, WIDTH))
    reference = greedy_nms(boxes, scores, 0.5, classes=classes)  # IoU is unit-free: any coordinates
    kept_psrr, kept_greedy = kept_psrr + len(keep), kept_greedy + len(reference)
    shared += len(set(keep.tolist()) & set(reference.tolist()))
print(f"PSRR-MaxpoolNMS kept {kept_psrr} boxes, GreedyNMS {kept_greedy}; {shared} kept by both "
      f"({shared / max(kept_greedy, 1):.0%} of greedy's)")
