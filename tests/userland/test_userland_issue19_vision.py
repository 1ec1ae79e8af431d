"""Issue 19 on user-defined models: DASR with a response layer outside the model says so instead of
KeyError: 'response' (item 8); UnifiedDALoss refuses NaN logits instead of returning a NaN loss
(item 9)."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.vision.dasr import DASR
from honed.vision.domain_adaptation import UnifiedDALoss


class UserCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.unused = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block2(self.block1(x)).mean((2, 3)))


def test_dasr_names_a_response_layer_outside_the_model():
    model = UserCNN().eval()
    with pytest.raises(InputError, match="response_layer must be a submodule"):
        DASR(model, nn.Conv2d(4, 4, 3), model.block1)
    dasr = DASR(model, model.unused, model.block1)  # inside the model, but never run by forward
    with pytest.raises(InputError, match="never ran"):
        dasr.regions(torch.rand(3, 16, 16))
    dasr = DASR(model, model.head, model.block1)  # runs, but gives no feature map
    with pytest.raises(InputError, match=r"\(B, C, h, w\)"):
        dasr.regions(torch.rand(3, 16, 16))
    boxes, scores = DASR(model, model.block2, model.block1).regions(torch.rand(3, 16, 16))
    assert boxes.shape[1] == 4 and len(boxes) == len(scores)


def test_unified_da_loss_refuses_nan_logits():
    torch.manual_seed(0)
    loss = UnifiedDALoss(feature_dim=5, adversarial=0.0, mmd=0.0, entropy=0.0)  # only CE is on
    fs, ft, ls, lt = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    assert torch.isfinite(loss(fs, ft, ls, lt, y, 0.5)["total"])
    bad = lt.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(InputError, match="target logits"):
        loss(fs, ft, ls, bad, y, 0.5)
    with pytest.raises(InputError, match="source_labels"):
        loss(fs, ft, ls, lt, torch.tensor([0, 1, 3, 0]), 0.5)
