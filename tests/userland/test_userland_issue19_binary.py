"""Issue 19 on user-defined models: create_bnn's binary variants are binary by default and a user's
own CNN can be binarised (item 6); AGC given a model says what to pass instead of a bare TypeError
(item 7)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.compress.binary import AdaptiveGradClip, BinaryConv2d, BinaryLinear, RSign, parameters_except
from honed.compress.bnn_models import binarize, count_binary_macs, create_bnn
from honed.core.errors import InputError


class UserCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 16)
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        x = self.body(self.stem(x)).mean((2, 3))
        return self.classifier(F.relu(self.fc(x)))


def test_binary_variants_are_binary_by_default():
    net = create_bnn("bnfree", widths=(8, 16), strides=(1, 2), stem_width=8)
    layers = [m for m in net.modules() if isinstance(m, BinaryConv2d)]
    assert layers and all(m.binary_weights for m in layers)
    w = layers[0].effective_weight().detach()
    assert all(len(row.unique()) <= 2 for row in w.flatten(1))  # each output row takes +-a_o only
    assert not any(m.binary_weights for m in create_bnn("bnfree", binary_weights=False).modules()
                   if isinstance(m, BinaryConv2d))  # the card's step 1, on request


def test_binarize_a_user_cnn():
    torch.manual_seed(0)
    model = UserCNN()
    binary = binarize(model)
    assert isinstance(binary.stem, nn.Conv2d) and isinstance(binary.classifier, nn.Linear)  # kept real
    sign, conv = binary.body[2]
    assert isinstance(sign, RSign) and isinstance(conv, BinaryConv2d) and conv.binary_weights and conv.stride == 2
    assert isinstance(binary.fc[1], BinaryLinear) and torch.equal(binary.fc[1].bias, model.fc.bias)
    assert not any(isinstance(m, nn.ReLU) for m in binary.modules())  # sign(ReLU(x)) would be constant
    assert any(isinstance(m, nn.ReLU) for m in model.modules())  # the user's model is untouched
    x = torch.rand(4, 1, 8, 8)
    assert binary(x).shape == (4, 3)
    assert count_binary_macs(binary, x) == 16 * 4 * 4 * 8 * 9  # the binarised conv's XNOR-popcount ops
    F.cross_entropy(binary(x), torch.tensor([0, 1, 2, 0])).backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    with pytest.raises(InputError, match="'nope'"):
        binarize(model, layers=["nope"])


def test_agc_given_a_model_says_what_to_pass():
    model = UserCNN()
    with pytest.raises(InputError, match="parameters_except"):
        AdaptiveGradClip(model)
    with pytest.raises(InputError, match="tensors"):
        AdaptiveGradClip([model.fc])
    AdaptiveGradClip(parameters_except(model, model.classifier))
