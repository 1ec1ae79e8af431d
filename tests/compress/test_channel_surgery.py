"""Physical channel removal: the pruned network computes what the masked one did, MACs match a hand
count, residual streams stay shape-consistent, layers that cannot be sliced keep their channels and are
named."""
import pytest
import torch
from torch import nn

from honed.compress.channel_surgery import (channel_importance, find_channel_groups, fold_channel_scale,
                                            keep_top, layer_costs, macs_from_counts, remove_channels,
                                            round_keep_down, trace_channels, uniform_keep_for_macs)
from honed.core.errors import InputError
from honed.core.measure import count_macs
from honed.models import create_model
from tests.compress.user_models import settle


def _random_keep(groups, gen):
    keep = {}
    for g in groups:
        k = int(torch.randint(1, g.channels + 1, (1,), generator=gen))
        keep[g.name] = torch.randperm(g.channels, generator=gen)[:k].sort().values
    return keep


def _mask_groups(model, groups, keep):
    """Zero every removed channel at its producers (BN gamma and beta -> 0): the masked network."""
    for g in groups:
        mask = torch.zeros(g.channels)
        mask[keep[g.name]] = 1.0
        fold_channel_scale(model, g, mask)


MODELS = [
    ("resnet_s", dict(in_channels=1, widths=(8, 12, 20), blocks_per_stage=2)),
    ("resnet_s", dict(in_channels=3, widths=(6, 6, 10), blocks_per_stage=1)),
    ("cnn", dict(in_channels=1, channels=(6, 10), bn=True)),
    ("cnn", dict(in_channels=1, channels=(6, 10), bn=False)),
]


@pytest.mark.parametrize("name,kw", MODELS)
def test_pruned_model_equals_masked_model(name, kw):
    x = torch.rand(6, kw["in_channels"], 12, 12)
    model = settle(create_model(name, **kw), x)
    groups = find_channel_groups(model, x[:1])
    keep = _random_keep(groups, torch.Generator().manual_seed(0))
    _mask_groups(model, groups, keep)
    with torch.no_grad():
        masked = model(x)
        pruned = remove_channels(model, groups, keep)
        out = pruned(x)
    assert torch.allclose(out, masked, atol=1e-5)
    for g in groups:  # the removed channels are really gone
        conv = pruned.get_submodule(g.producers[0].layer)
        assert conv.out_channels == len(keep[g.name]) == conv.weight.shape[0]


def test_resnet_groups_share_residual_streams():
    model = create_model("resnet_s", in_channels=1, widths=(8, 12, 20), blocks_per_stage=2)
    groups = {g.name: g for g in find_channel_groups(model, torch.rand(1, 1, 16, 16))}
    streams = {"stem.0", "stages.1.0.conv2", "stages.2.0.conv2"}
    assert set(groups) == streams | {f"stages.{s}.{b}.conv1" for s in range(3) for b in range(2)}
    stream1 = groups["stages.1.0.conv2"]
    assert {p.layer for p in stream1.producers} == {"stages.1.0.shortcut.0", "stages.1.0.conv2", "stages.1.1.conv2"}
    assert {p.norm for p in stream1.producers} == {"stages.1.0.shortcut.1", "stages.1.0.bn2", "stages.1.1.bn2"}
    assert {c.layer for c in stream1.consumers} == {"stages.1.1.conv1", "stages.2.0.conv1", "stages.2.0.shortcut.0"}
    assert {c.layer for c in groups["stages.2.0.conv2"].consumers} == {"stages.2.1.conv1", "head"}
    assert [p.layer for p in groups["stem.0"].producers] == ["stem.0", "stages.0.0.conv2", "stages.0.1.conv2"]


