"""BN-free binary networks ("BNN - BN = ?", arXiv:2104.08215): oracles on hand tensors and the card's
invariants for sign/STE, scaled weight standardisation, AGC, alpha/beta scaling and the models."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.compress.binary import (AdaptiveGradClip, BinaryConv2d, BinaryLinear, RSign, ScaledStdConv2d,
                                   adaptive_clip_grad_, binarize_weight, binary_activation,
                                   conv_weight_decay_groups, parameters_except, residual_betas,
                                   set_binary_weights, sign_pm1, standardize_weight, unitwise_norm)
from honed.compress.bnn_models import BinaryReActBlock, count_binary_macs, create_bnn
from honed.core.errors import ConfigError, InputError
from honed.core.loop import train


# ----------------------------------------------------------------------------- sign and STE

def test_binary_activation_takes_exactly_two_values_and_zero_maps_to_plus_one():
    x = torch.tensor([-3.0, -0.5, 0.0, 1e-8, 0.7, 2.0])
    out = binary_activation(x)
    assert out.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    big = binary_activation(torch.randn(4, 3, 5, 5))
    assert set(big.unique().tolist()) == {-1.0, 1.0}


def test_approxsign_gradient_is_2_minus_2abs_inside_and_zero_outside():
    x = torch.tensor([-1.5, -1.0, -0.75, -0.25, 0.0, 0.5, 0.999, 1.0, 3.0], requires_grad=True)
    binary_activation(x).backward(torch.full_like(x, 3.0))  # upstream gradient 3
    expected = [0.0, 0.0, 3 * 0.5, 3 * 1.5, 3 * 2.0, 3 * 1.0, 3 * 2 * 0.001, 0.0, 0.0]
    assert x.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_binarized_weights_take_two_values_per_output_channel_with_mean_abs_scale():
    w_hat = torch.tensor([[[[0.5, -0.1], [0.0, -0.4]]], [[[-2.0, 1.0], [3.0, -1.0]]]])  # (2, 1, 2, 2)
    b = binarize_weight(w_hat)
    a0, a1 = (0.5 + 0.1 + 0.0 + 0.4) / 4, (2 + 1 + 3 + 1) / 4
    assert b[0].flatten().tolist() == pytest.approx([a0, -a0, a0, -a0])  # sign(0) = +1
    assert b[1].flatten().tolist() == pytest.approx([-a1, a1, a1, -a1])
    for o in range(2):
        assert b[o].unique().numel() == 2


def test_weight_ste_is_identity_inside_clip_range_and_zero_outside_and_scale_is_detached():
    w_hat = torch.tensor([[0.5, -2.0, 1.5, -0.3, 1.0]], requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    binarize_weight(w_hat).backward(upstream)
    # no gradient through a_o (detached) and none through sign: only clamp's derivative
    assert w_hat.grad.tolist() == [[1.0, 0.0, 0.0, 4.0, 5.0]]


def test_binary_conv_weights_are_two_valued_after_gain_and_real_in_step_one():
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, binary_weights=True)
    with torch.no_grad():
        conv.gain.copy_(torch.tensor([1.0, 2.0, 0.5, 3.0]).view(4, 1, 1, 1))
    w = conv.effective_weight()
    w_hat = standardize_weight(conv.weight)
    for o in range(4):
        a = (w_hat[o].abs().mean() * conv.gain[o, 0, 0, 0]).detach()
        assert sorted(w[o].unique().tolist()) == pytest.approx([-float(a), float(a)])
    set_binary_weights(conv, False)
    assert conv.effective_weight()[0].unique().numel() == 27  # step 1: real weights


def test_binary_linear_weights_two_valued_per_row():
    layer = BinaryLinear(6, 3)
    w = layer.effective_weight()
    assert all(w[o].unique().numel() == 2 for o in range(3))
    assert layer(torch.randn(5, 6)).shape == (5, 3)


# ----------------------------------------------------------------------------- scaled WS

def test_scaled_weight_standardisation_hand_computation():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 6.0]]).view(2, 1, 2, 2)
    out = standardize_weight(w, gamma=2.0, eps=1e-5).view(2, 4)
    # row 0: mean 2.5, biased std sqrt(1.25); row 1: mean 3, biased std sqrt(3); fan_in = 4
    std0, std1 = math.sqrt(1.25), math.sqrt(3.0)
    exp0 = [2.0 * (v - 2.5) / (std0 + 1e-5) / 2.0 for v in (1, 2, 3, 4)]
    exp1 = [2.0 * (v - 3.0) / (std1 + 1e-5) / 2.0 for v in (2, 2, 2, 6)]
    assert out[0].tolist() == pytest.approx(exp0, rel=1e-6)
    assert out[1].tolist() == pytest.approx(exp1, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), out_ch=st.integers(1, 6), in_ch=st.integers(1, 5),
       k=st.sampled_from([1, 3]), scale=st.floats(1e-3, 1e3), gamma=st.floats(0.5, 2.0))
def test_standardised_rows_have_zero_mean_and_unit_std_times_gamma_over_sqrt_fan_in(seed, out_ch, in_ch, k,
                                                                                    scale, gamma):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_ch, in_ch, k, k, dtype=torch.float64, generator=gen) * scale + 0.3 * scale
    if in_ch * k * k == 1:
        return  # a single weight per row has zero std; nothing to standardise
    out = standardize_weight(w, gamma=gamma) * math.sqrt(in_ch * k * k) / gamma
    flat = out.view(out_ch, -1)
    row_std = w.view(out_ch, -1).std(1, unbiased=False)
    assert flat.mean(1).abs().max() < 1e-9
    # exactly std / (std + eps): unit up to the eps of the formula
    assert torch.allclose(flat.std(1, unbiased=False), row_std / (row_std + 1e-5), rtol=1e-9)


def test_scaled_std_conv_equals_conv_with_gain_times_standardised_weight():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(2, 3, 3)
    with torch.no_grad():
        conv.gain.copy_(torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1))
    x = torch.randn(2, 2, 5, 5)
    ref = F.conv2d(x, conv.gain * standardize_weight(conv.weight), padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-6)


def test_ws_branch_output_has_unit_variance_on_binary_inputs_and_binary_weights_never_exceed_it():
    """Signal propagation premise: a standardised conv on +-1 inputs outputs variance gamma^2 = 1, so each
    residual addition of alpha * branch adds alpha^2; binarising can only shrink the row norm."""
    torch.manual_seed(0)
    conv = BinaryConv2d(16, 8, 3, padding=0, binary_weights=False, weight_init="kaiming")
    x = sign_pm1(torch.randn(256, 16, 6, 6))
    with torch.no_grad():
        assert 0.85 < float(conv(x).var()) < 1.15
    real_norms = unitwise_norm(conv.effective_weight()).flatten()
    set_binary_weights(conv, True)
    binary_norms = unitwise_norm(conv.effective_weight()).flatten()
    assert torch.all(binary_norms <= real_norms + 1e-6)


# ----------------------------------------------------------------------------- AGC

def test_agc_clips_exactly_as_the_formula_on_a_hand_example():
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
    w.grad = torch.tensor([[0.3, 0.4], [0.001, 0.0], [0.01, 0.0]])
    b = nn.Parameter(torch.tensor([3.0, 4.0]))
    b.grad = torch.tensor([0.6, 0.8])
    adaptive_clip_grad_([w, b], clip_factor=0.02, eps=1e-3)
    # row 0: ||G||=0.5 > 0.02*5=0.1 -> scaled to norm 0.1; row 1: ||W||=0 -> eps: max 2e-5;
    # row 2: 0.01 < 0.02*1 -> untouched; bias (1-D) is one unit: ||G||=1 > 0.1 -> norm 0.1
    assert w.grad[0].tolist() == pytest.approx([0.06, 0.08])
    assert w.grad[1].tolist() == pytest.approx([2e-5, 0.0])
    assert w.grad[2].tolist() == pytest.approx([0.01, 0.0])
    assert b.grad.tolist() == pytest.approx([0.06, 0.08])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), lam=st.floats(0.001, 0.5), gscale=st.floats(1e-4, 1e2))
def test_agc_output_satisfies_unitwise_ratio_bound_and_keeps_small_gradients(seed, lam, gscale):
    gen = torch.Generator().manual_seed(seed)
    w = nn.Parameter(torch.randn(5, 3, 2, 2, generator=gen))
    w.grad = torch.randn(5, 3, 2, 2, generator=gen) * gscale
    before = w.grad.clone()
    adaptive_clip_grad_([w], clip_factor=lam)
    limit = lam * unitwise_norm(w.detach()).clamp_min(1e-3)
    assert torch.all(unitwise_norm(w.grad) <= limit * (1 + 1e-5))
    small = (unitwise_norm(before) <= limit).flatten()
    assert torch.equal(w.grad[small], before[small])


def test_agc_callback_skips_the_classifier_in_the_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    seen = {}

    class Spy(AdaptiveGradClip):
        def before_step(self, state):
            seen["head"] = model[3].weight.grad.clone()
            super().before_step(state)
            seen["head_after"] = model[3].weight.grad.clone()
            seen["body_after"] = model[1].weight.grad.clone()

    agc = Spy(parameters_except(model, model[3]), clip_factor=1e-4)
    data = [(torch.randn(16, 4) * 10, torch.randint(0, 3, (16,)))]
    train(model, data, torch.optim.SGD(model.parameters(), lr=0.0), 1, callbacks=[agc], progress=False)
    assert torch.equal(seen["head"], seen["head_after"])
    assert torch.all(unitwise_norm(seen["body_after"]) <= 1e-4 * unitwise_norm(model[1].weight) * (1 + 1e-5))


# ----------------------------------------------------------------------------- residual scaling

def test_residual_betas_follow_one_over_sqrt_one_plus_k_alpha_squared_and_reset_at_transitions():
    a2 = 0.2 ** 2
    betas = residual_betas([False, False, True, False], alpha=0.2)
    expected_var = [(1, 1 + a2), (1 + 2 * a2, 1 + 3 * a2), (1 + 4 * a2, 1 + a2), (1 + 2 * a2, 1 + 3 * a2)]
    for (b1, b2), (v1, v2) in zip(betas, expected_var):
        assert b1 == pytest.approx(v1 ** -0.5) and b2 == pytest.approx(v2 ** -0.5)


def test_model_blocks_carry_the_betas_and_bn_model_uses_no_scaling():
    net = create_bnn("bnfree", widths=(8, 16, 16), strides=(1, 2, 1), stem_width=8, alpha=0.3)
    want = residual_betas([False, True, False], 0.3)
    assert [(blk.beta1, blk.beta2) for blk in net.blocks] == want
    assert all(blk.alpha == 0.3 for blk in net.blocks)
    bn = create_bnn("bn", widths=(8, 16, 16), strides=(1, 2, 1), stem_width=8)
    assert all((blk.alpha, blk.beta1, blk.beta2) == (1.0, 1.0, 1.0) for blk in bn.blocks)


def test_vanishing_alpha_leaves_only_the_skip_path():
    torch.manual_seed(0)
    block = BinaryReActBlock(4, 8, stride=1, norm="scaled", alpha=1e-9, betas=(0.5, 0.7))
    x = torch.randn(3, 4, 5, 5)
    skip_only = block.act1(x)
    expected = block.act2(torch.cat([skip_only, skip_only], 1))
    assert torch.allclose(block(x), expected, atol=1e-6)


# ----------------------------------------------------------------------------- models

def test_bnfree_model_has_no_batchnorm_and_bn_model_has_it():
    assert not any(isinstance(m, nn.BatchNorm2d) for m in create_bnn("bnfree").modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in create_bnn("bn").modules()) == 1 + 5 + 7


def test_bnfree_output_of_a_sample_is_independent_of_its_batch_in_train_mode_bn_is_not():
    torch.manual_seed(0)
    x = torch.rand(9, 1, 16, 16)
    for variant, independent in (("bnfree", True), ("bn", False)):
        net = create_bnn(variant, binary_weights=True, weight_init="kaiming").train()
        with torch.no_grad():
            a, b = net(x[:5])[0], net(torch.cat([x[:1], x[5:]]))[0]
        assert torch.equal(a, b) is independent, variant


def test_two_step_switch_and_gradients_reach_latent_weights():
    torch.manual_seed(0)
    net = create_bnn("bnfree", widths=(8, 16), strides=(1, 2), stem_width=8)
    assert set_binary_weights(net, True) == (1 + 1) + (1 + 2)  # 3x3 + pointwise convs (two when widening)
    loss = F.cross_entropy(net(torch.rand(4, 1, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [m.weight.grad for m in net.modules() if isinstance(m, BinaryConv2d)]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_weight_decay_groups_hold_only_conv_weights():
    net = create_bnn("bnfree", widths=(8,), strides=(1,), stem_width=8)
    decayed, others = conv_weight_decay_groups(net, 1e-5)
    conv_weights = {id(m.weight) for m in net.modules() if isinstance(m, (nn.Conv2d, BinaryConv2d))}
    assert {id(p) for p in decayed["params"]} == conv_weights and decayed["weight_decay"] == 1e-5
    assert others["weight_decay"] == 0.0 and len(others["params"]) + len(conv_weights) == len(list(net.parameters()))


def test_binary_macs_hand_count():
    net = nn.Sequential(RSign(2), BinaryConv2d(2, 3, 3, binary_weights=True))
    assert count_binary_macs(net, torch.rand(2, 2, 5, 5)) == 3 * 5 * 5 * 2 * 9
    set_binary_weights(net, False)
    assert count_binary_macs(net, torch.rand(2, 2, 5, 5)) == 0


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call", [
    lambda: standardize_weight(torch.ones(4)),
    lambda: standardize_weight(torch.ones(2, 3), gamma=0.0),
    lambda: binarize_weight(torch.ones(3)),
    lambda: binary_activation(torch.ones(3, dtype=torch.long)),
    lambda: BinaryConv2d(2, 3, 3)(torch.rand(1, 4, 5, 5)),
    lambda: BinaryConv2d(2, 3, 0),
    lambda: BinaryConv2d(2, 3, 3, weight_init="zeros"),
    lambda: BinaryLinear(3, 2)(torch.rand(2, 4)),
    lambda: residual_betas([True], alpha=0.0),
    lambda: residual_betas([True], alpha=float("nan")),
    lambda: adaptive_clip_grad_([], clip_factor=-1.0),
    lambda: AdaptiveGradClip([], clip_factor=0.0),
    lambda: conv_weight_decay_groups(nn.Linear(2, 2), -1.0),
    lambda: BinaryReActBlock(4, 12),
    lambda: create_bnn("xnor"),
    lambda: create_bnn("bnfree")(torch.rand(2, 3, 16, 16)),
    lambda: create_bnn("bnfree", input_std=0.0),
])
def test_bad_input_raises_one_line_input_error(call):
    with pytest.raises(InputError) as info:
        call()
    assert "\n" not in str(info.value)


def test_experiment_config_rejects_bad_values():
    from honed.core.config import override
    from honed.experiments.e06_bnfree_bnn import BNNFreeConfig

    with pytest.raises(ConfigError):
        override(BNNFreeConfig(), {"image_size": 8})
    with pytest.raises(ConfigError):
        override(BNNFreeConfig(), {"clip_factor": 0.0})


def test_random_shift_moves_content_without_changing_it():
    from honed.experiments.e06_bnfree_bnn import random_shift

    x = torch.zeros(3, 1, 6, 6)
    x[:, :, 2:4, 2:4] = torch.arange(1.0, 5.0).view(1, 1, 2, 2)
    out = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
    for i in range(3):  # the 2x2 patch is intact somewhere within one pixel of where it was
        assert out[i].sum() == x[i].sum() and sorted(out[i][out[i] != 0].tolist()) == [1.0, 2.0, 3.0, 4.0]
