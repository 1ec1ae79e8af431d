"""ResNet-s: a CIFAR-style residual network (He et al. 2016, arXiv:1512.03385) with width and depth as
arguments, for 8x8 to 32x32 inputs."""
import torch
from torch import nn
import torch.nn.functional as F

from honed.models.base import MODELS


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU-3x3 conv-BN + shortcut (1x1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@MODELS.register("resnet_s")
class ResNetS(nn.Module):
    """Stem 3x3 conv, then ``len(widths)`` stages of ``blocks_per_stage`` BasicBlocks (stride 2 from
    the second stage), global average pooling and a linear head.

    Input (N, in_channels, H, W) with H, W in 8..32; output logits (N, num_classes).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64),
                 blocks_per_stage: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, c_in = [], widths[0]
        for i, width in enumerate(widths):
            blocks = [BasicBlock(c_in, width, 2 if i > 0 else 1)]
            blocks += [BasicBlock(width, width) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
