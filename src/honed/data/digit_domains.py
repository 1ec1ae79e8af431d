"""Digits -> coloured-digits domain shift for the small-scale reproduction of "A Compact DNN: Approaching
GoogLeNet-Level Accuracy of Classification and Domain Adaptation" (Wu et al., CVPR 2017, arXiv:1703.04071),
an MNIST -> MNIST-M-style shift built in plain torch with a fixed seed.

Source: sklearn digits at 16x16, grey in [0, 1], repeated to 3 channels. Target: held-out digits (disjoint
images) rendered as RGB - rotated by U(-15, 15) degrees, a random foreground colour over a random colour
texture (smooth noise at three scales; the foreground colour is drawn at least 0.25 per channel away from
the background's mean colour, so the digit stays visible, as MNIST-M's |background - digit| blend does), contrast inverted on 30% of the images, Gaussian noise sigma 0.1,
clamped to [0, 1]. Target labels sit behind a guard (:class:`GuardedSplit`) so a training loop cannot
read them; evaluation unlocks them explicitly.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from honed.core.errors import HonedError, InputError, check_number
from honed.data import create_dataset
from honed.data.base import Split, check_images


TEXTURE_AMPLITUDE = 0.3  # noise amplitude of the coarsest texture scale (halved per finer scale)
COLOUR_GAP = (0.25, 0.75)  # per channel, the foreground sits this far (circularly) from the background


class LabelAccessError(HonedError, RuntimeError):
    """Target labels were read outside an explicit evaluation block."""


class GuardedSplit:
    """Target-domain images ``x`` (N, 3, H, W) whose labels ``y`` (N,) raise :class:`LabelAccessError`
    unless read inside ``with split.labels_unlocked():`` (Compact DNN DA reproduction, arXiv:1703.04071:
    target labels are for evaluation only). ``label_reads`` counts unlocked reads."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise InputError(f"x and y lengths differ: {len(x)} vs {len(y)}")
        self.x, self._y, self._unlocked, self.label_reads = x, y, False, 0

    def __len__(self) -> int:
        return len(self.x)

    @property
    def y(self) -> torch.Tensor:
        if not self._unlocked:
            raise LabelAccessError("target labels are for evaluation only: read them inside labels_unlocked()")
        self.label_reads += 1
        return self._y

    @contextmanager
    def labels_unlocked(self) -> Iterator["GuardedSplit"]:
        """Allow reading ``y`` inside the block (evaluation)."""
        self._unlocked = True
        try:
            yield self
        finally:
            self._unlocked = False


@dataclass
class DigitDomains:
    """Source train/test (3-channel grey digits with labels) and target adapt/test (coloured digits,
    labels guarded) of the Compact DNN DA reproduction (arXiv:1703.04071)."""

    source_train: Split
    source_test: Split
    target_adapt: GuardedSplit
    target_test: GuardedSplit
    num_classes: int
    target_val: GuardedSplit | None = None  # held-out labeled target images for setting choices, never test


def grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) grey images in [0, 1] -> (N, 3, H, W) by channel repetition."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise InputError(f"expected grey images (N, 1, H, W), got {tuple(x.shape)}")
    return x.repeat(1, 3, 1, 1)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of (N, C, H, W) by ``degrees`` (N,) about its centre (bilinear, zero fill)."""
    theta = degrees * math.pi / 180
    cos, sin, zero = theta.cos(), theta.sin(), torch.zeros_like(theta)
    affine = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(affine.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def colour_texture(n: int, size: int, generator: torch.Generator, scales: tuple[int, ...] = (2, 4, 8),
                   amplitude: float = TEXTURE_AMPLITUDE) -> torch.Tensor:
    """(n, 3, size, size) random colour textures in [0, 1]: a random base colour plus smooth RGB noise
    (uniform grids of side s, bilinearly upsampled) at each scale s, ``amplitude`` halving per scale."""
    base = torch.rand(n, 3, 1, 1, generator=generator)
    tex = base.expand(n, 3, size, size).clone()
    for k, s in enumerate(scales):
        grid = torch.rand(n, 3, s, s, generator=generator) - 0.5
        tex += amplitude * 0.5 ** k * F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    return tex.clamp(0, 1)


def contrasting_colour(base: torch.Tensor, generator: torch.Generator,
                       gap: tuple[float, float] = COLOUR_GAP) -> torch.Tensor:
    """A random colour per image, each channel ``(base + U(gap)) mod 1``: with the default (0.25, 0.75)
    uniformly random over the colours at least 0.25 (circularly) from the background's mean colour
    ``base`` (n, 3, 1, 1); gap (0, 1) is an unconstrained random colour."""
    lo, hi = gap
    return (base + lo + (hi - lo) * torch.rand(base.shape, generator=generator)) % 1.0


def render_target_domain(x: torch.Tensor, seed: int = 0, max_rotation: float = 15.0, invert_fraction: float = 0.3,
                         noise_std: float = 0.1, colour_gap: tuple[float, float] = COLOUR_GAP,
                         texture_amplitude: float = TEXTURE_AMPLITUDE) -> torch.Tensor:
    """Compact DNN DA reproduction (arXiv:1703.04071): grey digits (N, 1, H, W) in [0, 1] -> coloured target
    images (N, 3, H, W) in [0, 1] (see the module docstring); deterministic given ``seed``.
    ``colour_gap`` (lo, hi) with 0 <= lo <= hi <= 1 bounds the foreground's per-channel circular distance
    from the background colour; ``texture_amplitude`` >= 0 scales the background texture."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1:
        raise InputError(f"expected grey images (N, 1, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    check_images(x)
    check_number(max_rotation, "max_rotation")
    check_number(noise_std, "noise_std")
    if not 0 <= invert_fraction <= 1:
        raise InputError(f"invert_fraction must lie in [0, 1], got {invert_fraction}")
    if len(colour_gap) != 2 or not 0 <= colour_gap[0] <= colour_gap[1] <= 1:
        raise InputError(f"colour_gap must be (lo, hi) with 0 <= lo <= hi <= 1, got {colour_gap}")
    check_number(texture_amplitude, "texture_amplitude")
    gen = torch.Generator().manual_seed(seed)
    n, size = x.shape[0], x.shape[-1]
    angles = (torch.rand(n, generator=gen) * 2 - 1) * max_rotation
    mask = rotate(x.cpu().float(), angles).clamp(0, 1)
    background = colour_texture(n, size, gen, amplitude=texture_amplitude)
    foreground = contrasting_colour(background.mean(dim=(2, 3), keepdim=True), gen, colour_gap)
    image = mask * foreground + (1 - mask) * background
    invert = (torch.rand(n, generator=gen) < invert_fraction).view(n, 1, 1, 1)
    image = torch.where(invert, 1 - image, image)
    image = image + noise_std * torch.randn(image.shape, generator=gen)
    return image.clamp(0, 1).to(x.device)


def make_digit_domains(seed: int = 0, split_seed: int = 0, size: int = 16, target_fraction: float = 0.5,
                       source_test_fraction: float = 0.3, target_test_fraction: float = 0.4,
                       device: str | torch.device | None = None, target_val_fraction: float = 0.0,
                       **rendering) -> DigitDomains:
    """Compact DNN DA reproduction (arXiv:1703.04071): split sklearn digits (stratified, ``split_seed``)
    into a source half and a disjoint target half; source -> train/test grey RGB; target rendered with
    :func:`render_target_domain` (``seed``, ``rendering`` keywords such as ``colour_gap``) -> test, an
    optional labeled validation part (``target_val_fraction`` of the target half; for setting choices,
    never test) and adapt (unlabeled for training); target labels guarded. Tensors go to ``device``
    (default: where they are built, the CPU)."""
    for name, frac in (("target_fraction", target_fraction), ("source_test_fraction", source_test_fraction),
                       ("target_test_fraction", target_test_fraction)):
        if not 0 < frac < 1:
            raise InputError(f"{name} must lie in (0, 1), got {frac}")
    if not 0 <= target_val_fraction < 1 - target_test_fraction:
        raise InputError(f"target_val_fraction must lie in [0, 1 - target_test_fraction), got {target_val_fraction}")
    src = 1 - target_fraction
    data = create_dataset("digits", size=size, split_seed=split_seed,
                          fractions=(src * (1 - source_test_fraction), src * source_test_fraction, target_fraction))
    target_x, target_y = render_target_domain(data.test.x, seed=seed, **rendering), data.test.y
    n_test = round(target_test_fraction * len(target_x))  # the digits split is already shuffled
    n_val = n_test + round(target_val_fraction * len(target_x))
    dev = None if device is None else torch.device(device)
    part = lambda a, b: GuardedSplit(target_x[a:b].to(dev), target_y[a:b].to(dev))  # noqa: E731
    return DigitDomains(
        source_train=Split(grey_to_rgb(data.train.x).to(dev), data.train.y.to(dev)),
        source_test=Split(grey_to_rgb(data.val.x).to(dev), data.val.y.to(dev)),
        target_adapt=part(n_val, None), target_test=part(0, n_test),
        num_classes=data.num_classes, target_val=part(n_test, n_val) if n_val > n_test else None)
