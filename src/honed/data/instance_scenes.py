"""Offline data of the DASR instance-search reproduction (arXiv:2002.00185), all seeded and generated in torch.

* :func:`make_shape_dataset`: the pre-training set, 20 classes = 10 shape outlines x {solid, striped}, random
  colours, position, size and rotation on a smooth colour-noise background (64x64, RGB in [0, 1]).
* :func:`make_instances`: 20 search instances unseen in pre-training, as RGBA (4, 64, 64): 12 crops of
  scikit-learn's two sample photos (china, flower; 6 each, from the left 60% of each photo) and 8
  procedural objects (random smooth blob outline filled with a 3-colour grating texture). scikit-image is
  not installed in this environment, so its sample images (astronaut, coffee, ...) named by the card are
  replaced by the procedural objects.
* :func:`make_instance_scenes`: cluttered database images (size x size): a random crop of the right 40%
  of a photo (never overlapping an instance crop) plus 2-5 distractor shapes, with 1-3 distinct instances
  pasted at width 10-40% of the image, rotation +-15 degrees and brightness x U(0.75, 1.25); GT boxes
  (xyxy pixels) are the pasted alpha's bounding boxes. :func:`query_images` gives one clean crop each.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from honed.core.errors import InputError

SHAPES = ("circle", "ellipse", "triangle", "square", "pentagon", "hexagon", "star", "ring", "cross", "crescent")
NUM_SHAPE_CLASSES = 2 * len(SHAPES)
PHOTO_SPLIT = 0.6  # instance crops come from the left 60% of a photo's width, backgrounds from the rest


def uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def polygon_radius(theta: torch.Tensor, sides: int) -> torch.Tensor:
    """Distance from the centre to the edge of a regular ``sides``-gon inscribed in the unit circle (a vertex
    at angle 0), along direction ``theta`` (radians, any shape)."""
    return math.cos(math.pi / sides) / torch.cos(torch.remainder(theta, 2 * math.pi / sides) - math.pi / sides)


def shape_mask(kind: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Soft mask (same shape as u) of a unit-radius ``kind`` at normalised coordinates u, v."""
    r, theta = torch.sqrt(u * u + v * v), torch.atan2(v, u)
    sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
    if kind in sides:
        inside = r - polygon_radius(theta, sides[kind])
    elif kind == "circle":
        inside = r - 1
    elif kind == "ellipse":
        inside = torch.sqrt(u * u + (v / 0.5) ** 2) - 1
    elif kind == "star":
        inside = r - (0.4 + 0.6 * (0.5 + 0.5 * torch.cos(5 * theta)) ** 2)
    elif kind == "ring":
        inside = torch.maximum(r - 1, 0.55 - r)
    elif kind == "cross":
        bar = torch.minimum(u.abs(), v.abs()) - 0.33
        inside = torch.maximum(bar, torch.maximum(u.abs(), v.abs()) - 1)
    elif kind == "crescent":
        inside = torch.maximum(r - 1, 0.8 - torch.sqrt((u - 0.45) ** 2 + v * v))
    else:
        raise InputError(f"unknown shape {kind!r}; choose one of {SHAPES}")
    return (0.5 - 8 * inside).clamp(0, 1)


def pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    return centres[None, :].expand(size, size), centres[:, None].expand(size, size)


def draw_shape(canvas: torch.Tensor, kind: str, striped: bool, centre: tuple[float, float], radius: float,
               gen: torch.Generator) -> torch.Tensor:
    """Paint a randomly coloured and rotated ``kind`` onto ``canvas`` (3, S, S) in place; returns its mask."""
    xs, ys = pixel_grid(canvas.shape[-1])
    angle = uniform(gen, 0, 2 * math.pi)
    dx, dy = (xs - centre[0]) / radius, (ys - centre[1]) / radius
    u, v = math.cos(angle) * dx + math.sin(angle) * dy, -math.sin(angle) * dx + math.cos(angle) * dy
    mask = shape_mask(kind, u, v)
    colour_a, colour_b = torch.rand(3, 1, 1, generator=gen), torch.rand(3, 1, 1, generator=gen)
    fill = colour_a.expand_as(canvas)
    if striped:
        period, phase = uniform(gen, 0.35, 0.6), uniform(gen, 0, 2 * math.pi)
        stripes = (torch.sin(2 * math.pi * u / period + phase) > 0).float()
        fill = colour_a * stripes + colour_b * (1 - stripes)
    canvas.mul_(1 - mask).add_(fill * mask)
    return mask


def smooth_noise(gen: torch.Generator, size: int, cells: int = 4, contrast: float = 0.5) -> torch.Tensor:
    """(3, size, size) smooth colour field: bilinear upsampling of a cells x cells random grid."""
    base = torch.rand(1, 3, cells, cells, generator=gen)
    field = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)[0]
    return (0.5 + contrast * (field - 0.5)).clamp(0, 1)


