"""Sample-quality metrics for the ring-of-Gaussians toy GAN used to test the adaptive D/G update rule
of "Accelerated WGAN update strategy with loss change rate balancing" (arXiv:2008.12463): the data
sampler, an RBF-kernel MMD^2 with several bandwidths, and mode coverage / high-quality fraction.
"""
import math

import torch

from honed.core.errors import InputError, check_count, check_number


def ring_centers(modes: int = 8, radius: float = 2.0, device: str | torch.device | None = None) -> torch.Tensor:
    """(modes, 2) centres equally spaced on a circle of ``radius`` (first one at angle 0)."""
    check_count(modes, "modes")
    angles = torch.arange(modes, dtype=torch.float32, device=device) * (2 * math.pi / modes)
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def sample_gaussian_ring(n: int, generator: torch.Generator | None = None, modes: int = 8, radius: float = 2.0,
                         std: float = 0.02, device: str | torch.device | None = None) -> torch.Tensor:
    """(n, 2) points of the mixture of ``modes`` equal-weight isotropic Gaussians (std ``std``) on a circle
    of ``radius`` - the 8-Gaussian toy data of arXiv:2008.12463's small-scale reproduction. Drawn on the
    generator's device and returned on ``device`` (default: where they were drawn)."""
    check_count(n, "n")
    check_number(std, "std")
    gen_device = generator.device if generator is not None else device
    which = torch.randint(0, modes, (n,), generator=generator, device=gen_device)
    noise = torch.randn(n, 2, generator=generator, device=gen_device) * std
    return (ring_centers(modes, radius, which.device)[which] + noise).to(which.device if device is None else device)


def check_points(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or x.shape[0] < 1:
        raise InputError(f"{name} must have shape (n, d) with n >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf")


def rbf_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.02, 0.1, 0.5, 2.0)) -> float:
    """Biased (V-statistic) squared MMD between samples x (n, d) and y (m, d) under the kernel
    ``k(a, b) = mean_s exp(-|a - b|^2 / (2 s^2))`` over the ``bandwidths`` s > 0 (used for
    arXiv:2008.12463's toy reproduction). 0 for identical samples; >= 0 always; at most 2."""
    check_points(x, "x")
    check_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if not bandwidths or any(not (s > 0) for s in bandwidths):
        raise InputError(f"bandwidths must be a non-empty tuple of positive numbers, got {bandwidths!r}")
    x, y = x.float(), y.float()

    def mean_kernel(a: torch.Tensor, b: torch.Tensor) -> float:
        neg_sq = torch.cdist(a, b).square_().clamp_(min=0).neg_()
        # exponents below -60 add < 1e-26 each; clamping them avoids float32 underflow's slow path
        total = sum(torch.exp((neg_sq * (0.5 / (s * s))).clamp_(min=-60.0)).sum().item() for s in bandwidths)
        return total / (len(bandwidths) * neg_sq.numel())

    return max(mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y), 0.0)


def mode_quality(samples: torch.Tensor, centers: torch.Tensor, std: float = 0.02, n_std: float = 3.0,
                 min_count: int = 20) -> tuple[int, float]:
    """(modes covered, high-quality fraction) for arXiv:2008.12463's toy reproduction. A sample is high
    quality when it lies within ``n_std * std`` of its nearest centre; a mode is covered when at least
    ``min_count`` samples lie that close to it. samples: (n, 2); centers: (k, 2)."""
    check_points(samples, "samples")
    check_points(centers, "centers")
    distance, nearest = torch.cdist(samples.double(), centers.double()).min(dim=1)
    close = distance <= n_std * std
    counts = torch.bincount(nearest[close], minlength=centers.shape[0])
    return int((counts >= min_count).sum()), float(close.double().mean())
