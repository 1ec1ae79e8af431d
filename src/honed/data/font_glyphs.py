"""Glyphs A-Z of the fonts that ship inside matplotlib, as outline graphs and rasters, for the font
completion reproduction (Font completion through graphs: "Font Completion and Manipulation by Cycling
Between Multi-Modality Representations", arXiv:2108.12965, card 29).

A *style* is a font file plus an affine transform (x-scale, shear). For each style and letter,
``matplotlib.textpath.TextPath`` gives the outline; its Bezier curves are polygonised, transformed,
normalised per glyph (larger side spans [margin, 1 - margin], centred; y up) and resampled to exactly N
points along the contours, allocated in proportion to contour length (at least 3 per contour). Per point
the features are (x, y, cos phi, sin phi) with phi the contour tangent, and a flag: 0 = the next point
is on the same contour, 1 = the contour ends here (2 = padding, used by :func:`rewind_pad`). Contours
are put in a canonical form [our reading]: counter-clockwise, starting at the topmost (then leftmost)
point, ordered by decreasing area. Rasters are size x size, ink = 1, drawn with the even-odd rule
from the dense polygons (4x4 supersampled). A font without the glyph is refused in one line.
"""
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from honed.core.errors import InputError, check_count

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FONT_FILES = tuple(f"{family}{suffix}.ttf" for family in ("DejaVuSans", "DejaVuSansMono", "DejaVuSerif")
                   for suffix in ("", "-Bold", "-Oblique" if family != "DejaVuSerif" else "-Italic",
                                  "-BoldOblique" if family != "DejaVuSerif" else "-BoldItalic")) + (
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf", "cmmi10.ttf")
TRANSFORMS = ((1.0, 0.0), (0.8, 0.25), (1.2, -0.25))  # (x-scale, shear): card range 0.8-1.2, +-0.25
EDGE, END, PAD = 0, 1, 2


def font_path(name: str) -> str:
    """Absolute path of a font shipped in matplotlib's mpl-data/fonts/ttf (or ``name`` if it is a path)."""
    import matplotlib

    path = name if os.path.isabs(name) else os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts",
                                                          "ttf", name)
    if not os.path.isfile(path):
        raise InputError(f"font {name!r} not found (looked at {path})")
    return path


@lru_cache(maxsize=None)
def glyph_polygons(font: str, char: str) -> tuple[np.ndarray, ...]:
    """Closed polygons (k_i, 2) of ``char`` in ``font`` (font units, y up), Beziers polygonised."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.ft2font import FT2Font
    from matplotlib.textpath import TextPath

    if not isinstance(char, str) or len(char) != 1:
        raise InputError(f"char must be one character, got {char!r}")
    path = font_path(font)
    if FT2Font(path).get_char_index(ord(char)) == 0:
        raise InputError(f"font {os.path.basename(path)} has no glyph for {char!r}")
    polys = [p[:-1] for p in TextPath((0, 0), char, size=1, prop=FontProperties(fname=path)).to_polygons()
             if len(p) >= 4 and abs(signed_area(p)) > 1e-6]
    if not polys:
        raise InputError(f"font {os.path.basename(path)} draws nothing for {char!r}")
    return tuple(polys)


def signed_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def canonical_contours(polys: list[np.ndarray]) -> list[np.ndarray]:
    """Counter-clockwise, starting at the topmost-then-leftmost vertex, ordered by decreasing area."""
    out = []
    for p in sorted(polys, key=lambda q: -abs(signed_area(q))):
        p = p if signed_area(p) > 0 else p[::-1]
        start = int(np.lexsort((p[:, 0], -p[:, 1]))[0])
        out.append(np.roll(p, -start, axis=0))
    return out


def styled_contours(font: str, char: str, transform: tuple[float, float] = (1.0, 0.0),
                    margin: float = 0.08) -> list[np.ndarray]:
    """The glyph's canonical contours after the style's affine map, normalised into [0, 1]^2 (y up)."""
    scale, shear = transform
    polys = [np.stack([scale * p[:, 0] + shear * p[:, 1], p[:, 1]], 1) for p in glyph_polygons(font, char)]
    allp = np.concatenate(polys)
    lo, hi = allp.min(0), allp.max(0)
    k = (1 - 2 * margin) / max(hi - lo)
    centre = (lo + hi) / 2
    return canonical_contours([(p - centre) * k + 0.5 for p in polys])


def allocate(lengths: list[float], n: int, minimum: int = 3) -> list[int]:
    """Points per contour: proportional to length, at least ``minimum`` each, summing to ``n``."""
    if n < minimum * len(lengths):
        raise InputError(f"{n} points cannot give {len(lengths)} contours {minimum} points each")
    total = sum(lengths)
    share = [minimum + (n - minimum * len(lengths)) * length / total for length in lengths]
    counts = [int(math.floor(s)) for s in share]
    for i in sorted(range(len(share)), key=lambda i: counts[i] - share[i])[:n - sum(counts)]:
        counts[i] += 1
    return counts


def resample_contour(poly: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` points equally spaced by arc length along the closed polygon, and their unit tangents."""
    closed = np.vstack([poly, poly[:1]])
    seg = np.diff(closed, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(seg, axis=1))])
    where = np.arange(k) * cum[-1] / k
    idx = np.clip(np.searchsorted(cum, where, side="right") - 1, 0, len(seg) - 1)
    frac = (where - cum[idx]) / np.maximum(cum[idx + 1] - cum[idx], 1e-12)
    points = closed[idx] + frac[:, None] * seg[idx]
    tangent = seg[idx] / np.maximum(np.linalg.norm(seg[idx], axis=1, keepdims=True), 1e-12)
    return points, tangent


