"""Small reference networks: an MLP and a compact CNN, both with optional BatchNorm."""
import torch
from torch import nn

from honed.models.base import MODELS


@MODELS.register("mlp")
class MLP(nn.Sequential):
    """MLP ``in_features -> hidden... -> num_classes`` with ReLU (and BN before it when ``bn``).

    Input (N, in_features) or any (N, ...) that flattens to it; output logits (N, num_classes).
    """

    def __init__(self, in_features: int = 64, hidden: tuple[int, ...] = (256, 256),
                 num_classes: int = 10, bn: bool = True) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), *( [nn.BatchNorm1d(h)] if bn else []), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


@MODELS.register("cnn")
class SmallCNN(nn.Module):
    """conv(c1)-BN-ReLU-conv(c2)-BN-ReLU-maxpool-fc(hidden)-ReLU-fc(classes) for (N, C, H, W) input,
    H = W >= 4. The classifier's input size follows from the spatial size via adaptive pooling."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: tuple[int, int] = (16, 32),
                 hidden: int = 64, bn: bool = True, pooled: int = 4) -> None:
        super().__init__()
        c1, c2 = channels
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=not bn), norm(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, bias=not bn), norm(c2), nn.ReLU(),
            nn.AdaptiveMaxPool2d(pooled),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * pooled * pooled, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
