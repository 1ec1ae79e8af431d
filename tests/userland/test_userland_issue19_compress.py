"""Issue 19 on user-defined models: Force Regularization in a plain loop (item 2) with a force whose
strength does not grow with the filter count and latency reported beside size (item 10); low-rank
decomposition refuses rank 0 and says what it skips (item 8); ownership on a dense mask says the mask
is too dense (item 8)."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.compress.force_regularization import ForceRegularization, add_force_gradient, force_gradient_term
from honed.compress.lowrank import decompose_model, decomposition_cost, plan_ranks
from honed.compress.ownership import embed_signature
from honed.compress.qr_code import qr_encode
from honed.core.errors import InputError


class UserCNN(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


def batches(steps: int = 6):
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(8, 1, 6, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(steps)]


def plain_loop(regularise, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = UserCNN().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = regularise(model)
    for x, y in batches():
        optimizer.zero_grad()
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        hook()
        optimizer.step()
    return model


def test_force_regularization_class_works_alone_in_a_plain_loop(device):
    none = plain_loop(lambda m: (lambda: None), device)
    function = plain_loop(lambda m: (lambda: add_force_gradient(m, force_decay=0.05)), device)
    callback = plain_loop(lambda m: ForceRegularization(m, force_decay=0.05).after_backward, device)
    assert not torch.allclose(function.conv2.weight, none.conv2.weight)  # the force acts
    for a, b in zip(callback.parameters(), function.parameters()):
        assert torch.allclose(a, b, atol=1e-6)  # the class alone == the plain-loop function


def test_force_strength_does_not_grow_with_the_filter_count():
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(1, 27, generator=gen)
    per_filter = {}
    for n in (8, 64):
        w = shared + torch.randn(n, 27, generator=gen)  # partly coordinated filters, as during training
        for scale in ("mean", "sum"):
            term = force_gradient_term(w, None, 1e-3, force_scale=scale)
            per_filter[n, scale] = float((term.norm(dim=1) / w.norm(dim=1)).mean())
    assert 0.67 < per_filter[64, "mean"] / per_filter[8, "mean"] < 1.5
    assert per_filter[64, "sum"] / per_filter[8, "sum"] > 4.0  # the reference's sum: ~N times stronger
    assert per_filter[64, "mean"] <= 1e-3  # the mean pull of unit filters is at most 1 (times force_decay)


def test_decomposition_cost_reports_latency_beside_size(device):
    torch.manual_seed(0)
    model = UserCNN(width=16).to(device).eval()
    small, plan = decompose_model(model, energy=0.5, layers=["conv2"])
    assert plan[0].decomposed
    model.bn1.train()  # a submodule in its own mode must come back in it
    cost = decomposition_cost(model, small, torch.rand(4, 1, 8, 8, device=device), rounds=2, repeats=2)
    assert cost["params_decomposed"] < cost["params_original"]
    assert cost["macs_decomposed"] < cost["macs_original"]
    assert cost["latency_ms_original"] > 0 and cost["latency_ms_decomposed"] > 0 and cost["speedup"] > 0
    assert model.bn1.training and not model.training


def test_lowrank_refuses_rank_zero_and_names_what_it_skips():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.LazyLinear(4))
    model(torch.rand(1, 4, 9, 9))
    with pytest.raises(InputError, match=r"ranks\['0'\] must be an integer >= 1"):
        plan_ranks(model, layers=["0"], ranks={"0": 0})
    with pytest.raises(InputError, match="not decomposed here"):
        plan_ranks(model, layers=["0"], ranks={"3": 2})
    with pytest.warns(UserWarning, match=r"1 \(Conv2d, groups=8\)"):
        plan = plan_ranks(model)
    assert [p.name for p in plan] == ["0", "3"]


def test_lowrank_decomposes_conv1d(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(6, 12, 5, padding=2), nn.ReLU(), nn.Conv1d(12, 4, 1)).to(device)
    x = torch.randn(3, 6, 20, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, plan = decompose_model(model, energy=1.0, only_if_cheaper=False)
    assert isinstance(low[0][0], nn.Conv1d) and plan[0].decomposed
    assert torch.allclose(low(x), model(x), atol=1e-5)


def test_ownership_on_a_dense_mask_says_the_mask_is_too_dense():
    mask = {"conv.weight": torch.ones(32, 32, 3, 3, dtype=torch.bool)}
    with pytest.raises(InputError, match="too dense"):
        embed_signature(mask, qr_encode("owner"))
