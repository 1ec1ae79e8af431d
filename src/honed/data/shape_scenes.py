"""Seeded synthetic multi-object segmentation scenes for the ComplexMix reproduction (ComplexMix,
arXiv:2101.10156, card "Reproduction at small scale"), in plain torch.

Each scene is a ``size`` x ``size`` RGB image in [0, 1] with a dense label map over
``CLASSES = (background, disk, square, triangle, bar)``. The background is textured (smooth colour noise
plus a faint random grating); 2-5 objects of random class, size, rotation and colour are painted in
order, so later objects occlude earlier ones (the label map follows the visible object). A per-image
colour jitter (brightness, contrast and per-channel gain) is applied last. Object colour is drawn
independently of class, so the class is told by shape only.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from honed.core.errors import InputError, check_count
from honed.data.instance_scenes import polygon_radius, uniform

CLASSES = ("background", "disk", "square", "triangle", "bar")
NUM_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class ShapeSplit:
    """Images (N, 3, size, size) float in [0, 1] and label maps (N, size, size) long in [0, NUM_CLASSES)."""

    x: torch.Tensor
    y: torch.Tensor


def _background(size: int, gen: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(1, 3, 4, 4, generator=gen)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    angle, freq = uniform(gen, 0, math.pi), uniform(gen, 0.3, 1.2)
    grating = torch.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    fine = 0.08 * torch.randn(3, size, size, generator=gen)
    return (0.35 + 0.5 * smooth + 0.12 * grating + fine).clamp(0, 1)


def shape_region(kind: int, u: torch.Tensor, v: torch.Tensor, radius: float) -> torch.Tensor:
    """Boolean region of class ``kind`` in rotated, centred pixel coordinates u, v."""
    if kind == 1:  # disk
        return u * u + v * v <= radius * radius
    if kind == 2:  # square of half-side ~ 0.85 radius
        half = 0.85 * radius
        return (u.abs() <= half) & (v.abs() <= half)
    if kind == 3:  # equilateral triangle inscribed in the circle of this radius
        r, theta = torch.sqrt(u * u + v * v), torch.atan2(v, u)
        return r <= 1.15 * radius * polygon_radius(theta, 3)
    return (u.abs() <= 1.6 * radius) & (v.abs() <= max(1.2, 0.3 * radius))  # bar: long thin rectangle


def make_scene(gen: torch.Generator, size: int = 32, objects: tuple[int, int] = (2, 5),
               radius: tuple[float, float] = (3.0, 7.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene (ComplexMix arXiv:2101.10156 reproduction data): image (3, size, size) in [0, 1] and
    label map (size, size) long; ``objects`` = inclusive range of the object count."""
    image, labels = _background(size, gen), torch.zeros(size, size, dtype=torch.long)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    for _ in range(int(torch.randint(objects[0], objects[1] + 1, (1,), generator=gen))):
        kind = int(torch.randint(1, NUM_CLASSES, (1,), generator=gen))
        r = uniform(gen, *radius)
        cx, cy, angle = uniform(gen, 2, size - 2), uniform(gen, 2, size - 2), uniform(gen, 0, 2 * math.pi)
        dx, dy = xx - cx, yy - cy
        u, v = dx * math.cos(angle) + dy * math.sin(angle), -dx * math.sin(angle) + dy * math.cos(angle)
        region = shape_region(kind, u, v, r)
        colour = torch.rand(3, 1, generator=gen)
        shade = colour + 0.05 * torch.randn(3, int(region.sum()), generator=gen)
        image[:, region] = shade.clamp(0, 1)
        labels[region] = kind
    brightness, contrast = uniform(gen, -0.1, 0.1), uniform(gen, 0.8, 1.2)
    gain = 1 + 0.1 * (2 * torch.rand(3, 1, 1, generator=gen) - 1)
    mean = image.mean()
    image = ((image - mean) * contrast + mean + brightness) * gain
    return image.clamp(0, 1), labels


def make_shape_scenes(n: int, seed: int = 0, size: int = 32, device: torch.device | str | None = None) -> ShapeSplit:
    """``n`` seeded scenes (ComplexMix arXiv:2101.10156 reproduction data) as a :class:`ShapeSplit`;
    the same (n, seed, size) always gives the same tensors. ``size`` >= 8."""
    check_count(n, "n")
    if check_count(size, "size") < 8:
        raise InputError(f"size must be >= 8, got {size}")
    gen = torch.Generator().manual_seed(seed)
    scenes = [make_scene(gen, size) for _ in range(n)]
    return ShapeSplit(torch.stack([s[0] for s in scenes]).to(device), torch.stack([s[1] for s in scenes]).to(device))


def make_shape_splits(seed: int = 0, n_labeled: int = 30, n_unlabeled: int = 500, n_test: int = 200,
                      size: int = 32, device: torch.device | str | None = None) -> dict[str, ShapeSplit]:
    """The card's splits (ComplexMix arXiv:2101.10156): {"labeled", "unlabeled", "test"} drawn from
    independent seeded streams (labels of "unlabeled" are kept only for diagnostics)."""
    counts = {"labeled": n_labeled, "unlabeled": n_unlabeled, "test": n_test}
    return {name: make_shape_scenes(n, seed * 1000 + i, size, device) for i, (name, n) in enumerate(counts.items())}
