"""The small CNN of card 21's ownership reproduction (You are caught stealing my winning lottery ticket!,
arXiv:2111.00162): four 3x3 convs with BN + ReLU whose 64 -> 64 conv can host a 29x29 QR signature."""
import torch
from torch import nn

from honed.core.errors import InputError


class OwnershipCNN(nn.Module):
    """Card 21's small CNN (arXiv:2111.00162): stem conv (stride 2) -> conv2 (stride 2) -> conv3 ->
    conv4, all 3x3 with BN + ReLU, global average pooling, fc. ``channels``: the four conv widths.
    Input (N, in_channels, H, W) in [0, 1], H = W >= 8; output (N, num_classes) logits."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64), in_channels: int = 1,
                 num_classes: int = 10) -> None:
        if len(channels) != 4 or min(channels) < 1 or min(in_channels, num_classes) < 1:
            raise InputError(f"channels must be 4 positive widths and in_channels, num_classes >= 1; got "
                             f"{tuple(channels)}, {in_channels}, {num_classes}")
        super().__init__()
        c1, c2, c3, c4 = channels
        self.stem, self.bn1 = nn.Conv2d(in_channels, c1, 3, 2, 1, bias=False), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2)
        self.conv3, self.bn3 = nn.Conv2d(c2, c3, 3, 1, 1, bias=False), nn.BatchNorm2d(c3)
        self.conv4, self.bn4 = nn.Conv2d(c3, c4, 3, 1, 1, bias=False), nn.BatchNorm2d(c4)
        self.fc = nn.Linear(c4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.stem, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3),
                         (self.conv4, self.bn4)):
            x = torch.relu(bn(conv(x)))
        return self.fc(x.mean((2, 3)))
