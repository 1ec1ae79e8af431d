"""Common-corruption test sets built offline in torch, in the spirit of CIFAR-10-C (Hendrycks & Dietterich,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", arXiv:1903.12261), as
used to evaluate AugMax (arXiv:2110.13771, method card 24) on small images ("digits-C").

Every corruption maps images x (N, C, H, W), float in [0, 1], and a severity s in 0..5 to a tensor of the
same shape clamped to [0, 1]; s = 0 returns x unchanged. Randomness comes only from a
``torch.Generator`` seeded by ``seed`` (and the corruption's index), so a test set is reproducible; that
generator lives on the CPU on purpose (its draws are then moved to the input's device), so a CUDA run
is scored on exactly the images a CPU run sees.

Severity tables are ours (the CIFAR-C constants were written for 32x32 natural images): spatial ones are
given for 32-pixel images and scaled with H / 32; noise levels are larger than CIFAR-C's because
digits are near-binary and high-contrast. Each table grows with s, so the mean distortion does too.
The JPEG corruption is a block-DCT quantisation written here rather than Pillow's encoder (which
CIFAR-C calls): Pillow needs 8-bit images one at a time on the CPU, while this one stays float, batched
and on the input's device; it is JPEG-like, not JPEG.
"""
import math
from typing import Callable

import torch
import torch.nn.functional as F

from honed.core.errors import InputError
from honed.data.base import check_images

SEVERITIES = (1, 2, 3, 4, 5)
GAUSSIAN_SIGMA = (0.08, 0.14, 0.2, 0.28, 0.38)
SHOT_RATE = (40.0, 16.0, 8.0, 4.0, 2.0)          # photons per unit intensity (smaller = noisier)
IMPULSE_FRACTION = (0.03, 0.06, 0.1, 0.16, 0.25)
BLUR_SIGMA_32 = (0.8, 1.2, 1.6, 2.1, 2.7)        # Gaussian blur std in pixels of a 32-pixel image
CONTRAST_FACTOR = (0.5, 0.35, 0.25, 0.15, 0.08)
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)
FOG_AMPLITUDE = (0.25, 0.4, 0.55, 0.7, 0.85)
ELASTIC_32 = ((1.5, 4.0), (2.5, 4.0), (3.5, 3.5), (4.5, 3.0), (6.0, 3.0))  # (alpha px, smoothing px)
PIXELATE_FACTOR = (0.8, 0.65, 0.55, 0.45, 0.35)
JPEG_STEP = (0.06, 0.1, 0.16, 0.24, 0.34)       # DCT quantisation step on [0, 1] pixels (8x8 blocks)


def check_inputs(x: torch.Tensor, severity: int) -> None:
    """Raise InputError unless x is a finite float (N, C, H, W) tensor in [0, 1] and severity in 0..5."""
    check_images(x, "images", dims=4)
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
        raise InputError(f"severity must be an integer in 0..5, got {severity!r}")


def gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian of std ``sigma`` pixels, radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding."""
    k = gaussian_kernel(sigma, x.device).to(x.dtype)
    n, c, h, w = x.shape
    r = len(k) // 2
    flat = x.reshape(n * c, 1, h, w)
    mode = "reflect" if r < min(h, w) else "replicate"
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def gaussian_noise(x, s, gen):
    return x + GAUSSIAN_SIGMA[s - 1] * torch.randn(x.shape, generator=gen).to(x)


def shot_noise(x, s, gen):
    rate = SHOT_RATE[s - 1]
    return torch.poisson(x.cpu() * rate, generator=gen).to(x) / rate


def impulse_noise(x, s, gen):
    u = torch.rand(x.shape, generator=gen).to(x)
    salt = torch.rand(x.shape, generator=gen).to(x) < 0.5
    hit = u < IMPULSE_FRACTION[s - 1]
    return torch.where(hit, salt.to(x.dtype), x)


def gaussian_blur(x, s, gen):
    return blur(x, BLUR_SIGMA_32[s - 1] * x.shape[-1] / 32)


def contrast(x, s, gen):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * CONTRAST_FACTOR[s - 1] + mean


def brightness(x, s, gen):
    return x + BRIGHTNESS_SHIFT[s - 1]


def fog(x, s, gen):
    """Low-frequency noise: a 4x4 random field upsampled bicubically, added, then range-restored."""
    n, c, h, w = x.shape
    field = F.interpolate(torch.rand((n, 1, 4, 4), generator=gen).to(x), size=(h, w), mode="bicubic",
                          align_corners=False)
    amp = FOG_AMPLITUDE[s - 1]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + amp * field) * peak / (peak + amp)


def elastic(x, s, gen):
    """Random displacement field (smoothed white noise scaled to ``alpha`` pixels) resampled bilinearly."""
    n, c, h, w = x.shape
    alpha, smooth = (v * w / 32 for v in ELASTIC_32[s - 1])
    raw = torch.rand((n, 2, h, w), generator=gen).to(x) * 2 - 1
    field = blur(raw, smooth)
    field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-8) * alpha
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                            indexing="ij")
    grid = torch.stack((xs + field[:, 0] * 2 / w, ys + field[:, 1] * 2 / h), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def pixelate(x, s, gen):
    h, w = x.shape[-2:]
    size = (max(1, round(h * PIXELATE_FACTOR[s - 1])), max(1, round(w * PIXELATE_FACTOR[s - 1])))
    return F.interpolate(F.interpolate(x, size=size, mode="area"), size=(h, w), mode="nearest")


def dct_matrix(n: int, device: torch.device) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n, n): coefficients = D @ block @ D.T."""
    k, i = torch.meshgrid(torch.arange(n, device=device), torch.arange(n, device=device), indexing="ij")
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def jpeg_like(x, s, gen):
    """JPEG-like compression: 8x8 block DCT, coefficients quantised with a step growing with frequency."""
    n, c, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate")
    blocks = xp.unfold(2, 8, 8).unfold(3, 8, 8)                       # (N, C, H/8, W/8, 8, 8)
    d = dct_matrix(8, x.device).to(x.dtype)
    u, v = torch.meshgrid(torch.arange(8, device=x.device), torch.arange(8, device=x.device), indexing="ij")
    step = JPEG_STEP[s - 1] * (1 + (u + v).to(x.dtype) / 2)
    coef = d @ blocks @ d.T
    out = d.T @ (torch.round(coef / step) * step) @ d
    out = out.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h + ph, w + pw)
    return out[..., :h, :w]


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur, "contrast": contrast, "brightness": brightness, "fog": fog,
    "elastic": elastic, "pixelate": pixelate, "jpeg": jpeg_like,
}


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corruption ``name`` (a key of CORRUPTIONS) at ``severity`` 0..5 of images x (N, C, H, W) in [0, 1]
    (CIFAR-C style, arXiv:1903.12261); deterministic given ``seed``; output same shape, in [0, 1]."""
    if name not in CORRUPTIONS:
        raise InputError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    check_inputs(x, severity)
    if severity == 0:
        return x.clone()
    gen = torch.Generator().manual_seed(seed * 1_000_003 + list(CORRUPTIONS).index(name) * 101 + severity)
    return CORRUPTIONS[name](x, severity, gen).clamp(0, 1)


def corruption_set(x: torch.Tensor, names: tuple[str, ...] = tuple(CORRUPTIONS),
                   severities: tuple[int, ...] = SEVERITIES, seed: int = 0) -> dict[str, torch.Tensor]:
    """The offline corrupted test set {"name/s": (N, C, H, W) in [0, 1]} for every name x severity."""
    if not names or not severities:
        raise InputError("corruption_set needs at least one corruption and one severity")
    return {f"{name}/{s}": corrupt(x, name, s, seed) for name in names for s in severities}
