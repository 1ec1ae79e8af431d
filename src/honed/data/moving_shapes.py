"""Synthetic moving-shape videos for the Auto-TSNet reproduction (Searching for Two-Stream Models in
Multivariate Space for Video Recognition, arXiv:2108.12957, card "Reproduction at small scale"), seeded,
in plain torch.

A clip is (3, frames, size, size) in [0, 1]: a textured colour background (smooth noise plus a random
grating, redrawn per clip, with fresh pixel noise per frame) and one randomly coloured shape (drawn
with :func:`honed.data.instance_scenes.shape_mask`). The label is shape x motion:
{square, circle, triangle} x {left_to_right, right_to_left, blink, static}. ``blink`` shows the shape on
every other frame (random phase): a stream that samples every 4th frame sees it always on (like
``static``) or always off, so telling blink from static needs the full frame rate, while the shape needs
spatial detail - the split of work a slow and a fast stream are built for.
"""
import math

import torch

from honed.core.errors import InputError, check_count
from honed.data.instance_scenes import pixel_grid, shape_mask, smooth_noise, uniform

SHAPES = ("square", "circle", "triangle")
MOTIONS = ("left_to_right", "right_to_left", "blink", "static")
NUM_CLASSES = len(SHAPES) * len(MOTIONS)


def class_name(label: int) -> str:
    return f"{SHAPES[label // len(MOTIONS)]}/{MOTIONS[label % len(MOTIONS)]}"


def _background(gen: torch.Generator, size: int) -> torch.Tensor:
    xs, ys = pixel_grid(size)
    angle, freq = uniform(gen, 0, math.pi), uniform(gen, 0.4, 1.2)
    grating = 0.08 * torch.sin(freq * (xs * math.cos(angle) + ys * math.sin(angle)))
    return (smooth_noise(gen, size, cells=4, contrast=0.6) + grating).clamp(0, 1)


def make_clip(label: int, gen: torch.Generator, frames: int = 16, size: int = 32) -> torch.Tensor:
    """One clip (3, frames, size, size) of class ``label`` in [0, NUM_CLASSES)."""
    kind, motion = SHAPES[label // len(MOTIONS)], MOTIONS[label % len(MOTIONS)]
    radius = uniform(gen, 0.14, 0.2) * size
    y = uniform(gen, radius + 1, size - radius - 1)
    x0, x1 = radius + 1 + uniform(gen, 0, 0.1 * size), size - radius - 1 - uniform(gen, 0, 0.1 * size)
    if motion == "right_to_left":
        x0, x1 = x1, x0
    elif motion in ("blink", "static"):
        x0 = x1 = uniform(gen, radius + 1, size - radius - 1)
    angle = (math.pi / 4 if kind == "square" else -math.pi / 2) + uniform(gen, -0.2, 0.2)
    colour = torch.rand(3, 1, 1, generator=gen)
    background, phase = _background(gen, size), int(torch.randint(2, (1,), generator=gen))
    xs, ys = pixel_grid(size)
    clip = []
    for t in range(frames):
        x = x0 + (x1 - x0) * t / max(frames - 1, 1)
        dx, dy = (xs - x) / radius, (ys - y) / radius
        u, v = math.cos(angle) * dx + math.sin(angle) * dy, -math.sin(angle) * dx + math.cos(angle) * dy
        mask = shape_mask(kind, u, v) * (0.0 if motion == "blink" and t % 2 != phase else 1.0)
        frame = background * (1 - mask) + colour * mask + 0.03 * torch.randn(3, size, size, generator=gen)
        clip.append(frame.clamp(0, 1))
    return torch.stack(clip, 1)


def make_moving_shapes(n: int, seed: int, frames: int = 16, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clips (N, 3, frames, size, size) in [0, 1] with balanced labels (N,) in [0, 12), shuffled.
    A video needs at least 2 frames (motion is change between frames)."""
    check_count(n, "n")
    check_count(size, "size", 8)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise InputError(f"a video needs at least 2 frames, got frames={frames!r}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    labels = labels[torch.randperm(n, generator=gen)]
    return torch.stack([make_clip(int(label), gen, frames, size) for label in labels]), labels
