"""Auto-TSNet (arXiv:2108.12957) pieces in a user's plain loop: a supernet inside the user's own module,
architectures sampled from ArchDistribution, and the found one retrained as a fixed net."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.data.moving_shapes import make_moving_shapes
from honed.vision.two_stream_search import ArchDistribution, variable_groups
from honed.vision.two_stream_space import FixedArchNet, TwoStreamNet, TwoStreamSpace, arch_macs, slowfast_tiny


class UserVideoModel(nn.Module):
    """A user's model: their own input normalisation around the weight-sharing two-stream net."""

    def __init__(self, space: TwoStreamSpace) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.full((1, 3, 1, 1, 1), 0.5), requires_grad=False)
        self.supernet = TwoStreamNet(space)

    def forward(self, clips, arch):
        return self.supernet(clips - self.mean, arch)


def test_search_loop_on_a_user_model(device):
    space = TwoStreamSpace(frames=8, alpha=4, size=16)
    clips, labels = make_moving_shapes(24, seed=0, frames=8, size=16)
    clips, labels = clips.to(device), labels.to(device)
    torch.manual_seed(0)
    model = UserVideoModel(space).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    dist = ArchDistribution(space, [v for v, _ in space.variables()], {})
    gen, target = torch.Generator().manual_seed(0), arch_macs(space, slowfast_tiny(space))
    for _ in range(2):
        samples = [dist.sample(gen) for _ in range(2)]
        losses = []
        for arch, _ in samples:
            loss = F.cross_entropy(model(clips, arch), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item() + max(0.0, arch_macs(space, arch) / target - 1))
        dist.score_function_step([p for _, p in samples], losses, lr=0.5)
    found = FixedArchNet(space, dist.argmax()).to(device)
    assert found(clips).shape == (24, 12) and found(clips).device.type == device.type


def test_one_frame_video_and_foreign_arch_give_one_clear_error(device):
    space = TwoStreamSpace(frames=8, alpha=4, size=16)
    net = FixedArchNet(space, slowfast_tiny(space)).to(device)
    with pytest.raises(InputError, match="a video of 8 frames"):
        net(torch.rand(2, 3, 1, 16, 16, device=device))
    with pytest.raises(InputError, match="does not fit"):
        FixedArchNet(space, slowfast_tiny(space.scaled(2)))
