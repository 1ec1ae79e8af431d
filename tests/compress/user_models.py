"""User-defined architectures for the channel tests (never honed.models): a pre-activation residual
net, a concatenation + depthwise + squeeze-excitation net, and a net calling one conv twice."""
import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        h = self.conv1(F.relu(self.bn1(x)))
        return x + self.conv2(F.relu(self.bn2(h)))


class PreActNet(nn.Module):
    """Pre-activation residual stream: BatchNorms applied to the stream, convs writing it without BN."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.blocks = nn.Sequential(PreActBlock(6), PreActBlock(6))
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1))


class DenseMobileSE(nn.Module):
    """Concatenation, a BN on the concatenation, depthwise conv + BN, squeeze-excitation, mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn_b, self.bn_cat = nn.BatchNorm2d(4), nn.BatchNorm2d(7)
        self.dw, self.bn_dw = nn.Conv2d(7, 7, 3, padding=1, groups=7, bias=False), nn.BatchNorm2d(7)
        self.pw = nn.Conv2d(7, 5, 1)
        self.se1, self.se2 = nn.Conv2d(5, 2, 1), nn.Conv2d(2, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), F.relu(self.bn_b(self.b(x)))], dim=1)
        h = F.relu6(self.bn_dw(self.dw(F.relu(self.bn_cat(h)))))
        h = self.pw(h)
        h = h * torch.sigmoid(self.se2(F.relu(self.se1(h.mean((2, 3), keepdim=True)))))
        return self.head(torch.flatten(F.max_pool2d(h, 4).mean((2, 3), keepdim=True), 1))


class Shared(nn.Module):
    """One conv called twice, and a flatten through view before a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.shared = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        h = F.relu(self.first(x))
        h = F.relu(self.shared(h)) + F.relu(self.shared(h * 0.5))
        h = F.avg_pool2d(h, 2)
        return self.head(h.view(h.shape[0], -1))


def settle(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give every BN non-trivial affine parameters and running statistics (from ``x``), then eval."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
    with torch.no_grad():
        model.train()(x)
    return model.eval()
