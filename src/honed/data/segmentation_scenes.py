"""Seeded synthetic segmentation scenes with domain styles, for the SSDDA (card 05) and few-shot
segmentation with query priors (card 34, arXiv:2108.05293) reproductions, in plain torch.

A scene is a ``size`` x ``size`` RGB image in [0, 1] and a label map: 0 = background, ``k + 1`` = shape
``shapes[k]`` (outlines from :func:`honed.data.instance_scenes.shape_mask`). ``objects`` (inclusive
range) shapes of random class, radius (a fraction of ``size``), position and rotation are painted in
order, so later shapes occlude earlier ones and the label map follows the visible shape; a shape that
ends up fully hidden leaves no label. A :class:`SceneStyle` sets the domain:

* object colour: a fixed hue per class (``class_hues``, degrees, rotated by ``hue_shift`` and jittered
  by +-``hue_jitter``), or a random colour per object when ``class_hues`` is None;
* object texture and background, each drawn per object / image from the style's kinds: ``plain``
  (one flat colour), ``stripes`` (a rotated grating of two colours), ``checker``, ``noise`` (smooth
  colour noise), ``gradient`` (a linear ramp between two colours);
* ``background_contrast`` scales the background texture about its mean colour (1 = as drawn);
* a Gaussian blur of std ``blur_sigma`` px and pixel noise of std ``noise_std``, applied last.

:data:`SOURCE_STYLE` / :data:`TARGET_STYLE` are card 05's domains (flat saturated class colours on a
plain background vs hue-rotated colours on textured backgrounds, blurred and noisy);
:data:`TEXTURED_STYLE` is card 34's "shapes on textures" (class told by shape only; background textures at
0.4 contrast: at full contrast a support-only few-shot head stayed below the all-foreground map on card 34's
novel-class validation episodes).
"""
import colorsys
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from honed.core.errors import InputError, check_count
from honed.robust.corruptions import blur
from honed.data.instance_scenes import shape_mask, smooth_noise, uniform

TEXTURES = ("plain", "stripes", "checker", "noise", "gradient")
SSDA_SHAPES = ("circle", "square", "triangle")  # card 05: background, disk, square, triangle
FEWSHOT_SHAPES = ("circle", "square", "triangle", "star", "ring", "cross",  # card 34 base classes 0-5
                  "ellipse", "hexagon", "pentagon", "crescent")  # novel 6-9 (L and T -> pentagon, crescent)


@dataclass(frozen=True)
class SceneStyle:
    """One domain's look (see the module docstring). Hues in degrees; ranges are inclusive (lo, hi)."""

    class_hues: tuple[float, ...] | None = None
    hue_shift: float = 0.0
    hue_jitter: float = 0.0
    saturation: tuple[float, float] = (0.5, 1.0)
    value: tuple[float, float] = (0.5, 1.0)
    object_textures: tuple[str, ...] = ("plain",)
    backgrounds: tuple[str, ...] = ("plain",)
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    background_contrast: float = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.object_textures + self.backgrounds) - set(TEXTURES)
        if unknown or not self.object_textures or not self.backgrounds:
            raise InputError(f"textures must be non-empty and from {TEXTURES}, got {sorted(unknown)}")
        if self.blur_sigma < 0 or self.noise_std < 0 or self.hue_jitter < 0 or not 0 <= self.background_contrast <= 1:
            raise InputError("blur_sigma, noise_std and hue_jitter must be >= 0 and background_contrast in [0, 1]")


SOURCE_STYLE = SceneStyle(class_hues=(0.0, 120.0, 240.0), hue_jitter=15.0, saturation=(0.85, 1.0),
                          value=(0.85, 1.0), backgrounds=("plain",))
TARGET_STYLE = SceneStyle(class_hues=(0.0, 120.0, 240.0), hue_shift=90.0, hue_jitter=15.0, saturation=(0.5, 0.9),
                          value=(0.6, 1.0), backgrounds=("stripes", "gradient", "noise"), blur_sigma=0.5,
                          noise_std=0.04, background_contrast=0.35)
