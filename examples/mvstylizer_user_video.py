"""MVStylizer (arXiv:2005.11630) with your own stylisation network: stylise only key frames at 1/4
resolution, upscale them with a meta-smoothing network you train in your own loop, and warp them to the
other frames with optical flow (OpenCV DIS, the ``video`` extra). Compares quality and wall time with
running your network on every frame. ``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from honed.data.camera_videos import camera_path_clip, load_photo
from honed.vision.meta_upscale import MetaUpscaler
from honed.vision.mvstylizer import MVStylizer, temporal_warping_error

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
torch.set_num_threads(1)
SIZE, FRAMES = (64, 8) if TINY else (256, 30)


class WarmTone(nn.Module):
    """Your stylizer (here an untrained-then-fitted 3-layer CNN learning a warm colour grade)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.body(x)).clamp(0, 1)


def warm_grade(x: torch.Tensor) -> torch.Tensor:
    """The look the stylizer learns: warmer, more contrast."""
    gain = torch.tensor([1.15, 1.0, 0.8]).view(1, 3, 1, 1)
    return ((x - 0.5) * 1.2 + 0.5).mul(gain).clamp(0, 1)


photo = load_photo("china")  # ships with scikit-learn
train = torch.cat([camera_path_clip(photo, 4, SIZE, seed=s) for s in range(3)])
clip = camera_path_clip(load_photo("flower"), FRAMES, SIZE, seed=7)

torch.manual_seed(0)
stylizer, upscaler = WarmTone(), MetaUpscaler(features=8)
opt = torch.optim.Adam(stylizer.parameters(), lr=1e-3)
for step in range(5 if TINY else 200):  # fit your stylizer (any training you like)
    loss = F.l1_loss(stylizer(train), warm_grade(train))
    opt.zero_grad()
    loss.backward()
    opt.step()
stylizer.eval()

opt = torch.optim.Adam(upscaler.parameters(), lr=1e-4)
for step in range(5 if TINY else 200):  # meta-smoothing: stylised low-res frame -> stylised full-res frame
    scale = 1 + 3 * torch.rand(()).item()
    low = F.interpolate(train, size=(round(SIZE / scale),) * 2, mode="area")
    with torch.no_grad():
        target, low_styled = stylizer(train), stylizer(low)
    loss = F.l1_loss(upscaler(low_styled, SIZE / low.shape[-1]), target)
    opt.zero_grad()
    loss.backward()
    opt.step()
upscaler.eval()

with torch.no_grad():
    start = time.perf_counter()
    every_frame = torch.cat([stylizer(f[None]) for f in clip])
    t_every = time.perf_counter() - start
    start = time.perf_counter()
    result = MVStylizer(stylizer, upscaler, downscale=4.0)(clip)
    t_mv = time.perf_counter() - start
mse = (result.frames - every_frame).square().flatten(1).mean(1)
print(f"key frames {list(result.selection.keys)} of {FRAMES}; PSNR to every-frame output "
      f"{(-10 * mse.log10()).mean():.2f} dB; time {t_every:.2f} s vs {t_mv:.2f} s")
print(f"warping error: every frame {sum(temporal_warping_error(every_frame, clip)) / (FRAMES - 1):.4f}, "
      f"MVStylizer {sum(temporal_warping_error(result.frames, clip)) / (FRAMES - 1):.4f}")
