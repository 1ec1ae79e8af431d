"""Seeded synthetic top-down "aerial" tiles for output-space UDA on segmentation (Domain Adaptation on
Semantic Segmentation for Aerial Images, arXiv:2012.02264, reproduced at small scale; the paper uses ISPRS
Potsdam <-> Vaihingen, which is not offline). Plain torch.

Five classes (ISPRS-like): 0 low vegetation (background), 1 road / impervious (straight bands), 2 building
(axis-aligned rectangles whose roof is split along its long axis into a lit and a shaded half), 3 tree
(textured round blobs), 4 car (small rectangles on roads). Every class has a 4-band reflectance
(blue, green, red, near-infrared). The **source** sensor shows (R, G, B), sharp, with fine texture; the
**target** sensor shows false colour (NIR, R, G) like Vaihingen's IRRG - a channel swap - with a coarser
texture, a brightness shift, a 3x3 blur and pixel noise. Layouts come from the same generator in both
domains; only the rendering differs.

Tiles: ``x`` (N, 3, size, size) float in [0, 1], ``y`` (N, size, size) int64 in [0, 5).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from honed.core.errors import InputError

NUM_CLASSES = 5
CLASS_NAMES = ("low_vegetation", "road", "building", "tree", "car")
# reflectance per class in bands (blue, green, red, near-infrared); vegetation is bright in NIR
REFLECTANCE = torch.tensor([
    [0.20, 0.45, 0.30, 0.70],  # low vegetation
    [0.45, 0.45, 0.45, 0.35],  # road
    [0.35, 0.35, 0.65, 0.45],  # building roof
    [0.10, 0.30, 0.12, 0.55],  # tree
    [0.75, 0.25, 0.20, 0.20],  # car
])
SOURCE_BANDS = (2, 1, 0)  # RGB
TARGET_BANDS = (3, 2, 1)  # IRRG false colour
TEXTURE_AMPLITUDE = torch.tensor([0.10, 0.04, 0.05, 0.18, 0.02])  # per class; trees are the most textured


@dataclass(frozen=True)
class TileStyle:
    """How a sensor renders a layout: displayed bands, texture cell size (px), brightness offset,
    blur (3x3 box filter when True) and Gaussian pixel-noise std."""

    bands: tuple[int, int, int] = SOURCE_BANDS
    texture_scale: int = 2
    brightness: float = 0.0
    blur: bool = False
    noise_std: float = 0.0


SOURCE_STYLE = TileStyle(SOURCE_BANDS, texture_scale=2, brightness=0.0, blur=False, noise_std=0.0)
TARGET_STYLE = TileStyle(TARGET_BANDS, texture_scale=8, brightness=0.12, blur=True, noise_std=0.04)


@dataclass(frozen=True)
class TileSet:
    """Aerial tiles (arXiv:2012.02264 reproduction): ``x`` (N, 3, H, W) in [0, 1], ``y`` (N, H, W) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """One integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def _draw_layout(size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One tile's label map (size, size) and roof-shade map (1 on the shaded half of each roof)."""
    labels = torch.zeros(size, size, dtype=torch.long)
    shade = torch.zeros(size, size)
    for _ in range(_randint(gen, 1, 3)):  # buildings, drawn first so roads cut through them
        h, w = _randint(gen, 5, 10), _randint(gen, 5, 10)
        r, c = _randint(gen, 0, size - h), _randint(gen, 0, size - w)
        labels[r:r + h, c:c + w] = 2
        if h >= w:
            shade[r:r + h, c + w // 2:c + w] = 1.0
        else:
            shade[r + h // 2:r + h, c:c + w] = 1.0
    road = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(_randint(gen, 1, 2)):
        width, pos = _randint(gen, 3, 5), _randint(gen, 0, size - 5)
        if bool(torch.rand(1, generator=gen) < 0.5):
            road[pos:pos + width, :] = True
        else:
            road[:, pos:pos + width] = True
    labels[road] = 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(_randint(gen, 1, 4)):  # trees grow on vegetation only
        radius = 1.5 + 2.5 * float(torch.rand(1, generator=gen))
        cy, cx = _randint(gen, 0, size - 1), _randint(gen, 0, size - 1)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        labels[blob & (labels == 0)] = 3
    cells = road.nonzero()
    for _ in range(_randint(gen, 0, 3) if len(cells) else 0):  # cars sit on roads
        r, c = cells[_randint(gen, 0, len(cells) - 1)].tolist()
        h, w = (2, 3) if bool(torch.rand(1, generator=gen) < 0.5) else (3, 2)
        patch = road[r:r + h, c:c + w]
        labels[r:r + h, c:c + w][patch] = 4
    return labels, shade


def draw_layouts(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded layouts (arXiv:2012.02264 reproduction): labels (n, size, size) int64 and shade maps (n, size, size)."""
    if n < 1 or size < 12:
        raise InputError(f"need n >= 1 and size >= 12, got n={n}, size={size}")
    gen = torch.Generator().manual_seed(seed)
    pairs = [_draw_layout(size, gen) for _ in range(n)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def smooth_noise(n: int, size: int, scale: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) noise in [-1, 1] constant-ish over ``scale``-px cells (bilinear upsampling)."""
    cells = max(1, size // max(1, scale))
    coarse = torch.rand(n, 1, cells, cells, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def render_tiles(labels: torch.Tensor, shade: torch.Tensor, style: TileStyle, seed: int = 0,
                 device: torch.device | str | None = None) -> TileSet:
    """Paint layouts with a sensor style (arXiv:2012.02264 reproduction). labels (N, H, W) int in [0, 5),
    shade (N, H, W) in [0, 1] -> TileSet with x (N, 3, H, W) in [0, 1]."""
    if labels.dim() != 3 or shade.shape != labels.shape:
        raise InputError(f"labels and shade must both be (N, H, W), got {tuple(labels.shape)}, {tuple(shade.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES:
        raise InputError(f"labels must lie in [0, {NUM_CLASSES})")
    gen = torch.Generator().manual_seed(seed)
    n, size = labels.shape[0], labels.shape[-1]
    bands = REFLECTANCE[:, list(style.bands)]  # (C, 3)
    image = bands[labels].permute(0, 3, 1, 2)  # (N, 3, H, W)
    texture = smooth_noise(n, size, style.texture_scale, gen)
    image = image * (1 + TEXTURE_AMPLITUDE[labels].unsqueeze(1) * texture * 2)
    image = image * (1 - 0.35 * shade.unsqueeze(1))  # shaded half of each roof
    image = image + style.brightness
    if style.blur:
        image = F.avg_pool2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    if style.noise_std > 0:
        image = image + style.noise_std * torch.randn(image.shape, generator=gen)
    return TileSet(image.clamp(0, 1).to(device), labels.clone().to(device))


def make_tiles(n: int, style: TileStyle, seed: int, size: int = 32,
               device: torch.device | str | None = None) -> TileSet:
    """``n`` seeded tiles (arXiv:2012.02264 reproduction) of one style: layouts from ``seed``, rendering
    noise from ``seed + 1``. x (n, 3, size, size) in [0, 1], y (n, size, size) int64."""
    labels, shade = draw_layouts(n, size, seed)
    return render_tiles(labels, shade, style, seed + 1, device)


@dataclass(frozen=True)
class AerialDomains:
    """Source labeled tiles, target adaptation tiles (labels kept for the oracle arm only), a labeled
    target validation split (lambda selection only) and the target test split (final evaluation only)."""

    source: TileSet
    target_train: TileSet
    target_val: TileSet
    target_test: TileSet


def make_aerial_domains(n_source: int = 400, n_target: int = 400, n_val: int = 100, n_test: int = 200,
                        size: int = 32, seed: int = 0, device: torch.device | str | None = None) -> AerialDomains:
    """The card's split sizes (400 / 400 / 200 test, plus a stated 100-tile labeled target validation
    split), every split from its own disjoint layout seed; arXiv:2012.02264 reproduction."""
    base = 1000 * seed
    return AerialDomains(make_tiles(n_source, SOURCE_STYLE, base + 11, size, device),
                         make_tiles(n_target, TARGET_STYLE, base + 23, size, device),
                         make_tiles(n_val, TARGET_STYLE, base + 37, size, device),
                         make_tiles(n_test, TARGET_STYLE, base + 41, size, device))
