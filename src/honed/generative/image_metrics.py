"""Per-image reference metrics (MSE, PSNR, SSIM via scikit-image) between generated and ground-truth
images, as used to score text-to-image generation (LSTM conditional GAN, arXiv:1806.03027) and glyph
completion (font completion through graphs, arXiv:2108.12965). One value per image, so an
experiment can return per-example outcomes.

Images are (N, C, H, W) or (N, H, W) float tensors in [0, 1] (data range 1); any device (computed on
the CPU in numpy). scikit-image is the ``data`` extra.
"""
import math

import torch

from honed.core.errors import InputError, require_extra


def _pair(generated: torch.Tensor, truth: torch.Tensor) -> tuple:
    if generated.shape != truth.shape or generated.dim() not in (3, 4) or len(generated) == 0:
        raise InputError(f"generated and truth must both be (N, C, H, W) or (N, H, W) with N >= 1; got "
                         f"{tuple(generated.shape)} and {tuple(truth.shape)}")
    for name, x in (("generated", generated), ("truth", truth)):
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise InputError(f"{name} images must be finite and lie in [0, 1]")
    return generated.detach().float().cpu().numpy(), truth.detach().float().cpu().numpy()


def mse_per_image(generated: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """Mean squared error of each image pair."""
    gen, ref = _pair(generated, truth)
    return [float(((g - r) ** 2).mean()) for g, r in zip(gen, ref)]


def psnr_per_image(generated: torch.Tensor, truth: torch.Tensor, cap: float = 100.0) -> list[float]:
    """PSNR in dB of each pair (data range 1); identical images give ``cap`` (the exact value is +inf,
    which a mean over images cannot hold). Pass ``cap=math.inf`` to get inf."""
    return [cap if m == 0 else min(cap, 10 * math.log10(1.0 / m)) for m in mse_per_image(generated, truth)]


def ssim_per_image(generated: torch.Tensor, truth: torch.Tensor, win_size: int | None = None) -> list[float]:
    """SSIM of each pair (scikit-image ``structural_similarity``, data range 1, channels averaged).
    ``win_size`` defaults to 7, or the largest odd size that fits images smaller than 7 px."""
    metrics = require_extra("skimage.metrics", "data")
    gen, ref = _pair(generated, truth)
    side = min(gen.shape[-2:])
    win = win_size or min(7, side if side % 2 else side - 1)
    if win < 3:
        raise InputError(f"images of {side} px are too small for SSIM (needs >= 3 px)")
    channel = 0 if gen.ndim == 4 else None
    return [float(metrics.structural_similarity(g, r, data_range=1.0, channel_axis=channel, win_size=win))
            for g, r in zip(gen, ref)]