def sample_outline(contours: list[np.ndarray], n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 4) = x, y, cos, sin; flags (n,) with exactly one END per contour)."""
    lengths = [float(np.linalg.norm(np.diff(np.vstack([c, c[:1]]), axis=0), axis=1).sum()) for c in contours]
    counts = allocate(lengths, n)
    feats, flags = [], []
    for contour, k in zip(contours, counts):
        points, tangent = resample_contour(contour, k)
        feats.append(np.hstack([points, tangent]))
        flags.append(np.r_[np.full(k - 1, EDGE), END])
    return np.vstack(feats).astype(np.float32), np.concatenate(flags).astype(np.int64)


def split_graph(points: np.ndarray, flags: np.ndarray) -> list[np.ndarray]:
    """Contours (list of (k, 2)) of a point sequence, cut after every END flag (PAD points dropped)."""
    contours, current = [], []
    for p, f in zip(points, flags):
        if f == PAD:
            continue
        current.append(p[:2])
        if f == END:
            contours.append(np.array(current))
            current = []
    if current:
        contours.append(np.array(current))
    return [c for c in contours if len(c) >= 3]


def rasterize(contours: list[np.ndarray], size: int, supersample: int = 4) -> np.ndarray:
    """(size, size) float32 in [0, 1], ink = 1, even-odd fill of the contours in [0, 1]^2 (y up)."""
    from matplotlib.path import Path

    s = size * supersample
    centres = (np.arange(s) + 0.5) / s
    xx, yy = np.meshgrid(centres, 1 - centres)
    grid = np.stack([xx.ravel(), yy.ravel()], 1)
    inside = np.zeros(len(grid), dtype=bool)
    for c in contours:
        inside ^= Path(c).contains_points(grid)
    return inside.reshape(size, supersample, size, supersample).mean((1, 3)).astype(np.float32)


def rewind_pad(sequence: torch.Tensor, n: int) -> torch.Tensor:
    """The reference's "rewind" padding: the sequence (L, ...) followed by its reverse, repeated until
    length ``n`` (truncated). Period 2L, palindromic within each period."""
    if len(sequence) == 0:
        raise InputError("cannot pad an empty sequence")
    check_count(n, "n")
    period = torch.cat([sequence, sequence.flip(0)])
    reps = -(-n // len(period))
    return period.repeat(reps, *([1] * (sequence.dim() - 1)))[:n]


@dataclass(frozen=True)
class FontGlyphs:
    """Per style s and letter l: ``images`` (S, L, 1, H, W) in [0, 1] (ink = 1), ``points`` (S, L, N, 4)
    (x, y in [0, 1], y up; unit tangent), ``flags`` (S, L, N) long, ``contours`` (S, L) long; ``styles``
    names "font@scale,shear"; ``letters`` the characters."""

    images: torch.Tensor
    points: torch.Tensor
    flags: torch.Tensor
    contours: torch.Tensor
    styles: tuple[str, ...]
    letters: str

    def subset(self, styles: list[int]) -> "FontGlyphs":
        return FontGlyphs(self.images[styles], self.points[styles], self.flags[styles], self.contours[styles],
                          tuple(self.styles[i] for i in styles), self.letters)


def make_font_glyphs(fonts: tuple[str, ...] = FONT_FILES, transforms: tuple = TRANSFORMS, letters: str = LETTERS,
                     n_points: int = 64, size: int = 32) -> FontGlyphs:
    """Every (font, transform) style x letter as raster + outline graph (see the module docstring)."""
    check_count(n_points, "n_points", 3)
    check_count(size, "size", 4)
    if not letters or not fonts or not transforms:
        raise InputError("fonts, transforms and letters must be non-empty")
    images, points, flags, counts, names = [], [], [], [], []
    for font in fonts:
        for transform in transforms:
            names.append(f"{os.path.basename(font)}@{transform[0]:g},{transform[1]:g}")
            for char in letters:
                contours = styled_contours(font, char, transform)
                feats, flag = sample_outline(contours, n_points)
                images.append(rasterize(contours, size))
                points.append(feats)
                flags.append(flag)
                counts.append(len(contours))
    s, ell = len(names), len(letters)
    return FontGlyphs(torch.from_numpy(np.stack(images)).view(s, ell, 1, size, size),
                      torch.from_numpy(np.stack(points)).view(s, ell, n_points, 4),
                      torch.from_numpy(np.stack(flags)).view(s, ell, n_points),
                      torch.tensor(counts).view(s, ell), tuple(names), letters)


def split_fonts(fonts: tuple[str, ...], n_test: int, seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train fonts, held-out fonts): every style of a held-out font is a held-out style."""
    if not 0 < n_test < len(fonts):
        raise InputError(f"n_test must lie in [1, {len(fonts) - 1}], got {n_test}")
    order = torch.randperm(len(fonts), generator=torch.Generator().manual_seed(seed)).tolist()
    return tuple(fonts[i] for i in sorted(order[n_test:])), tuple(fonts[i] for i in sorted(order[:n_test]))