TEXTURED_STYLE = SceneStyle(object_textures=("plain", "stripes", "checker", "noise"),
                            backgrounds=("stripes", "checker", "noise", "gradient"), background_contrast=0.4)


@dataclass(frozen=True)
class SegmentationScenes:
    """``x`` (N, 3, size, size) float in [0, 1]; ``y`` (N, size, size) int64 in [0, len(shapes)], 0 =
    background, k + 1 = ``shapes[k]``."""

    x: torch.Tensor
    y: torch.Tensor
    shapes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int:
        """Label values including background: len(shapes) + 1."""
        return len(self.shapes) + 1

    def subset(self, index: "torch.Tensor | list[int]") -> "SegmentationScenes":
        """The scenes at ``index`` (positions), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        return SegmentationScenes(self.x[index], self.y[index], self.shapes)


def check_label_maps(labels: torch.Tensor, num_classes: int, images: torch.Tensor | None = None,
                     name: str = "labels") -> None:
    """Raise one InputError unless ``labels`` is an integer (N, H, W) map with values in [0, num_classes)
    (and, given ``images`` (N, C, H, W), the same N, H, W)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.dtype.is_floating_point \
            or labels.dtype == torch.bool or labels.numel() == 0:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"{name} must be a non-empty integer (N, H, W) label map, got {shape}")
    if images is not None and (images.dim() != 4 or images.shape[:1] + images.shape[2:] != labels.shape):
        raise InputError(f"{name} {tuple(labels.shape)} do not match images {tuple(images.shape)} (N, C, H, W)")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise InputError(f"{name} must lie in [0, {num_classes}), got values in [{low}, {high}]")


def _colour(gen: torch.Generator, style: SceneStyle, kind: int) -> torch.Tensor:
    if style.class_hues is None:
        return torch.rand(3, 1, 1, generator=gen)
    hue = style.class_hues[kind] + style.hue_shift + uniform(gen, -style.hue_jitter, style.hue_jitter)
    rgb = colorsys.hsv_to_rgb((hue / 360.0) % 1.0, uniform(gen, *style.saturation), uniform(gen, *style.value))
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)


