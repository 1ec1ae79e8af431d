"""Card 21's small CNN (arXiv:2111.00162): output shape, the 64 -> 64 host conv, and bad widths."""
import pytest
import torch

from honed.compress.ownership_cnn import OwnershipCNN
from honed.core.errors import InputError


def test_logits_shape_and_host_conv():
    model = OwnershipCNN()
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert model.conv4.weight.shape == (64, 64, 3, 3)  # wide enough to host a 29x29 QR window


def test_bad_widths_are_one_clear_error():
    with pytest.raises(InputError, match="channels"):
        OwnershipCNN(channels=(16, 32, 64))
    with pytest.raises(InputError, match="channels"):
        OwnershipCNN(channels=(16, 0, 64, 64))
