"""SSDDA (card 05, Chen et al. 2021) on a segmentation model defined here, in a plain loop: step 1 mixes a
'source' domain into a few labeled 'target' images, step 2 runs the intra-domain mean teacher on unlabeled
target images; bad inputs give one InputError and leave the model as it was."""
import copy

import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.vision.ssdda import IntraDomainMixing, inter_domain_loss


class UserSegmenter(nn.Module):
    """A user's own two-class segmenter: three convs, no honed model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 2, 1))

    def forward(self, x):
        return self.net(x)


def squares(n: int, seed: int, tint: float, device):
    """A bright square (class 1) on a dark background; ``tint`` shifts the colour (the domain)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = 0.2 * torch.rand(n, 3, 16, 16, generator=gen), torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, 9, (2,), generator=gen))
        x[i, :, r:r + 7, c:c + 7] = torch.tensor([0.9, 0.9 - tint, 0.9 - 2 * tint]).view(3, 1, 1)
        y[i, r:r + 7, c:c + 7] = 1
    return x.to(device), y.to(device)


def pixel_accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_two_steps_on_a_user_model_in_a_plain_loop(device):
    torch.manual_seed(0)
    model = UserSegmenter().to(device)
    x_s, y_s = squares(16, 0, 0.0, device)
    x_t, y_t = squares(4, 1, 0.4, device)
    x_u, _ = squares(16, 2, 0.4, device)
    x_test, y_test = squares(16, 3, 0.4, device)
    opt, gen = torch.optim.Adam(model.parameters(), 1e-2), torch.Generator().manual_seed(0)
    for step in range(60):
        pick = torch.randint(0, 4, (8,), generator=gen).to(device)
        loss = inter_domain_loss(model, x_s[:8] if step % 2 else x_s[8:], y_s[:8] if step % 2 else y_s[8:],
                                 x_t[pick], y_t[pick], num_classes=2, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after_step1 = pixel_accuracy(model, x_test, y_test)
    assert after_step1 > 0.9  # background alone is ~0.81 of the pixels
    student = copy.deepcopy(model)
    mt = IntraDomainMixing(student, torch.optim.Adam(student.parameters(), 1e-3), num_classes=2, tau=0.9)
    weights = [mt.step(x_t, y_t, x_u[torch.randperm(16, generator=gen)[:8].to(device)], gen)["weight"]
               for _ in range(10)]
    assert min(weights) > 0.5  # a confident teacher: the unlabeled term is on
    assert pixel_accuracy(mt.teacher, x_test, y_test) > 0.9


def test_refused_calls_leave_the_user_model_unchanged(device):
    model = UserSegmenter().to(device)
    mt = IntraDomainMixing(model, torch.optim.SGD(model.parameters(), 0.1), num_classes=2)
    state = copy.deepcopy(model.state_dict())
    x, y = squares(2, 0, 0.0, device)
    with pytest.raises(InputError, match="labels must lie"):
        mt.step(x, y + 2, x)
    with pytest.raises(InputError, match="float"):
        inter_domain_loss(model, y, y, x, y, num_classes=2)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
