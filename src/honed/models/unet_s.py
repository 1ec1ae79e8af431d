"""UNet-s: a small U-Net for dense prediction (Ronneberger et al., "U-Net", arXiv:1505.04597), sized for
CPU reproductions on synthetic 32x32 / 64x64 scenes.

``create_model("unet_s", in_channels=3, num_classes=5, widths=(16, 32, 64))``. Input (N, C, H, W) with
H and W divisible by 2 ** (len(widths) - 1); output logits (N, num_classes, H, W). Each level is two
3x3 conv-BN-ReLU; down by max-pool, up by bilinear upsampling + concat with the skip + two convs.
"""
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.models.base import MODELS


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers (U-Net's level block), spatial size kept."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


@MODELS.register("unet_s")
class UNetS(nn.Module):
    """Small U-Net (arXiv:1505.04597): (N, in_channels, H, W) -> logits (N, num_classes, H, W).
    ``features(x)`` returns the decoder's last feature map (N, widths[0], H, W) for methods that need it."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        if len(widths) < 2 or min(widths) < 1 or num_classes < 1 or in_channels < 1:
            raise InputError(f"UNetS needs >= 2 positive widths and positive channel counts, got {widths}")
        self.widths = tuple(widths)
        self.down = nn.ModuleList([conv_block(in_channels, widths[0])] +
                                  [conv_block(widths[i - 1], widths[i]) for i in range(1, len(widths))])
        self.up = nn.ModuleList([conv_block(widths[i] + widths[i - 1], widths[i - 1])
                                 for i in range(len(widths) - 1, 0, -1)])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (len(self.widths) - 1)
        if x.dim() != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise InputError(f"UNetS input must be (N, C, H, W) with H, W divisible by {factor}, got {tuple(x.shape)}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