def texture(gen: torch.Generator, kind: str, size: int, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(3, size, size) fill of texture ``kind`` (see :data:`TEXTURES`) from colours ``first``/``second`` (3, 1, 1)."""
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angle = uniform(gen, 0, math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == "plain":
        return first.expand(3, size, size).clone()
    if kind == "stripes":
        weight = (torch.sin(2 * math.pi * along / uniform(gen, 3.0, 8.0)) > 0).float()
    elif kind == "checker":
        cell = uniform(gen, 2.0, 6.0)
        weight = ((torch.div(xx, cell, rounding_mode="floor") + torch.div(yy, cell, rounding_mode="floor")) % 2).float()
    elif kind == "noise":
        return smooth_noise(gen, size, cells=int(torch.randint(3, 9, (1,), generator=gen)), contrast=0.9)
    else:  # gradient
        weight = (along - along.min()) / (along.max() - along.min()).clamp_min(1e-6)
    return first * weight + second * (1 - weight)


def _pick(gen: torch.Generator, kinds: tuple[str, ...]) -> str:
    return kinds[int(torch.randint(len(kinds), (1,), generator=gen))]


def make_segmentation_scene(gen: torch.Generator, style: SceneStyle, shapes: tuple[str, ...], size: int,
                            objects: tuple[int, int], radius: tuple[float, float],
                            classes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene (see the module docstring): image (3, size, size), label map (size, size) long; object
    classes drawn uniformly from ``classes`` (0-based indices into ``shapes``)."""
    background = _pick(gen, style.backgrounds)
    image = texture(gen, background, size, torch.rand(3, 1, 1, generator=gen), torch.rand(3, 1, 1, generator=gen))
    mean = image.mean((1, 2), keepdim=True)
    image = mean + style.background_contrast * (image - mean)
    labels = torch.zeros(size, size, dtype=torch.long)
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    for _ in range(int(torch.randint(objects[0], objects[1] + 1, (1,), generator=gen))):
        kind = classes[int(torch.randint(len(classes), (1,), generator=gen))]
        r = uniform(gen, *radius) * size
        cx, cy = uniform(gen, r * 0.5, size - r * 0.5), uniform(gen, r * 0.5, size - r * 0.5)
        angle = uniform(gen, 0, 2 * math.pi)
        dx, dy = (xx - cx) / r, (yy - cy) / r
        alpha = shape_mask(shapes[kind], math.cos(angle) * dx + math.sin(angle) * dy,
                           -math.sin(angle) * dx + math.cos(angle) * dy)
        fill = texture(gen, _pick(gen, style.object_textures), size, _colour(gen, style, kind),
                       torch.rand(3, 1, 1, generator=gen))
        image = image * (1 - alpha) + fill * alpha
        labels[alpha > 0.5] = kind + 1
    if style.blur_sigma > 0:
        image = blur(image[None], style.blur_sigma)[0]
    if style.noise_std > 0:
        image = image + style.noise_std * torch.randn(image.shape, generator=gen)
    return image.clamp(0, 1), labels


def make_segmentation_scenes(n: int, seed: int, style: SceneStyle = TEXTURED_STYLE,
                             shapes: tuple[str, ...] = SSDA_SHAPES, size: int = 32, objects: tuple[int, int] = (1, 4),
                             radius: tuple[float, float] = (0.1, 0.25),
                             classes: tuple[int, ...] | None = None) -> SegmentationScenes:
    """``n`` seeded scenes as :class:`SegmentationScenes`; the same arguments always give the same tensors.
    ``size`` >= 8; 1 <= objects[0] <= objects[1]; 0 < radius[0] <= radius[1] <= 0.5 (fractions of
    ``size``); ``classes`` = the 0-based shape indices objects are drawn from (default: all)."""
    check_count(n, "n")
    if check_count(size, "size") < 8:
        raise InputError(f"size must be >= 8, got {size}")
    if not 1 <= objects[0] <= objects[1]:
        raise InputError(f"objects must be an inclusive range (lo, hi) with 1 <= lo <= hi, got {objects}")
    if not 0 < radius[0] <= radius[1] <= 0.5:
        raise InputError(f"radius must be (lo, hi) fractions of the size with 0 < lo <= hi <= 0.5, got {radius}")
    classes = tuple(range(len(shapes))) if classes is None else tuple(classes)
    if not classes or not set(classes) <= set(range(len(shapes))):
        raise InputError(f"classes must be a non-empty subset of range({len(shapes)}), got {classes}")
    if style.class_hues is not None and len(style.class_hues) < len(shapes):
        raise InputError(f"the style has {len(style.class_hues)} class hues for {len(shapes)} shapes")
    gen = torch.Generator().manual_seed(seed)
    scenes = [make_segmentation_scene(gen, style, shapes, size, objects, radius, classes) for _ in range(n)]
    return SegmentationScenes(torch.stack([s[0] for s in scenes]), torch.stack([s[1] for s in scenes]), tuple(shapes))


def make_ssda_splits(seed: int = 0, n_source: int = 400, n_target_labeled: int = 10, n_target_unlabeled: int = 400,
                     n_target_test: int = 200, n_source_test: int = 150, n_target_val: int = 100,
                     size: int = 32) -> dict[str, SegmentationScenes]:
    """Card 05's (SSDDA, Chen et al. 2021) semi-supervised domain-adaptation splits, each from its own seeded
    stream: "source" (:data:`SOURCE_STYLE`), "target_labeled", "target_unlabeled" (labels kept for diagnostics
    only), "target_test" (:data:`TARGET_STYLE`), "source_test" (the domain-gap check) and "target_val"
    (labeled target scenes for design and selection decisions, never the test split)."""
    counts = {"source": (n_source, SOURCE_STYLE), "target_labeled": (n_target_labeled, TARGET_STYLE),
              "target_unlabeled": (n_target_unlabeled, TARGET_STYLE), "target_test": (n_target_test, TARGET_STYLE),
              "source_test": (n_source_test, SOURCE_STYLE), "target_val": (n_target_val, TARGET_STYLE)}
    return {name: make_segmentation_scenes(n, seed * 1000 + i, style, SSDA_SHAPES, size)
            for i, (name, (n, style)) in enumerate(counts.items())}
