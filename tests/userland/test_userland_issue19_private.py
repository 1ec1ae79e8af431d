"""Issue 19, item 7 on user-defined CNNs: convert_to_ffconv takes one int rank for every conv and
checks every rank first; encrypted_forward on a non-Sequential model says to wrap it, not TypeError."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.private.ffconv import FFConv, Square, convert_to_ffconv
from honed.private.he_plan import encrypted_forward


class UserCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.act, self.fc = Square(), nn.Linear(6 * 16, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv2(self.act(self.conv1(x)))).flatten(1))


def test_one_int_rank_converts_every_conv():
    torch.manual_seed(0)
    model = UserCNN()
    low = convert_to_ffconv(model, 4)
    assert isinstance(low.conv1, FFConv) and low.conv1.rank == 4 and low.conv2.rank == 4
    assert isinstance(model.conv1, nn.Conv2d)  # the user's model is untouched
    full = convert_to_ffconv(model, 6)
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(full(x), model(x), atol=1e-4)  # full rank (min(C_out, C_in d^2) = 6) is exact


def test_bad_ranks_name_the_layer_or_the_type():
    model = UserCNN()
    with pytest.raises(InputError, match="layer 'conv1'.*rank"):
        convert_to_ffconv(model, 7)  # conv1 allows at most min(C_out, C_in d^2) = min(6, 9)
    with pytest.raises(InputError, match="layer 'conv2'.*rank"):
        convert_to_ffconv(model, {"conv1": 3, "conv2": 7})
    with pytest.raises(InputError, match="rank must be an int"):
        convert_to_ffconv(model, "4")


def test_encrypted_forward_on_a_user_module_says_to_wrap_it():
    with pytest.raises(InputError, match="nn.Sequential"):
        encrypted_forward(UserCNN(), torch.rand(1, 1, 4, 4), "ffconv")