def test_residual_shapes_line_up_after_surgery_with_different_widths():
    model = settle(create_model("resnet_s", in_channels=1, widths=(8, 12, 20), blocks_per_stage=2),
                    torch.rand(4, 1, 16, 16))
    groups = find_channel_groups(model, torch.rand(1, 1, 16, 16))
    keep = {"stem.0": torch.tensor([1, 4, 6]), "stages.1.0.conv2": torch.tensor([0, 11]),
            "stages.2.0.conv2": torch.arange(0, 20, 3), "stages.0.0.conv1": torch.tensor([2]),
            "stages.1.1.conv1": torch.arange(5)}
    pruned = remove_channels(model, groups, keep)
    for stage in pruned.stages:
        for block in stage:
            assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels
            assert block.conv2.out_channels == block.bn2.num_features
            if len(block.shortcut):
                assert block.shortcut[0].in_channels == block.conv1.in_channels
                assert block.shortcut[0].out_channels == block.conv2.out_channels
    widths = [(b.conv1.in_channels, b.conv1.out_channels, b.conv2.out_channels) for s in pruned.stages for b in s]
    assert widths == [(3, 1, 3), (3, 8, 3), (3, 12, 2), (2, 5, 2), (2, 20, 7), (7, 20, 7)]
    assert pruned.head.in_features == 7
    assert pruned(torch.rand(2, 1, 16, 16)).shape == (2, 10)


def _tiny_stack() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, 3))


def test_macs_of_pruned_tiny_stack_match_hand_count():
    model, x = _tiny_stack().eval(), torch.rand(1, 1, 5, 5)
    groups = find_channel_groups(model, x)
    assert [(g.name, g.channels) for g in groups] == [("0", 4), ("3", 6)]
    assert groups[1].consumers[0].features_per_channel == 4
    costs = layer_costs(model, groups, x)
    # conv1: 3*3*5*5 per pair * 1 in * 2 out; conv2: 225 * 2 * 3; linear: (3 channels * 4 features) * 3
    hand = 225 * 1 * 2 + 225 * 2 * 3 + 12 * 3
    assert macs_from_counts(costs, [2, 3]) == hand
    assert macs_from_counts(costs, [4, 6]) == count_macs(model, x) == 225 * 4 + 225 * 24 + 24 * 3
    pruned = remove_channels(model, groups, {"0": torch.tensor([0, 3]), "3": torch.tensor([1, 2, 5])})
    assert count_macs(pruned, x) == hand


def test_linear_after_flatten_keeps_channel_major_columns():
    model = _tiny_stack().eval()
    x = torch.rand(3, 1, 5, 5)
    groups = find_channel_groups(model, x[:1])
    keep = {"3": torch.tensor([1, 4])}
    weight = model[7].weight.detach().clone()
    mask = torch.zeros(6)
    mask[keep["3"]] = 1
    model[3].weight.data.mul_(mask.view(-1, 1, 1, 1))
    model[3].bias.data.mul_(mask)
    with torch.no_grad():
        ref = model(x)
        out = remove_channels(model, groups, keep)(x)
    assert torch.equal(model[7].weight, weight[:, [4, 5, 6, 7, 16, 17, 18, 19]])
    assert torch.allclose(out, ref, atol=1e-6)


def test_fold_channel_scale_into_bn_and_into_biased_conv():
    model = settle(_tiny_stack(), torch.rand(4, 1, 5, 5))
    x = torch.rand(3, 1, 5, 5)
    groups = find_channel_groups(model, x[:1])
    s0, s1 = torch.tensor([2.0, -1.0, 0.5, 3.0]), torch.tensor([1.0, 0.0, 2.0, 0.5, 1.5, 4.0])
    with torch.no_grad():
        h = model[1](model[0](x)) * s0.view(1, -1, 1, 1)
        h = model[3](model[2](h)) * s1.view(1, -1, 1, 1)
        ref = model[4:](h)
        fold_channel_scale(model, groups[0], s0)
        fold_channel_scale(model, groups[1], s1)
        assert torch.allclose(model(x), ref, atol=1e-5)
    with pytest.raises(InputError, match="shape"):
        fold_channel_scale(model, groups[0], torch.ones(3))


