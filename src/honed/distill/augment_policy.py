"""Population Based Augmentation policies, the augmentation "agents" of role-wise KD
(Role-Wise Data Augmentation for Knowledge Distillation, arXiv:2004.08861; PBA, arXiv:1905.05393).

A policy is a vector of 60 ints: 30 entries (the 15 ops listed twice), each a pair
(probability level 0-10 -> p = level / 10, magnitude 0-9). Entry ``i`` is op ``OP_NAMES[i % 15]`` with
probability level ``policy[2 i]`` and magnitude ``policy[2 i + 1]``.

Applying a policy to one image: draw ``count`` in {0, 1, 2} with probabilities (0.2, 0.3, 0.5), shuffle
the 30 entries and walk them, applying each with its probability until ``count`` ops were applied.

The ops are written in torch on grey images (N, 1, H, W) in [0, 1]; no PIL. Magnitudes follow PBA's
scaling for 32 px images (rotate 30 deg, shear 0.3, translate 10 px, cutout 20 px, enhance factor
0.1-1.9, posterize 4 bits, solarize 256 levels), with pixel amounts scaled by H / 32. ``Color`` (a
saturation change) is the identity on a one-channel image, so it is dropped by default: its slots stay
in the 60-vector (the encoding and the explore rule are unchanged) but the walk skips it and it never
counts as applied. ``Invert`` is kept (a real change on grey digits); pass ``dropped=`` to drop more.
"""
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from honed.core.errors import InputError

OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
            "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout")
NUM_ENTRIES = 2 * len(OP_NAMES)  # each op listed twice
POLICY_LENGTH = 2 * NUM_ENTRIES  # (probability level, magnitude) per entry = 60 ints
MAX_PROB_LEVEL, MAX_MAGNITUDE = 10, 9
COUNT_PROBS = (0.2, 0.3, 0.5)  # P(count = 0, 1, 2)
DEGENERATE_ON_GREY = ("Color",)
EXPLORE_RESAMPLE_PROB = 0.2
EXPLORE_STEPS = (0, 1, 2, 3)


