"""Seeded synthetic shape-detection scenes for the Cycle Self-Training reproduction (CST, arXiv:2207.05334,
card 11 "Reproduction at small scale"), in plain torch.

A scene is a ``size`` x ``size`` RGB image in [0, 1]: a textured background (smooth colour noise plus
pixel noise) with ``objects`` (inclusive range) shapes of ``CLASSES`` (disk, square, triangle; drawn with
:func:`honed.data.instance_scenes.draw_shape`, random colour and rotation, circumradius
``side / 2`` for a side drawn uniformly in ``side``), painted in order so later shapes occlude earlier ones.
A new shape that would leave an earlier one less than ``min_visible`` of its pixels visible is redrawn
(up to ``tries`` times, else left out), so every labelled object stays mostly visible. Each object's box
is the xyxy extent (pixels, x2/y2 exclusive) of its visible pixels (mask > 0.5). Colour is drawn
independently of class, so the class is told by shape only. A per-image brightness / contrast jitter is
applied last.
"""
import math
from dataclasses import dataclass

import torch

from honed.core.errors import InputError, check_count
from honed.data.instance_scenes import draw_shape, smooth_noise, uniform

CLASSES = ("disk", "square", "triangle")
SHAPE_OF_CLASS = {"disk": "circle", "square": "square", "triangle": "triangle"}


@dataclass(frozen=True)
class DetectionScenes:
    """``images`` (N, 3, size, size) float in [0, 1]; per image ``boxes[i]`` (n_i, 4) float xyxy pixels
    and ``labels[i]`` (n_i,) int64 in [0, len(CLASSES))."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor | list[int]) -> "DetectionScenes":
        """The scenes at ``index`` (a list or 1-D tensor of positions), in that order."""
        index = [int(i) for i in index]
        return DetectionScenes(self.images[index], [self.boxes[i] for i in index], [self.labels[i] for i in index])


def visible_box(mask: torch.Tensor) -> torch.Tensor | None:
    """xyxy extent (x2, y2 exclusive) of the True pixels of ``mask`` (H, W), None when it has none."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return None
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def make_detection_scene(gen: torch.Generator, size: int = 64, objects: tuple[int, int] = (1, 4),
                         side: tuple[float, float] = (8.0, 20.0), min_visible: float = 0.5,
                         tries: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One scene (CST arXiv:2207.05334 reproduction data, see the module docstring): image (3, size, size),
    boxes (n, 4) and labels (n,)."""
    canvas = (smooth_noise(gen, size, cells=4, contrast=0.7) + 0.06 * torch.randn(3, size, size, generator=gen))
    canvas = canvas.clamp(0, 1)
    owner = torch.full((size, size), -1, dtype=torch.long)  # which object each pixel shows
    areas, kinds = [], []
    for _ in range(int(torch.randint(objects[0], objects[1] + 1, (1,), generator=gen))):
        for _ in range(tries):
            radius = uniform(gen, *side) / 2
            centre = (uniform(gen, radius * 0.6, size - radius * 0.6), uniform(gen, radius * 0.6, size - radius * 0.6))
            kind = int(torch.randint(len(CLASSES), (1,), generator=gen))
            trial = canvas.clone()
            mask = draw_shape(trial, SHAPE_OF_CLASS[CLASSES[kind]], False, centre, radius, gen) > 0.5
            after = torch.where(mask, len(areas), owner)
            if mask.any() and all(int((after == k).sum()) >= min_visible * a for k, a in enumerate(areas)):
                canvas, owner = trial, after
                areas.append(int(mask.sum()))
                kinds.append(kind)
                break
    boxes = [visible_box(owner == k) for k in range(len(areas))]
    keep = [k for k, b in enumerate(boxes) if b is not None]
    brightness, contrast = uniform(gen, -0.08, 0.08), uniform(gen, 0.85, 1.15)
    mean = canvas.mean()
    image = ((canvas - mean) * contrast + mean + brightness).clamp(0, 1)
    box_tensor = torch.stack([boxes[k] for k in keep]) if keep else torch.zeros(0, 4)
    return image, box_tensor, torch.tensor([kinds[k] for k in keep], dtype=torch.long)


def make_detection_scenes(n: int, seed: int, size: int = 64, objects: tuple[int, int] = (1, 4),
                          side: tuple[float, float] = (8.0, 20.0), min_visible: float = 0.5) -> DetectionScenes:
    """``n`` seeded scenes (CST arXiv:2207.05334 reproduction data); the same arguments always give the
    same tensors. ``size`` >= 16, 1 <= objects[0] <= objects[1], 2 <= side[0] <= side[1] <= size / 2,
    ``min_visible`` in (0, 1]."""
    check_count(n, "n")
    if check_count(size, "size") < 16:
        raise InputError(f"size must be >= 16, got {size}")
    if not 1 <= objects[0] <= objects[1]:
        raise InputError(f"objects must be an inclusive range (lo, hi) with 1 <= lo <= hi, got {objects}")
    if not 2 <= side[0] <= side[1] <= size / 2:
        raise InputError(f"side must be (lo, hi) with 2 <= lo <= hi <= size / 2 = {size / 2:g}, got {side}")
    if not 0 < min_visible <= 1 or math.isnan(min_visible):
        raise InputError(f"min_visible must lie in (0, 1], got {min_visible}")
    gen = torch.Generator().manual_seed(seed)
    scenes = [make_detection_scene(gen, size, objects, side, min_visible) for _ in range(n)]
    return DetectionScenes(torch.stack([s[0] for s in scenes]), [s[1] for s in scenes], [s[2] for s in scenes])


def make_ssod_splits(seed: int = 0, n_labeled: int = 60, n_unlabeled: int = 1500, n_test: int = 300,
                     size: int = 64) -> dict[str, DetectionScenes]:
    """The card's semi-supervised detection splits (CST arXiv:2207.05334): {"labeled", "unlabeled",
    "test"} from independent seeded streams (the unlabeled scenes' boxes are kept for diagnostics only)."""
    counts = {"labeled": n_labeled, "unlabeled": n_unlabeled, "test": n_test}
    return {name: make_detection_scenes(n, seed * 1000 + i, size) for i, (name, n) in enumerate(counts.items())}
