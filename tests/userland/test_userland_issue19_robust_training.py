"""Issue 19 on user-defined CNNs: convert_to_dubin finds BatchNorms by type, is idempotent and keeps
plain checkpoints loadable (item 3); AugMax refuses NaN chains and restores every submodule's mode
(items 9, 5); Smooth restores per-submodule modes (item 5); a plain MLP becomes an RST subnet network
with to_subnet instead of failing in extract_ticket (item 7)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.robust.certify import Smooth
from honed.robust.scratch_tickets import extract_ticket, search_ticket, to_subnet
from honed.robust.training.augmax import DuBIN, augmax_attack, convert_to_dubin, sample_chains


class UserCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def images(n=4, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_dubin_finds_batchnorms_by_type_and_is_idempotent():
    torch.manual_seed(0)
    model = UserCNN()
    convert_to_dubin(model)
    dubins = [m for m in model.modules() if isinstance(m, DuBIN)]
    assert len(dubins) == 3 and [m.split for m in dubins] == [4, 4, 0]  # IN in all but the last norm
    state = {k: v.clone() for k, v in model.state_dict().items()}
    convert_to_dubin(model)  # second call: nothing nests, nothing changes
    assert not any(isinstance(m, DuBIN) for d in dubins for m in d.bn.modules())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(InputError, match="no BatchNorm2d"):
        convert_to_dubin(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))


def test_a_plain_checkpoint_loads_into_the_converted_model():
    torch.manual_seed(0)
    trained = UserCNN()
    trained.train()
    for s in range(3):  # move the running statistics and affine parameters off their defaults
        trained(images(8, s))
    with torch.no_grad():
        for m in trained.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    checkpoint = trained.state_dict()
    fresh = convert_to_dubin(UserCNN())
    fresh.load_state_dict(checkpoint)  # strict: every key is used
    direct = convert_to_dubin(trained)
    for k, v in direct.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_augmax_refuses_nan_chains_and_keeps_each_submodule_mode(device):
    model = convert_to_dubin(UserCNN().to(device))
    model.train()
    model.features[1].eval()  # a frozen norm inside a training model
    x, y = images().to(device), torch.tensor([0, 1, 2, 0], device=device)
    chains = sample_chains(x, generator=torch.Generator().manual_seed(0))
    bad = chains.clone()
    bad[1, 0, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match="chains"):
        augmax_attack(model, x, y, bad, steps=2)
    augmax_attack(model, x, y, chains, steps=2)
    assert model.training and not model.features[1].training and model.features[4].training


def test_smooth_restores_every_submodule_mode(device):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.5),
                          nn.Linear(16, 3)).to(device)
    model.train()
    model[2].eval()
    smooth = Smooth(model, num_classes=3, sigma=0.25, generator=torch.Generator().manual_seed(0))
    smooth.predict(images(1)[0], n=20, alpha=0.1, batch_size=10)
    assert model.training and not model[2].training and model[3].training


def test_a_plain_mlp_becomes_a_subnet_network_for_tickets(device):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32, affine=False), nn.ReLU(),
                        nn.Linear(32, 3)).to(device)
    with pytest.raises(InputError, match="to_subnet"):
        extract_ticket(mlp)
    net = to_subnet(mlp, keep_ratio=0.5, weight_init="keep")
    assert torch.equal(net[1].weight, mlp[1].weight)  # frozen user weights, trainable scores
    x, y = images(16), torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(0))
    search_ticket(net, [(x, y)], epochs=1)  # CPU batches follow the network's device
    x, y = x.to(device), y.to(device)
    ticket = extract_ticket(net)
    assert set(ticket.masks) == {"1", "4"} and ticket.density() == pytest.approx(0.5, abs=0.01)
    assert F.cross_entropy(net(x), y).isfinite()
    with pytest.raises(InputError, match="cannot become a SubnetConv2d"):
        to_subnet(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