def test_layers_that_cannot_be_sliced_keep_their_channels_and_are_named():
    x = torch.rand(1, 1, 8, 8)
    bad = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 4, 3))
    trace = trace_channels(bad, x)
    assert trace.groups == [] and "'1' (GroupNorm)" in trace.frozen["0"]
    assert "model output" in trace.frozen["3"]
    grouped = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    assert "grouped conv (groups=2)" in trace_channels(grouped, x).frozen["0"]
    resnet = create_model("resnet_s", in_channels=1, widths=(8, 8, 8), blocks_per_stage=1)
    resnet.stages[2][0].bn1 = nn.LayerNorm([8, 2, 2])
    trace = trace_channels(resnet, x)
    assert "'stages.2.0.bn1' (LayerNorm)" in trace.frozen["stages.2.0.conv1"]
    assert "stages.1.0.conv1" in {g.name for g in trace.groups}  # the rest still prunes

    class Custom(nn.Module):
        def forward(self, x):
            return x

    assert trace_channels(Custom(), x).groups == []

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            if x.shape[1] != 1:
                raise ValueError("one channel")
            return self.conv(x)

    with pytest.raises(InputError, match="torch.fx"):
        trace_channels(Untraceable(), x)
    with pytest.raises(InputError, match="batch dimension"):
        trace_channels(bad, torch.rand(8))


def test_bad_keep_sets_are_refused():
    model = _tiny_stack()
    groups = find_channel_groups(model, torch.rand(1, 1, 5, 5))
    for bad in (torch.tensor([], dtype=torch.long), torch.tensor([0, 4]), torch.tensor([1, 1])):
        with pytest.raises(InputError, match="keep-set of group '0'"):
            remove_channels(model, groups, {"0": bad})
    with pytest.raises(InputError, match="unknown channel group"):
        remove_channels(model, groups, {"nope": torch.tensor([0])})


def test_l1_importance_and_equal_macs_keep_sets():
    model = _tiny_stack()
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 3, 3) * torch.tensor([1, -1, 1]).view(1, 1, 1, 3))
    groups = find_channel_groups(model, torch.rand(1, 1, 5, 5))
    score = channel_importance(model, groups[0], "l1")
    assert torch.allclose(score, torch.tensor([0.0, 9.0, 18.0, 27.0]))
    assert keep_top({"a": torch.tensor([3.0, 1.0, 2.0, 0.0])}, 0.5)["a"].tolist() == [0, 2]
    costs = layer_costs(model, groups, torch.rand(1, 1, 5, 5))
    scores = {g.name: channel_importance(model, g, "l1") for g in groups}
    budget = 0.5 * macs_from_counts(costs, [4, 6])
    keep = uniform_keep_for_macs(scores, groups, costs, budget)
    kept = macs_from_counts(costs, [len(keep[g.name]) for g in groups])
    assert kept <= budget
    k = len(keep["0"])
    assert keep["0"].tolist() == list(range(4 - k, 4))  # the filters of largest L1 norm survive
    with pytest.raises(InputError, match="importance"):
        channel_importance(model, groups[0], "taylor")


def test_channel_importance_follows_the_model_device():
    """Issue 18: scores live on the model's device; a CPU generator draws on the CPU, then moves (so a
    seed gives the same random scores on every device)."""
    from tests.device_checks import META, assert_on, cpu_generator
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3))
    group = find_channel_groups(model, torch.rand(1, 1, 8, 8))[0]
    on_cpu = channel_importance(model, group, "random", cpu_generator(1))
    assert torch.equal(on_cpu, torch.rand(4, generator=cpu_generator(1)))
    model.to(META)
    assert_on(META, channel_importance(model, group, "random", cpu_generator(1)), channel_importance(model, group))


def test_round_keep_down_keeps_the_strongest_multiple_of_the_block():
    scores = {"a": torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 0.8]), "b": torch.tensor([1.0, 2.0, 3.0])}
    keep = {"a": torch.tensor([0, 2, 3, 4, 5]), "b": torch.tensor([1, 2])}
    rounded = round_keep_down(keep, scores, 4)
    # a: 5 kept -> 4, channel 4 (score 0.3, the weakest kept) goes; b: 2 < 4 stays as it is
    assert rounded["a"].tolist() == [0, 2, 3, 5] and rounded["b"].tolist() == [1, 2]
    assert round_keep_down(keep, scores, 1)["a"].tolist() == [0, 2, 3, 4, 5]
    with pytest.raises(InputError, match="block"):
        round_keep_down(keep, scores, 0)
    with pytest.raises(InputError, match="no scores"):
        round_keep_down({"c": torch.tensor([0])}, scores, 2)
