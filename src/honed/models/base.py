"""The model registry and factory."""
import torch

from honed.core.registry import Registry

MODELS: Registry = Registry("model")


def create_model(name: str, **kwargs) -> torch.nn.Module:
    """Build a registered model, e.g. ``create_model("resnet_s", in_channels=1, num_classes=10)``."""
    return MODELS.get(name)(**kwargs)
