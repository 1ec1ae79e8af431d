"""Conditional transferring features (CTFs) + rotation self-supervision for class-conditional GANs
trained on fewer high-quality (HQ) images ("Conditional Transferring Features: Scaling GANs to Thousands
of Classes with 30% Less High-Quality Data for Training", Wu, Wen, Chen, Li, IJCNN 2020, arXiv:1909.11308).

The paper's method section was not accessible: the wiring here is the method card's RECONSTRUCTION (R).

* :func:`degrade` - the LQ degradation: Gaussian blur (sigma 1), x2 down/up-sampling, additive noise 0.1
  under a fixed seed; images in [-1, 1].
* :func:`split_hq_lq` - which HQ images are kept (70%) and which removed ones come back only degraded (LQ).
* :class:`TransferNetwork` - T = E_T + D_T with conditional BN; ``encode(x_L, y)`` returns the CTFs
  (one feature map per generator resolution 4x4, 8x8, 16x16), ``forward`` returns x_hat_H; L1 loss.
* :class:`CTFGenerator` - small conditional-BN generator for 16x16 images; at each block
  ``h_l <- h_l + Conv1x1(c_l)`` (bias-free, so c = 0 equals the plain generator).
* :class:`ProjectionDiscriminator` - spectral-norm D with projection head and a rotation head.
* :func:`rotate_quadrants`, :func:`discriminator_loss`, :func:`generator_loss` - hinge GAN with SS-GAN's
  rotation loss (beta on REAL images only for D, alpha on fakes for G).
* :func:`frechet_distance` - Frechet distance between two feature sets (FID with any feature net).
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from honed.core.errors import InputError, check_count, check_number

RESOLUTIONS = (4, 8, 16)


def check_signed_images(x: torch.Tensor, name: str = "x", size: int | None = None) -> None:
    """InputError unless ``x`` is a finite float (N, C, H, W) tensor in [-1, 1] (H = W = size if given)."""
    if not torch.is_floating_point(x) or x.dim() != 4:
        raise InputError(f"{name} must be a float tensor (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise InputError(f"{name} must be {size}x{size} images, got {tuple(x.shape[-2:])}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf")
    if x.numel() and (x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6):
        raise InputError(f"{name} must lie in [-1, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")


def check_labels(y: torch.Tensor, n: int, num_classes: int) -> None:
    if y.dtype != torch.long or y.shape != (n,):
        raise InputError(f"labels must be a long tensor of shape ({n},), got {y.dtype} {tuple(y.shape)}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes - 1}]")


def gaussian_kernel1d(sigma: float, device: str | torch.device | None = None) -> torch.Tensor:
    """CTF (arXiv:1909.11308) degradation helper: normalised 1-D Gaussian, radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-t.square() / (2 * sigma * sigma))
    return k / k.sum()


def degrade(x: torch.Tensor, sigma: float = 1.0, factor: int = 2, noise_std: float = 0.1,
            seed: int = 0) -> torch.Tensor:
    """LQ degradation of CTF (arXiv:1909.11308)'s card: separable Gaussian blur (``sigma``, reflect
    padding), average-pool down by ``factor``, bilinear up to the input size, plus N(0, noise_std^2)
    noise from ``torch.Generator().manual_seed(seed)``, clamped to [-1, 1].
    x: (N, C, H, W) in [-1, 1] with H, W >= 2 * factor; returns the same shape; deterministic in seed."""
    check_signed_images(x)
    check_number(sigma, "sigma", strict=True)
    check_number(noise_std, "noise_std")
    check_count(factor, "factor")
    n, c, h, w = x.shape
    if h % factor or w % factor or min(h, w) < 2 * factor:
        raise InputError(f"image size {h}x{w} must be a multiple of factor {factor} and >= {2 * factor}")
    k = gaussian_kernel1d(sigma, x.device)
    r = len(k) // 2
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="reflect" if w > r else "replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="reflect" if h > r else "replicate"), k.view(1, 1, -1, 1))
    flat = F.avg_pool2d(flat, factor)
    flat = F.interpolate(flat, size=(h, w), mode="bilinear", align_corners=False)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(flat.shape, generator=gen).to(x.device) * noise_std
    return (flat + noise).clamp(-1, 1).reshape(n, c, h, w)


