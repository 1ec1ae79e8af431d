"""The reference photorealistic stylisation of the MVStylizer reproduction (MVStylizer, arXiv:2005.11630,
card "Reproduction at small scale"): a colour/tone transfer target (Reinhard Lab mean/std transfer to a
style photo, then an edge-preserving bilateral smoothing, both by OpenCV) and the small CNN stylizer
trained to reproduce it, which plays the part of the expensive per-frame DNN.

Images are (N, 3, H, W) or (3, H, W) float RGB in [0, 1].
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from honed.core.errors import InputError, require_extra


def _check_rgb(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise InputError(f"{name} must be RGB (3, H, W) or (N, 3, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise InputError(f"{name} must be finite floats in [0, 1]")
    return images if images.dim() == 4 else images[None]


def _to_lab(image: torch.Tensor) -> np.ndarray:
    cv2 = require_extra("cv2", "video")
    rgb = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2Lab)


@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and std of an image in CIE Lab (OpenCV's float convention)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, image: torch.Tensor) -> "LabStats":
        """Statistics of one RGB image (3, H, W) in [0, 1]."""
        lab = _to_lab(_check_rgb(image, "style")[0]).reshape(-1, 3)
        return cls(lab.mean(0), lab.std(0) + 1e-6)


    @classmethod
    def of_many(cls, images: torch.Tensor) -> "LabStats":
        """Statistics over every pixel of ``images`` (N, 3, H, W) (e.g. a whole training set)."""
        lab = np.concatenate([_to_lab(image).reshape(-1, 3) for image in _check_rgb(images, "images")])
        return cls(lab.mean(0), lab.std(0) + 1e-6)


def photoreal_target(images: torch.Tensor, style: LabStats, content: LabStats | None = None,
                     bilateral_diameter: int = 7, sigma_color: float = 0.1, sigma_space: float = 3.0) -> torch.Tensor:
    """Reinhard colour transfer to ``style``: each image's Lab values are standardised by ``content``
    (fixed statistics, e.g. of a training set; None = each image's own, the classic per-image transfer)
    and given the style's mean and std; then OpenCV's bilateral filter (``bilateral_diameter`` px,
    ``sigma_color`` in [0, 1] units, ``sigma_space`` px). Same shape and device as ``images``."""
    cv2 = require_extra("cv2", "video")
    batch = _check_rgb(images, "images")
    out = []
    for image in batch:
        lab = _to_lab(image)
        stats = content or LabStats(lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-6)
        mean, std = stats.mean, stats.std
        moved = ((lab - mean) / std * style.std + style.mean).astype(np.float32)
        rgb = np.clip(cv2.cvtColor(moved, cv2.COLOR_Lab2RGB), 0, 1).astype(np.float32)
        if bilateral_diameter > 0:
            rgb = cv2.bilateralFilter(rgb, bilateral_diameter, sigma_color, sigma_space)
        out.append(torch.from_numpy(np.clip(rgb, 0, 1)).permute(2, 0, 1))
    result = torch.stack(out).to(device=images.device, dtype=images.dtype)
    return result if images.dim() == 4 else result[0]


class SmallStylizer(nn.Module):
    """The card's reference stylizer S (MVStylizer arXiv:2005.11630 reproduction): ``layers`` 3x3 convs
    of ``width`` channels with ReLU, predicting a residual on the input; (N, 3, H, W) in [0, 1] -> same
    shape, clamped to [0, 1]. Fully convolutional: it runs at any resolution."""

    def __init__(self, width: int = 32, layers: int = 5) -> None:
        super().__init__()
        if layers < 2 or width < 1:
            raise InputError(f"SmallStylizer needs layers >= 2 and width >= 1, got {layers}, {width}")
        convs: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(layers - 2):
            convs += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        convs.append(nn.Conv2d(width, 3, 3, padding=1))
        self.body = nn.Sequential(*convs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = _check_rgb(images, "images")
        out = (batch + self.body(batch)).clamp(0, 1)
        return out if images.dim() == 4 else out[0]