def make_shape_dataset(per_class: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """DASR pre-training data (arXiv:2002.00185 reproduction): (N, 3, size, size) in [0, 1] and labels (N,)
    in [0, 20): label = 2 * shape index + striped. Shape radius 20-40% of the image."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for label in range(NUM_SHAPE_CLASSES):
        kind, striped = SHAPES[label // 2], bool(label % 2)
        for _ in range(per_class):
            canvas = smooth_noise(gen, size)
            radius = uniform(gen, 0.2, 0.4) * size
            centre = (uniform(gen, radius * 0.8, size - radius * 0.8), uniform(gen, radius * 0.8, size - radius * 0.8))
            draw_shape(canvas, kind, striped, centre, radius, gen)
            images.append(canvas)
            labels.append(label)
    order = torch.randperm(len(images), generator=gen)
    return torch.stack(images)[order], torch.tensor(labels)[order]


def load_photos() -> list[torch.Tensor]:
    """scikit-learn's offline sample photos (china, flower) as (3, 427, 640) float tensors in [0, 1]."""
    from sklearn.datasets import load_sample_images

    return [torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 for img in load_sample_images().images]


def photo_crops(photo: torch.Tensor, count: int, gen: torch.Generator, side: int = 96,
                out: int = 64) -> list[torch.Tensor]:
    """``count`` RGBA crops (4, out, out) of disjoint side x side cells in the left part of ``photo``,
    drawn at random among the most textured half of the cells."""
    h, w = photo.shape[-2:]
    cells = [(r, c) for r in range(0, h - side + 1, side) for c in range(0, int(w * PHOTO_SPLIT) - side + 1, side)]
    stds = torch.tensor([float(photo[:, r:r + side, c:c + side].std()) for r, c in cells])
    textured = torch.argsort(stds, descending=True)[:max(count, len(cells) // 2)]
    chosen = textured[torch.randperm(len(textured), generator=gen)[:count]]
    crops = []
    for i in chosen.tolist():
        r, c = cells[i]
        rgb = F.interpolate(photo[None, :, r:r + side, c:c + side], size=(out, out), mode="bilinear",
                            antialias=True, align_corners=False)[0]
        crops.append(torch.cat([rgb.clamp(0, 1), torch.ones(1, out, out)]))
    return crops


def procedural_object(gen: torch.Generator, out: int = 64) -> torch.Tensor:
    """RGBA (4, out, out): random smooth blob outline with a 3-colour grating texture."""
    xs, ys = pixel_grid(out)
    u, v = (xs - out / 2) / (out / 2), (ys - out / 2) / (out / 2)
    r, theta = torch.sqrt(u * u + v * v), torch.atan2(v, u)
    edge = torch.full_like(r, 0.8)
    for k in (2, 3, 4):
        edge = edge + uniform(gen, -0.1, 0.1) * torch.cos(k * theta + uniform(gen, 0, 2 * math.pi))
    alpha = (0.5 - 12 * (r - edge)).clamp(0, 1)
    t = torch.zeros_like(r)
    for _ in range(3):
        angle, freq = uniform(gen, 0, math.pi), uniform(gen, 2.0, 9.0)
        t = t + torch.sin(freq * (u * math.cos(angle) + v * math.sin(angle)) + uniform(gen, 0, 2 * math.pi))
    t = (t / 3 + 1) / 2  # [0, 1]
    palette = torch.rand(3, 3, generator=gen)  # 3 colours x RGB
    low = palette[0][:, None, None] * (1 - 2 * t).clamp_min(0)
    mid = palette[1][:, None, None] * (1 - (2 * t - 1).abs())
    high = palette[2][:, None, None] * (2 * t - 1).clamp_min(0)
    return torch.cat([(low + mid + high).clamp(0, 1), alpha[None]])


def make_instances(seed: int, photo_per_image: int = 6, procedural: int = 8) -> list[torch.Tensor]:
    """DASR search instances (arXiv:2002.00185 reproduction): a list of RGBA (4, 64, 64) tensors, photo crops
    first (``photo_per_image`` from each sklearn photo) then ``procedural`` generated objects."""
    gen = torch.Generator().manual_seed(seed)
    instances = [crop for photo in load_photos() for crop in photo_crops(photo, photo_per_image, gen)]
    return instances + [procedural_object(gen) for _ in range(procedural)]


@dataclass(frozen=True)
class InstanceScenes:
    """Database of the instance search: ``images`` (N, 3, S, S) in [0, 1]; per image ``boxes`` (G_i, 4)
    xyxy pixels and ``labels`` (G_i,) instance ids."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]

    def relevance(self, num_instances: int) -> torch.Tensor:
        """(num_instances, N) bool: instance q appears in image n."""
        rel = torch.zeros(num_instances, len(self.images), dtype=torch.bool)
        for n, lab in enumerate(self.labels):
            rel[lab, n] = True
        return rel


def background(photos: list[torch.Tensor], gen: torch.Generator, size: int) -> torch.Tensor:
    """Random crop (side 128-256 px) of the right part of a random photo, resized, plus 2-5 distractors."""
    photo = photos[int(torch.randint(len(photos), (), generator=gen))]
    h, w = photo.shape[-2:]
    left = int(w * PHOTO_SPLIT)
    side = int(torch.randint(128, min(h, w - left) + 1, (), generator=gen))
    r = int(torch.randint(0, h - side + 1, (), generator=gen))
    c = left + int(torch.randint(0, w - left - side + 1, (), generator=gen))
    canvas = F.interpolate(photo[None, :, r:r + side, c:c + side], size=(size, size), mode="bilinear",
                           antialias=True, align_corners=False)[0].clamp(0, 1).contiguous()
    for _ in range(int(torch.randint(2, 6, (), generator=gen))):
        radius = uniform(gen, 0.04, 0.14) * size
        centre = (uniform(gen, 0, size), uniform(gen, 0, size))
        draw_shape(canvas, SHAPES[int(torch.randint(len(SHAPES), (), generator=gen))],
                   bool(torch.randint(2, (), generator=gen)), centre, radius, gen)
    return canvas


def paste(canvas: torch.Tensor, rgba: torch.Tensor, centre: tuple[float, float], width: float, angle: float,
          brightness: float) -> torch.Tensor:
    """Warp ``rgba`` (4, s, s) to ``width`` px, rotate by ``angle`` radians, scale its RGB by ``brightness``
    and composite it onto ``canvas`` (3, S, S) in place at ``centre`` (x, y); returns its xyxy box."""
    size = canvas.shape[-1]
    scale = size / width
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = 2 * centre[0] / size - 1, 2 * centre[1] / size - 1
    a = torch.tensor([[cos, sin], [-sin, cos]]) * scale
    theta = torch.cat([a, -(a @ torch.tensor([[cx], [cy]]))], 1)
    grid = F.affine_grid(theta[None], [1, 4, size, size], align_corners=False)
    warped = F.grid_sample(rgba[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    alpha = warped[3:4]
    canvas.mul_(1 - alpha).add_((warped[:3] * brightness).clamp(0, 1) * alpha)
    rows, cols = torch.nonzero(alpha[0] > 0.5, as_tuple=True)
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)


def make_instance_scenes(instances: list[torch.Tensor], count: int, seed: int, size: int = 128,
                         width_range: tuple[float, float] = (0.1, 0.4), max_angle_deg: float = 15.0,
                         brightness_range: tuple[float, float] = (0.75, 1.25)) -> InstanceScenes:
    """DASR database (arXiv:2002.00185 reproduction): ``count`` cluttered images with 1-3 distinct pasted
    instances each (centres placed so a new box overlaps earlier ones by IoU <= 0.1 when possible)."""
    from honed.vision.detection_ap import box_iou

    if count < 1 or not instances:
        raise InputError("count >= 1 and at least one instance are required")
    gen = torch.Generator().manual_seed(seed)
    photos = load_photos()
    images, boxes, labels = [], [], []
    for _ in range(count):
        canvas = background(photos, gen, size)
        ids = torch.randperm(len(instances), generator=gen)[:int(torch.randint(1, 4, (), generator=gen))]
        placed = []
        for idx in ids.tolist():
            width = uniform(gen, *width_range) * size
            angle = math.radians(uniform(gen, -max_angle_deg, max_angle_deg))
            for _ in range(20):
                centre = (uniform(gen, 0.6 * width, size - 0.6 * width), uniform(gen, 0.6 * width, size - 0.6 * width))
                guess = torch.tensor([[centre[0] - width / 2, centre[1] - width / 2, centre[0] + width / 2,
                                       centre[1] + width / 2]])
                if not placed or box_iou(guess, torch.stack(placed)).max() <= 0.1:
                    break
            placed.append(paste(canvas, instances[idx], centre, width, angle, uniform(gen, *brightness_range)))
        images.append(canvas)
        boxes.append(torch.stack(placed))
        labels.append(ids)
    return InstanceScenes(torch.stack(images), boxes, labels)


def query_images(instances: list[torch.Tensor], size: int = 48, backdrop: float = 0.5) -> torch.Tensor:
    """One clean query per instance (DASR reproduction, arXiv:2002.00185): (Q, 3, size, size), the RGBA
    crop composited on a grey ``backdrop`` and resized; the query box is the whole image."""
    out = []
    for rgba in instances:
        rgb = rgba[:3] * rgba[3:] + backdrop * (1 - rgba[3:])
        out.append(F.interpolate(rgb[None], size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)
