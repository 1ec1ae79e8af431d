"""Conv-M (Compact DNN, arXiv:1703.04071): the card's honest unit tests for the module and the nets."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.vision.convm import (NET_NAMES, ConvM, FireModule, count_parameters, create_compact_net)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 11), w=st.integers(1, 11), c_in=st.integers(1, 5), widths=st.tuples(
    st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)), reduction=st.integers(0, 3))
def test_convm_output_channels_are_the_branch_sum_and_size_is_preserved(h, w, c_in, widths, reduction):
    block = ConvM(c_in, *widths, reduction=reduction)
    out = block(torch.rand(2, c_in, h, w))
    assert out.shape == (2, sum(widths), h, w)
    assert block.out_channels == sum(widths)


def impulse_support(branch: nn.Module, size: int = 11) -> torch.Tensor:
    """Nonzero pattern of a branch's response to a centred impulse, all conv weights set to 1 (so ReLU
    passes everything) and BN in eval mode with its identity initial statistics."""
    for m in branch.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.ones_(m.weight)
    branch.eval()
    x = torch.zeros(1, 1, size, size)
    x[0, 0, size // 2, size // 2] = 1.0
    with torch.no_grad():
        return branch(x).sum(1)[0] != 0


def offsets(support: torch.Tensor) -> set[tuple[int, int]]:
    c = support.shape[0] // 2
    return {(int(i) - c, int(j) - c) for i, j in torch.nonzero(support)}


@pytest.mark.parametrize("reduction", [0, 2])
def test_impulse_responses_have_the_card_support(reduction):
    block = ConvM(1, 2, 2, 2, reduction=reduction)
    three = {(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)}
    assert offsets(impulse_support(block.regular)) == three
    assert offsets(impulse_support(block.deconv)) == three
    dilated = offsets(impulse_support(block.dilated))  # 3x3 taps at stride 2: a 5x5 support
    assert dilated == {(2 * i, 2 * j) for i, j in three}
    assert max(abs(i) for i, _ in dilated) == 2


def test_parameter_count_helper_matches_a_hand_count():
    block = ConvM(2, 3, 4, 5, reduction=0)
    # weights 2*3*9, 2*4*9, 2*5*9 (transposed conv: (in, out, 3, 3)); BN affine 2 * (3 + 4 + 5)
    assert count_parameters(block) == 54 + 72 + 90 + 24
    fire = FireModule(4, 2, 3, 5)  # 4*2 + 2*3 + 2*5*9 weights + BN 2*(2 + 3 + 5)
    assert count_parameters(fire) == 8 + 6 + 90 + 20
    net = create_compact_net("convm")
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())


def test_three_nets_have_matched_parameter_counts_in_the_card_range():
    counts = {name: count_parameters(create_compact_net(name)) for name in NET_NAMES}
    assert all(60_000 <= c <= 100_000 for c in counts.values()), counts
    assert max(counts.values()) / min(counts.values()) < 1.1, counts


@pytest.mark.parametrize("name", NET_NAMES)
def test_nets_give_logits_and_features_for_16px_rgb(name):
    torch.manual_seed(0)
    net = create_compact_net(name, in_channels=3, num_classes=7)
    x = torch.rand(5, 3, 16, 16)
    feats = net.features(x)
    assert feats.shape == (5, net.feature_dim)
    torch.testing.assert_close(net(x), net.classifier(feats))
    assert net(x).shape == (5, 7)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError):
        create_compact_net("resnet")
    with pytest.raises(InputError):
        ConvM(3, 0, 2, 2)
    with pytest.raises(InputError):
        ConvM(3, 2, 2, 2, reduction=-1)
    net = create_compact_net("convm")
    with pytest.raises(InputError):
        net(torch.rand(2, 1, 16, 16))
    with pytest.raises(InputError):
        net(torch.rand(3, 16, 16))
    with pytest.raises(InputError):
        net(torch.full((1, 3, 16, 16), float("nan")))
