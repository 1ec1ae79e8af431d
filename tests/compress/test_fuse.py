"""Inference exports of pruned / decomposed nets (issue 15): BatchNorm folding against a hand-computed
fold and against the unfolded model (GDP's export, arXiv:2109.02220), low-rank pairs stored as their
rank-K product with the same outputs and rank (Force Regularization, arXiv:1703.09746), and refusals."""
import copy
from collections import OrderedDict

import pytest
import torch
from torch import fx, nn

from honed.compress.channel_surgery import find_channel_groups, remove_channels
from honed.compress.fuse import fold_batchnorm, is_lowrank_pair, keep_faster_form, merge_lowrank_pair
from honed.compress.lowrank import decompose_model
from honed.core.errors import InputError
from honed.models import create_model


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen))
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=gen))
            m.bias.data.copy_(torch.randn(c, generator=gen))
    return model


def test_fold_matches_hand_computed_conv_bn():
    conv = nn.Conv2d(1, 1, 1, bias=True)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(0.5)
        bn.bias.fill_(-1.0)
    folded = fold_batchnorm(nn.Sequential(conv, bn))
    layers = [m for m in folded.modules() if not list(m.children())]
    assert len(layers) == 1 and isinstance(layers[0], nn.Conv2d)
    # w' = 2 * 0.5 / sqrt(4) = 0.5 ; b' = (1 - 3) * 0.5 / 2 - 1 = -1.5
    assert layers[0].weight.item() == pytest.approx(0.5)
    assert layers[0].bias.item() == pytest.approx(-1.5)


def test_fold_keeps_a_pruned_resnets_outputs_and_leaves_the_source():
    torch.manual_seed(0)
    model = randomise_bn(create_model("resnet_s", in_channels=1, num_classes=10, widths=(8, 16), blocks_per_stage=1))
    x = torch.randn(4, 1, 8, 8)
    groups = find_channel_groups(model, x[:1])
    remove_channels(model, groups, {g.name: torch.arange(0, g.channels, 2) for g in groups})
    model.train()
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model)
    assert isinstance(folded, fx.GraphModule) and not folded.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(p.is_contiguous() for p in folded.parameters())
    assert model.training  # the source keeps its mode and weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.allclose(folded(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_fold_leaves_a_bn_read_twice_alone():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv's output has a second reader: folding would change it

    model = randomise_bn(TwoReaders()).eval()
    folded = fold_batchnorm(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 2, 4, 4)
    assert torch.allclose(folded(x), model(x))


def test_fold_refuses_an_untraceable_model_in_one_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(InputError, match="torch.fx"):
        fold_batchnorm(Branchy())
    with pytest.raises(InputError, match="nn.Module"):
        fold_batchnorm("not a model")


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 8, 3, padding=1), relu=nn.ReLU(),
                                     conv2=nn.Conv2d(8, 12, 3, stride=2, padding=1), flat=nn.Flatten(),
                                     fc=nn.Linear(12 * 16, 10)))


def test_merged_pair_has_the_pairs_outputs_and_rank():
    model = cnn()
    decomposed, plan = decompose_model(model, layers=["conv2", "fc"], ranks={"conv2": 3, "fc": 4},
                                       only_if_cheaper=False)
    x = torch.randn(2, 3, 8, 8)
    for name, rank in (("conv2", 3), ("fc", 4)):
        pair = decomposed.get_submodule(name)
        assert is_lowrank_pair(pair)
        merged = merge_lowrank_pair(pair)
        assert merged.weight.shape == model.get_submodule(name).weight.shape
        assert torch.linalg.matrix_rank(merged.weight.detach().reshape(merged.weight.shape[0], -1)) == rank
    with torch.no_grad():
        h = decomposed.relu(decomposed.conv1(x))
        assert torch.allclose(merge_lowrank_pair(decomposed.conv2)(h), decomposed.conv2(h), atol=1e-5)
        flat = torch.randn(2, 12 * 16)
        assert torch.allclose(merge_lowrank_pair(decomposed.fc)(flat), decomposed.fc(flat), atol=1e-5)


def test_merge_refuses_a_module_that_is_not_a_pair():
    assert not is_lowrank_pair(nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3)))
    with pytest.raises(InputError, match="low-rank pair"):
        merge_lowrank_pair(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


def test_keep_faster_form_keeps_outputs_and_reports_every_pair():
    model = cnn()
    decomposed, _ = decompose_model(model, layers=["conv2", "fc"], ranks={"conv2": 3, "fc": 4}, only_if_cheaper=False)
    x = torch.randn(4, 3, 8, 8)
    fast, forms = keep_faster_form(decomposed, x, rounds=2, repeats=1)
    assert [f.name for f in forms] == ["conv2", "fc"] and [f.rank for f in forms] == [3, 4]
    for form in forms:
        kept_pair = is_lowrank_pair(fast.get_submodule(form.name))
        assert kept_pair == (form.form == "factored") and (form.pair_over_product > 1) == (form.form == "product")
    assert all(is_lowrank_pair(decomposed.get_submodule(f.name)) for f in forms)  # a copy unless inplace
    with torch.no_grad():
        assert torch.allclose(fast(x), decomposed(x), atol=1e-5)
    with pytest.raises(InputError, match="clock"):
        keep_faster_form(decomposed, x, rounds=1, repeats=1, clock="sundial")
