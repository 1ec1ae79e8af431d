"""Network Slimming (arXiv:1708.06519): the L1 subgradient on BN gammas, |gamma| channel scores over
residual-coupled groups, and the global threshold that fits a MACs budget."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.compress.channel_surgery import ChannelGroup, find_channel_groups, layer_costs, macs_from_counts
from honed.compress.slimming import add_bn_l1_subgradient, bn_importance, global_keep_for_macs, keep_above
from honed.core.errors import InputError
from honed.models import create_model


def test_subgradient_adds_lam_times_sign_of_gamma():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-2.0, 0.0, 3.0]))
    bn.weight.grad = torch.tensor([0.5, 0.5, 0.5])
    add_bn_l1_subgradient(nn.Sequential(bn), 0.1)
    assert torch.allclose(bn.weight.grad, torch.tensor([0.4, 0.5, 0.6]))
    bn.weight.grad = None
    add_bn_l1_subgradient(nn.Sequential(bn), 0.1)  # a missing grad is created
    assert torch.allclose(bn.weight.grad, torch.tensor([-0.1, 0.0, 0.1]))


def test_residual_stream_score_is_mean_abs_gamma_of_its_bns():
    model = create_model("resnet_s", in_channels=1, num_classes=10, widths=(4, 8), blocks_per_stage=1)
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, -1, 1)
    for group in find_channel_groups(model, torch.rand(1, 1, 8, 8)):
        bns = [model.get_submodule(p.norm).weight.detach().abs() for p in group.producers if p.norm]
        assert torch.allclose(bn_importance(model, group), torch.stack(bns).mean(0))
    no_bn = ChannelGroup("g", 2, producers=[])
    with pytest.raises(InputError, match="no BatchNorm2d"):
        bn_importance(model, no_bn)


def tiny_stack():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    groups = find_channel_groups(model, torch.zeros(1, 1, 5, 5))
    return model, groups, layer_costs(model, groups, torch.zeros(1, 1, 5, 5))


@settings(max_examples=30)
@given(st.integers(0, 10_000), st.floats(0.05, 1.0))
def test_global_threshold_is_the_lowest_that_fits_the_budget(seed, budget_fraction):
    _, groups, costs = tiny_stack()
    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.channels, generator=gen) for g in groups}
    dense = macs_from_counts(costs, [g.channels for g in groups])
    budget = budget_fraction * dense
    count = lambda keep: macs_from_counts(costs, [len(keep[g.name]) for g in groups])  # noqa: E731
    keep = global_keep_for_macs(scores, groups, costs, budget)
    fitting = [t for t in torch.cat(list(scores.values())).tolist() if count(keep_above(scores, t)) <= budget]
    if fitting:  # brute force over every candidate threshold
        assert count(keep) <= budget
        assert count(keep) == count(keep_above(scores, min(fitting)))
    else:  # even one channel per group is over budget: the minimal network
        assert all(len(k) == 1 for k in keep.values())


def test_keep_sets_follow_one_global_threshold_across_groups():
    _, groups, costs = tiny_stack()
    scores = {groups[0].name: torch.tensor([0.9, 0.1, 0.5, 0.05]),
              groups[1].name: torch.tensor([0.2, 0.8, 0.3, 0.01, 0.7, 0.6])}
    keep = global_keep_for_macs(scores, groups, costs, 0.5 * macs_from_counts(costs, [4, 6]))
    kept = torch.cat([scores[n][k] for n, k in keep.items()])
    dropped = torch.cat([scores[n][[i for i in range(len(s)) if i not in keep[n].tolist()]]
                         for n, s in scores.items()])
    assert kept.min() > dropped.max()  # every kept score above every removed one


def test_bn_importance_stays_on_the_bn_device():
    from tests.device_checks import META, assert_on
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3))
    group = find_channel_groups(model, torch.rand(1, 1, 8, 8))[0]
    assert_on(META, bn_importance(model.to(META), group))