@dataclass(frozen=True)
class HQSplit:
    """Indices (into the training set) of CTF (arXiv:1909.11308)'s data regime: ``kept`` HQ images,
    ``removed`` HQ images (never used undegraded), and ``lq`` (a subset of ``removed``) that return degraded."""

    kept: torch.Tensor
    removed: torch.Tensor
    lq: torch.Tensor


def split_hq_lq(labels: torch.Tensor, keep_fraction: float = 0.7, lq_fraction: float = 0.1,
                seed: int = 0) -> HQSplit:
    """CTF (arXiv:1909.11308) data split, stratified per class: keep ``keep_fraction`` of each class as HQ,
    remove the rest; ``lq_fraction`` (of the ORIGINAL class size) of the removed ones become the LQ pool.
    labels: (N,) long. Requires lq_fraction <= 1 - keep_fraction."""
    if labels.dim() != 1 or labels.dtype != torch.long:
        raise InputError(f"labels must be a 1-D long tensor, got {labels.dtype} {tuple(labels.shape)}")
    if not (0 < keep_fraction <= 1) or not (0 <= lq_fraction <= 1 - keep_fraction + 1e-9):
        raise InputError(f"need 0 < keep_fraction <= 1 and 0 <= lq_fraction <= 1 - keep_fraction, "
                         f"got {keep_fraction}, {lq_fraction}")
    gen = torch.Generator().manual_seed(seed)
    kept, removed, lq = [], [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_keep = round(keep_fraction * len(idx))
        n_lq = min(round(lq_fraction * len(idx)), len(idx) - n_keep)
        kept.append(idx[:n_keep])
        removed.append(idx[n_keep:])
        lq.append(idx[n_keep:n_keep + n_lq])
    return HQSplit(*(torch.cat(p).sort().values for p in (kept, removed, lq)))


class ConditionalBatchNorm2d(nn.Module):
    """Class-conditional BN (used by CTF, arXiv:1909.11308, in G and T): BN without affine, then
    per-class gamma (init 1) and beta (init 0). x: (N, C, H, W); y: (N,) long."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gamma(y)[:, :, None, None] + self.beta(y)[:, :, None, None]


class ConvCBN(nn.Module):
    """conv3x3 -> conditional BN -> ReLU, optionally after a x2 change of resolution (``resample``)."""

    def __init__(self, cin: int, cout: int, num_classes: int, resample: str = "none") -> None:
        super().__init__()
        self.resample = resample
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm = ConditionalBatchNorm2d(cout, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif self.resample == "down":
            x = F.avg_pool2d(x, 2)
        return F.relu(self.norm(self.conv(x), y))


class TransferNetwork(nn.Module):
    """T = E_T + D_T of CTF (arXiv:1909.11308) (R: the card's reconstruction). x_L: (N, 1, 16, 16) in
    [-1, 1], y: (N,) long. ``encode`` -> CTFs [(N, C, 4, 4), (N, C, 8, 8), (N, C, 16, 16)] (the generator's
    resolutions); ``forward`` -> x_hat_H (N, 1, 16, 16) in (-1, 1) decoded from the CTFs (U-Net style)."""

    def __init__(self, num_classes: int = 10, channels: int = 16, image_channels: int = 1) -> None:
        super().__init__()
        self.num_classes, self.channels = num_classes, channels
        self.enc16 = ConvCBN(image_channels, channels, num_classes)
        self.enc8 = ConvCBN(channels, channels, num_classes, "down")
        self.enc4 = ConvCBN(channels, channels, num_classes, "down")
        self.dec8 = ConvCBN(2 * channels, channels, num_classes, "none")
        self.dec16 = ConvCBN(2 * channels, channels, num_classes, "none")
        self.out = nn.Conv2d(channels, image_channels, 3, padding=1)

    def encode(self, x_low: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        check_signed_images(x_low, "x_low", 16)
        check_labels(y, x_low.shape[0], self.num_classes)
        c16 = self.enc16(x_low, y)
        c8 = self.enc8(c16, y)
        c4 = self.enc4(c8, y)
        return [c4, c8, c16]

    def decode(self, ctfs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        c4, c8, c16 = ctfs
        h = self.dec8(torch.cat([F.interpolate(c4, scale_factor=2), c8], 1), y)
        h = self.dec16(torch.cat([F.interpolate(h, scale_factor=2), c16], 1), y)
        return torch.tanh(self.out(h))

    def forward(self, x_low: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_low, y), y)

    def transfer_loss(self, x_low: torch.Tensor, x_high: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_T = mean |D_T(E_T(x_L, y)) - x_H| (CTF, arXiv:1909.11308); x_high like x_low."""
        check_signed_images(x_high, "x_high", 16)
        return (self(x_low, y) - x_high).abs().mean()


class CTFGenerator(nn.Module):
    """Conditional generator of CTF (arXiv:1909.11308) for 16x16 images: z (N, z_dim), y (N,) long,
    optional CTFs ``ctf`` = [(N, ctf_channels, r, r) for r in 4, 8, 16] -> images (N, 1, 16, 16) in (-1, 1).
    Blocks at 4x4, 8x8, 16x16 with conditional BN; ``inject`` adds bias-free Conv1x1(c_l) to the block's
    features (``ctf=None`` or all-zero CTFs give the plain cGAN generator). ``injection="concat"`` (R
    alternative) concatenates then applies a 1x1 conv instead."""

    def __init__(self, num_classes: int = 10, z_dim: int = 32, channels: tuple[int, int, int] = (32, 16, 16),
                 ctf_channels: int | None = 16, injection: str = "add", image_channels: int = 1) -> None:
        super().__init__()
        if injection not in ("add", "concat"):
            raise InputError(f"injection must be 'add' or 'concat', got {injection!r}")
        self.num_classes, self.z_dim, self.channels, self.injection = num_classes, z_dim, channels, injection
        c4, c8, c16 = channels
        self.fc = nn.Linear(z_dim, c4 * 16)
        self.norm4 = ConditionalBatchNorm2d(c4, num_classes)
        self.block8 = ConvCBN(c4, c8, num_classes, "up")
        self.block16 = ConvCBN(c8, c16, num_classes, "up")
        self.out = nn.Conv2d(c16, image_channels, 3, padding=1)
        self.inject = None
        if ctf_channels is not None:
            extra = 0 if injection == "add" else 1
            self.inject = nn.ModuleList(nn.Conv2d(ctf_channels + extra * c, c, 1, bias=False) for c in channels)

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of the block features where CTFs are injected: 4x4, 8x8, 16x16."""
        return [(c, r, r) for c, r in zip(self.channels, RESOLUTIONS)]

    def add_ctf(self, h: torch.Tensor, level: int, ctf: list[torch.Tensor] | None) -> torch.Tensor:
        if ctf is None or self.inject is None:
            return h
        c = ctf[level]
        if c.shape[0] != h.shape[0] or c.shape[-2:] != h.shape[-2:]:
            raise InputError(f"CTF {level} has shape {tuple(c.shape)}, generator features {tuple(h.shape)}")
        if self.injection == "add":
            return h + self.inject[level](c)
        return self.inject[level](torch.cat([h, c], 1))

    def forward(self, z: torch.Tensor, y: torch.Tensor, ctf: list[torch.Tensor] | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim or not torch.isfinite(z).all():
            raise InputError(f"z must be finite with shape (N, {self.z_dim}), got {tuple(z.shape)}")
        check_labels(y, z.shape[0], self.num_classes)
        if ctf is not None and len(ctf) != 3:
            raise InputError(f"ctf must be a list of 3 feature maps (4x4, 8x8, 16x16), got {len(ctf)}")
        h = self.fc(z).view(-1, self.channels[0], 4, 4)
        h = self.add_ctf(F.relu(self.norm4(h, y)), 0, ctf)
        h = self.add_ctf(self.block8(h, y), 1, ctf)
        h = self.add_ctf(self.block16(h, y), 2, ctf)
        return torch.tanh(self.out(h))


class ProjectionDiscriminator(nn.Module):
    """Spectral-norm projection discriminator with a rotation head (SN-GAN + SS-GAN, as used by CTF,
    arXiv:1909.11308). x: (N, 1, 16, 16) in [-1, 1]; ``forward(x, y)`` -> (N,) scores
    psi(phi(x)) + <embed(y), phi(x)>; ``rotation_logits(x)`` -> (N, 4) over {0, 90, 180, 270} degrees."""

    def __init__(self, num_classes: int = 10, channels: tuple[int, int, int] = (16, 32, 32),
                 image_channels: int = 1) -> None:
        super().__init__()
        c16, c8, c4 = channels
        self.num_classes = num_classes
        self.convs = nn.ModuleList([
            spectral_norm(nn.Conv2d(image_channels, c16, 3, padding=1)),
            spectral_norm(nn.Conv2d(c16, c8, 3, stride=2, padding=1)),
            spectral_norm(nn.Conv2d(c8, c4, 3, stride=2, padding=1)),
        ])
        self.linear = spectral_norm(nn.Linear(c4, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, c4))
        self.rotation = spectral_norm(nn.Linear(c4, 4))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_signed_images(x, "x", 16)
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
        return h.sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_labels(y, x.shape[0], self.num_classes)
        h = self.features(x)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotation(self.features(x))


def rotate_quadrants(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SS-GAN rotation task (used by CTF, arXiv:1909.11308): x (N, C, H, H) -> (4N, C, H, H) holding x
    rotated by 0, 90, 180, 270 degrees (counter-clockwise, torch.rot90), and labels (4N,) in {0, 1, 2, 3}."""
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise InputError(f"x must be square images (N, C, H, H), got {tuple(x.shape)}")
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def rotation_loss(disc: ProjectionDiscriminator, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
    """CE of D's rotation head on all 4 rotations of x[:subset] (SS-GAN; CTF arXiv:1909.11308)."""
    rotated, labels = rotate_quadrants(x if subset is None else x[:subset])
    return F.cross_entropy(disc.rotation_logits(rotated), labels)


def discriminator_loss(disc: ProjectionDiscriminator, real: torch.Tensor, y_real: torch.Tensor,
                       fake: torch.Tensor, y_fake: torch.Tensor, beta: float = 1.0,
                       ss_subset: int | None = None) -> torch.Tensor:
    """L_D of CTF (arXiv:1909.11308): hinge on real and (detached) fake + beta * rotation CE on REAL
    images only (SS-GAN). Images (N, 1, 16, 16) in [-1, 1]; labels (N,) long; beta >= 0 (0 = no SS);
    ``ss_subset`` rotates only the first k images (all 4 rotations each) to save compute."""
    loss = F.relu(1 - disc(real, y_real)).mean() + F.relu(1 + disc(fake.detach(), y_fake)).mean()
    if beta > 0:
        loss = loss + beta * rotation_loss(disc, real, ss_subset)
    return loss


def generator_loss(disc: ProjectionDiscriminator, fake: torch.Tensor, y_fake: torch.Tensor,
                   alpha: float = 0.2, ss_subset: int | None = None) -> torch.Tensor:
    """L_G of CTF (arXiv:1909.11308): -D(G(z, y, c), y) + alpha * rotation CE on the fakes (SS-GAN);
    alpha >= 0 (0 = no SS); ``ss_subset`` as in :func:`discriminator_loss`."""
    loss = -disc(fake, y_fake).mean()
    if alpha > 0:
        loss = loss + alpha * rotation_loss(disc, fake, ss_subset)
    return loss


def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, d) and b (m, d), n, m >= 2 (the
    "Digits-FID" of CTF (arXiv:1909.11308)'s card): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InputError(f"features must be (n, d) and (m, d) with n, m >= 2, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("features contain NaN or inf")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # rank-deficient covariances (dead ReLU features) are expected
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # singular product: regularise both covariances slightly
        eps = 1e-6 * np.eye(a.shape[1])
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))
    return max(value, 0.0)
