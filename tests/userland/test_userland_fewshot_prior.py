"""Query-prior few-shot segmentation (card 34, arXiv:2108.05293) with the user's own encoders: a prior
extractor defined here trained without labels by global + local InfoNCE in a plain loop, its priors and
prior maps, and the FSS head on the user's frozen backbone features; bad inputs give one InputError and
leave the models as they were."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.vision.prior_extractor import extractor_loss, fit_priors, grid_segments, prior_maps
from honed.vision.query_prior_fss import QueryPriorFSS


class UserExtractor(nn.Module):
    """A user's encoder: stride-2 convs; forward -> normalised pixel features, global_embedding -> (N, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))

    def forward(self, x):
        return F.normalize(self.body(x), dim=1)

    def global_embedding(self, x):
        return F.normalize(self.body(x).mean((2, 3)), dim=1)


def test_user_extractor_trains_and_feeds_the_head(device):
    torch.manual_seed(0)
    net, images = UserExtractor().to(device), torch.rand(8, 3, 16, 16, device=device)
    segments = grid_segments(8, 16, 16, 4, device)
    opt, gen = torch.optim.Adam(net.parameters(), 1e-2), torch.Generator().manual_seed(0)
    before = copy.deepcopy(net.state_dict())
    for _ in range(3):
        out = extractor_loss(net, images, segments, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert torch.isfinite(out["loss"]) and not torch.equal(before["body.0.weight"], net.state_dict()["body.0.weight"])
    priors = fit_priors(net, images, segments, k=4)
    maps = prior_maps(net, images, priors)
    head = QueryPriorFSS(feat_channels=8, num_priors=4, hidden=8).to(device)
    feats = net(images).detach()
    masks = torch.zeros(8, 16, 16, device=device)
    masks[:, 4:12, 4:12] = 1
    logits = head(feats[:4], feats[4:, None], masks[4:, None], maps[:4])
    opt.zero_grad()
    F.cross_entropy(logits, masks[:4].long()).backward()
    assert logits.shape == (4, 2, 16, 16) and not maps.requires_grad
    assert all(p.grad is None for p in net.parameters())  # no gradient reaches the frozen extractor
    assert all(p.grad is not None for p in head.parameters())


def test_bad_input_leaves_the_models_alone(device):
    head = QueryPriorFSS(feat_channels=8, num_priors=0, hidden=8).to(device)
    state = copy.deepcopy(head.state_dict())
    q, s = torch.randn(2, 8, 4, 4, device=device), torch.randn(2, 1, 8, 4, 4, device=device)
    with pytest.raises(InputError, match="no foreground"):
        head(q, s, torch.zeros(2, 1, 16, 16, device=device))
    with pytest.raises(InputError, match="only 0 and 1"):
        head(q, s, torch.full((2, 1, 16, 16), 2.0, device=device))
    with pytest.raises(InputError, match="like the supports"):
        head(q[:, :4], s, torch.ones(2, 1, 16, 16, device=device))
    assert all(torch.equal(v, state[k]) for k, v in head.state_dict().items())
