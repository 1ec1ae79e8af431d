"""The A*HAR convolutional net (Narasimman et al., "A*HAR: A New Benchmark towards Semi-supervised
learning for Class-imbalanced Human Activity Recognition", arXiv:2101.04859), reference ``har_conv2d``.

An IMU window of 9 sensor channels x T time steps is treated as a one-channel image of 9 rows x T
columns. Layout (weight-normalised convs, LeakyReLU 0.1, 'same' padding, 3x3 kernels)::

    Gaussian input noise (train mode) -> [conv w0, conv w0] -> maxpool 1x2 -> dropout
    -> [conv w1, conv w1] -> maxpool 1x2 -> dropout -> [conv w2, conv w2] -> maxpool 1x2 -> dropout
    -> conv w3 3x3 'valid' -> conv w4 1x1 -> conv w5 1x1 -> global average pool -> linear (classes)

The paper's widths are (128, 256, 256, 512, 256, 128); the card's CPU reproduction divides them by 4
(the default here). Pooling is over time only: the 9 sensor rows are never pooled.
"""
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from honed.core.errors import InputError, check_number

PAPER_WIDTHS = (128, 256, 256, 512, 256, 128)
CARD_WIDTHS = tuple(w // 4 for w in PAPER_WIDTHS)  # (32, 64, 64, 128, 64, 32)


class GaussianInputNoise(nn.Module):
    """A*HAR (arXiv:2101.04859) input noise: adds N(0, sigma^2) to every entry in train mode only."""

    def __init__(self, sigma: float = 0.15) -> None:
        super().__init__()
        self.sigma = check_number(sigma, "sigma")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return x + self.sigma * torch.randn_like(x)
        return x


class TimeMaxPool(nn.Module):
    """A*HAR (arXiv:2101.04859) 1x2 max pooling over time only: (B, C, H, W) -> (B, C, H, W // 2)
    (an odd last step is dropped, like ``nn.MaxPool2d((1, 2))``; computed as a reshape-max, which is
    several times faster than MaxPool2d on CPU for these shapes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x[..., :2 * half].unflatten(-1, (half, 2)).amax(-1)


def _conv(cin: int, cout: int, kernel: int, padding: int | str) -> nn.Sequential:
    return nn.Sequential(weight_norm(nn.Conv2d(cin, cout, kernel, padding=padding)), nn.LeakyReLU(0.1))


class HARConvNet(nn.Module):
    """A*HAR CNN (``har_conv2d``, arXiv:2101.04859) with configurable widths.

    Input: (batch, channels, time) float windows (e.g. 9 IMU channels x 64 steps; time >= 24 so three
    1x2 poolings leave >= 3 steps for the 'valid' 3x3 conv; channels >= 3) or the image layout
    (batch, 1, channels, time). Output: (batch, num_classes) logits. ``widths`` = the six conv widths
    (default: the paper's divided by 4), ``dropout`` p = 0.5, ``input_noise`` sigma = 0.15.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = CARD_WIDTHS, dropout: float = 0.5,
                 input_noise: float = 0.15, device: str | torch.device | None = None) -> None:
        super().__init__()
        if len(widths) != 6 or any(int(w) < 1 for w in widths):
            raise InputError(f"widths must be 6 positive ints, got {widths!r}")
        if not 0 <= dropout < 1:
            raise InputError(f"dropout must lie in [0, 1), got {dropout}")
        if num_classes < 2:
            raise InputError(f"num_classes must be >= 2, got {num_classes}")
        w0, w1, w2, w3, w4, w5 = (int(w) for w in widths)
        blocks, cin = [], 1
        for width in (w0, w1, w2):
            blocks += [_conv(cin, width, 3, 1), _conv(width, width, 3, 1),
                       TimeMaxPool(), nn.Dropout(dropout)]
            cin = width
        self.noise = GaussianInputNoise(input_noise)
        self.features = nn.Sequential(*blocks, _conv(w2, w3, 3, 0), _conv(w3, w4, 1, 0), _conv(w4, w5, 1, 0))
        self.classifier = weight_norm(nn.Linear(w5, num_classes))
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] < 3 or x.shape[3] < 24:
            raise InputError(f"expected (batch, channels>=3, time>=24) windows, got shape {tuple(x.shape)}")
        h = self.features(self.noise(x))
        return self.classifier(h.mean(dim=(2, 3)))