def check_policy(policy) -> np.ndarray:
    """Role-wise KD / PBA (arXiv:2004.08861): return ``policy`` as an int64 array of length 60 or
    raise InputError (wrong length, non-integer, probability level outside 0-10 or magnitude outside 0-9)."""
    arr = np.asarray(policy)
    if arr.shape != (POLICY_LENGTH,):
        raise InputError(f"a policy must hold {POLICY_LENGTH} ints, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"a policy must hold ints, got dtype {arr.dtype}")
    probs, mags = arr[0::2], arr[1::2]
    if probs.min() < 0 or probs.max() > MAX_PROB_LEVEL or mags.min() < 0 or mags.max() > MAX_MAGNITUDE:
        raise InputError("policy probability levels must lie in 0-10 and magnitudes in 0-9")
    return arr.astype(np.int64)


def zero_policy() -> np.ndarray:
    """PBA (arXiv:1905.05393, used by arXiv:2004.08861): the search's initial policy, all zeros."""
    return np.zeros(POLICY_LENGTH, dtype=np.int64)


def random_policy(rng: np.random.Generator) -> np.ndarray:
    """Role-wise KD (arXiv:2004.08861): a uniformly random policy (levels 0-10, magnitudes 0-9)."""
    out = np.empty(POLICY_LENGTH, dtype=np.int64)
    out[0::2] = rng.integers(0, MAX_PROB_LEVEL + 1, NUM_ENTRIES)
    out[1::2] = rng.integers(0, MAX_MAGNITUDE + 1, NUM_ENTRIES)
    return out


def explore_policy(policy, rng: np.random.Generator) -> np.ndarray:
    """PBA explore (arXiv:1905.05393, as in arXiv:2004.08861): per int, with probability 0.2 resample it
    uniformly (0-10 for probability levels, 0-9 for magnitudes); otherwise add or subtract (prob 0.5 each)
    an amount drawn uniformly from {0, 1, 2, 3} and clip to the range. Returns a new 60-int array."""
    old = check_policy(policy)
    new = old.copy()
    for i, value in enumerate(old):
        top = MAX_PROB_LEVEL if i % 2 == 0 else MAX_MAGNITUDE
        if rng.random() < EXPLORE_RESAMPLE_PROB:
            new[i] = rng.integers(0, top + 1)
        else:
            step = int(rng.choice(EXPLORE_STEPS))
            new[i] = max(0, value - step) if rng.random() < 0.5 else min(top, value + step)
    return new


def policy_entries(policy) -> list[tuple[str, float, int]]:
    """Role-wise KD / PBA (arXiv:2004.08861): the 30 (op name, probability, magnitude) entries of a policy."""
    arr = check_policy(policy)
    return [(OP_NAMES[i % len(OP_NAMES)], arr[2 * i] / 10.0, int(arr[2 * i + 1])) for i in range(NUM_ENTRIES)]


def sample_op_walk(policy, rng: np.random.Generator,
                   dropped: tuple[str, ...] = DEGENERATE_ON_GREY) -> list[tuple[str, int]]:
    """PBA's walk for ONE image (arXiv:1905.05393, arXiv:2004.08861): draw count ~ (0.2, 0.3, 0.5) over
    {0, 1, 2}, shuffle the 30 entries, apply each (skipping ``dropped`` ops) with its probability until
    ``count`` were applied. Returns the applied (op name, magnitude) pairs, at most ``count`` of them."""
    return _walk(_live_entries(policy, dropped), rng)


def _live_entries(policy, dropped: tuple[str, ...]) -> list[tuple[str, float, int]]:
    """Entries that can fire: a uniform shuffle of all 30 restricted to these is a uniform shuffle of
    these, so skipping dropped and zero-probability entries up front leaves the walk's law unchanged."""
    return [e for e in policy_entries(policy) if e[1] > 0 and e[0] not in dropped]


def _walk(live: list[tuple[str, float, int]], rng: np.random.Generator) -> list[tuple[str, int]]:
    count = int(rng.choice(3, p=COUNT_PROBS))
    chosen: list[tuple[str, int]] = []
    if count == 0 or not live:
        return chosen
    for k in rng.permutation(len(live)):
        name, prob, magnitude = live[k]
        if rng.random() < prob:
            chosen.append((name, magnitude))
            if len(chosen) == count:
                break
    return chosen


# --- the ops, on one image (1, H, W) in [0, 1]; ``m`` is the magnitude 0-9 -------------------------
def _amount(m: int, maxval: float) -> float:
    return m * maxval / 10.0  # PBA's float_parameter(level, maxval)


def _affine(img: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    mat = torch.tensor([theta], dtype=img.dtype, device=img.device)
    grid = F.affine_grid(mat, [1, *img.shape], align_corners=False)
    return F.grid_sample(img[None], grid, padding_mode="zeros", align_corners=False)[0]


def _enhance_factor(m: int) -> float:
    return _amount(m, 1.8) + 0.1


def _equalize(img: torch.Tensor) -> torch.Tensor:
    levels = (img * 255).round().long().clamp(0, 255)
    hist = torch.bincount(levels.flatten(), minlength=256).to(img.dtype)
    cdf = hist.cumsum(0)
    lo = cdf[hist > 0][0]
    if cdf[-1] == lo:
        return img
    lut = ((cdf - lo) / (cdf[-1] - lo)).clamp(0, 1)
    return lut[levels]


def _sharpness(img: torch.Tensor, factor: float) -> torch.Tensor:
    kernel = torch.ones(1, 1, 3, 3, dtype=img.dtype, device=img.device)
    kernel[0, 0, 1, 1] = 5.0
    smooth = F.conv2d(img[None], kernel / 13.0, padding=1)[0]
    smooth[..., 0, :], smooth[..., -1, :] = img[..., 0, :], img[..., -1, :]  # PIL keeps the border
    smooth[..., :, 0], smooth[..., :, -1] = img[..., :, 0], img[..., :, -1]
    return smooth + factor * (img - smooth)


def _cutout(img: torch.Tensor, m: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = img.shape[-2:]
    size = int(_amount(m, 20) * h / 32)
    if size == 0:
        return img
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    out = img.clone()
    out[..., max(0, cy - size // 2):cy + (size + 1) // 2, max(0, cx - size // 2):cx + (size + 1) // 2] = 0.5
    return out


def apply_op(img: torch.Tensor, name: str, m: int, rng: np.random.Generator) -> torch.Tensor:
    """PBA op ``name`` at magnitude ``m`` (0-9) on one grey image (1, H, W) in [0, 1]
    (Role-wise KD, arXiv:2004.08861). Signed ops (rotate, shear, translate) pick a random sign."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    h = img.shape[-1]
    if name == "AutoContrast":
        lo, hi = img.min(), img.max()
        return (img - lo) / (hi - lo) if hi > lo else img
    if name == "Equalize":
        return _equalize(img)
    if name == "Invert":
        return 1.0 - img
    if name == "Rotate":
        a = math.radians(sign * _amount(m, 30))
        return _affine(img, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    if name == "Posterize":
        bits = 4 - int(_amount(m, 4))
        step = 2 ** (8 - bits)
        return torch.floor(img * 255 / step) * step / 255
    if name == "Solarize":
        threshold = (256 - int(_amount(m, 256))) / 255
        return torch.where(img >= threshold, 1.0 - img, img)
    if name == "Color":
        return img  # saturation of a grey image: the identity
    if name in ("Contrast", "Brightness", "Sharpness"):
        f = _enhance_factor(m)
        if name == "Contrast":
            return (img.mean() + f * (img - img.mean())).clamp(0, 1)
        return (f * img).clamp(0, 1) if name == "Brightness" else _sharpness(img, f).clamp(0, 1)
    if name in ("ShearX", "ShearY"):
        s = sign * _amount(m, 0.3)
        theta = [[1.0, s, 0.0], [0.0, 1.0, 0.0]] if name == "ShearX" else [[1.0, 0.0, 0.0], [s, 1.0, 0.0]]
        return _affine(img, theta)
    if name in ("TranslateX", "TranslateY"):
        shift = sign * 2 * int(_amount(m, 10) * h / 32) / h  # pixels -> normalised grid units
        theta = [[1.0, 0.0, shift], [0.0, 1.0, 0.0]] if name == "TranslateX" else [[1.0, 0.0, 0.0], [0.0, 1.0, shift]]
        return _affine(img, theta)
    if name == "Cutout":
        return _cutout(img, m, rng)
    raise InputError(f"unknown op {name!r}; choose one of {', '.join(OP_NAMES)}")


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 1:
        raise InputError(f"images must be grey (N, 1, H, W), got shape {tuple(images.shape)}")
    if torch.isnan(images).any() or images.min() < 0 or images.max() > 1:
        raise InputError("images must be finite and lie in [0, 1]")


def apply_policy(images: torch.Tensor, policy, rng: np.random.Generator,
                 dropped: tuple[str, ...] = DEGENERATE_ON_GREY) -> torch.Tensor:
    """Role-wise KD / PBA (arXiv:2004.08861): augment a batch of grey images (N, 1, H, W) in [0, 1] with
    ``policy`` (60 ints), one independent walk per image (see :func:`sample_op_walk`). Returns a new
    tensor of the same shape, still in [0, 1]."""
    _check_batch(images)
    live = _live_entries(policy, dropped)
    out = images.clone()
    for i in range(len(images)):
        for name, magnitude in _walk(live, rng):
            out[i] = apply_op(out[i], name, magnitude, rng)
    return out.clamp_(0.0, 1.0)


def random_pad_crop(images: torch.Tensor, pad: int, rng: np.random.Generator) -> torch.Tensor:
    """PBA's base augmentation without the flip (arXiv:2004.08861): zero-pad by ``pad`` px and crop back
    to (H, W) at a random offset per image. Input (N, C, H, W); ``pad = 0`` returns the input."""
    if pad == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offs = rng.integers(0, 2 * pad + 1, size=(n, 2))
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs)])


@dataclass
class Schedule:
    """Role-wise KD (arXiv:2004.08861): a per-epoch list of 60-int policies (an augmentation agent)."""

    policies: list[np.ndarray]

    def at(self, epoch: int, total_epochs: int) -> np.ndarray:
        """The policy for ``epoch`` (0-based) of a run of ``total_epochs``: the searched schedule is
        stretched (nearest earlier searched epoch) when the run length differs from the search length."""
        if not 0 <= epoch < total_epochs:
            raise InputError(f"epoch must lie in [0, {total_epochs}), got {epoch}")
        return self.policies[min(len(self.policies) - 1, epoch * len(self.policies) // total_epochs)]

    def to_json(self) -> list[list[int]]:
        return [[int(v) for v in p] for p in self.policies]

    @classmethod
    def from_json(cls, data: list[list[int]]) -> "Schedule":
        return cls([check_policy(np.asarray(p, dtype=np.int64)) for p in data])


@dataclass
class Trial:
    """One PBT member (PBA, arXiv:1905.05393; role-wise KD, arXiv:2004.08861): a model, its optimiser,
    its current policy and the per-epoch history of the policies it (or the trial it cloned) trained with."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    policy: np.ndarray
    history: list[np.ndarray]


def exploit_and_explore(trials: list[Trial], scores: list[float], rng: np.random.Generator,
                        fraction: float = 0.25) -> list[tuple[int, int]]:
    """PBT exploit + PBA explore (arXiv:1905.05393, arXiv:2004.08861): each trial in the bottom
    ``fraction`` by score copies the weights, optimiser state, policy and policy history of a trial drawn
    from the top ``fraction``, then explores its policy. Returns the (loser, winner) index pairs.
    With fewer than 4 trials the bottom and top quantiles hold one trial each (ceil)."""
    if len(trials) != len(scores):
        raise InputError(f"{len(trials)} trials but {len(scores)} scores")
    if not 0 < fraction <= 0.5:
        raise InputError(f"fraction must lie in (0, 0.5], got {fraction}")
    if len(trials) < 2:
        return []
    k = max(1, math.ceil(fraction * len(trials))) if len(trials) < 4 else max(1, int(fraction * len(trials)))
    order = sorted(range(len(trials)), key=lambda i: scores[i])
    bottom, top = order[:k], order[-k:]
    pairs = []
    for loser in bottom:
        winner = top[int(rng.integers(0, len(top)))]
        src, dst = trials[winner], trials[loser]
        dst.model.load_state_dict(src.model.state_dict())
        # torch shares same-device state tensors on load: deep-copy so the two trials stay independent
        dst.optimizer.load_state_dict(copy.deepcopy(src.optimizer.state_dict()))
        dst.history = [p.copy() for p in src.history]
        dst.policy = explore_policy(src.policy, rng)
        pairs.append((loser, winner))
    return pairs
