"""UNet-s (arXiv:1505.04597): shapes, registry, bad input."""
import pytest
import torch

from honed.core.errors import InputError
from honed.models import create_model


def test_logits_keep_the_spatial_size_and_features_are_exposed():
    model = create_model("unet_s", in_channels=3, num_classes=5, widths=(4, 8, 16)).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 5, 32, 32)
    assert model.features(x).shape == (2, 4, 32, 32)


def test_size_not_divisible_by_the_depth_is_refused():
    model = create_model("unet_s", in_channels=1, num_classes=2, widths=(4, 8, 16))
    with pytest.raises(InputError, match="divisible by 4"):
        model(torch.rand(1, 1, 30, 30))
