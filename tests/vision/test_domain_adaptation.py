"""Compact DNN DA losses (arXiv:1703.04071): GRL, MK-MMD, entropy, the unified loss, the A-distance proxy,
the target-domain generator and the guard on target labels."""
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.experiments.e20_convm_da import ConvMDAConfig, adapt
from honed.data.digit_domains import (GuardedSplit, LabelAccessError, make_digit_domains,
                                        render_target_domain)
from honed.vision.domain_adaptation import (MMD_MULTIPLIERS, DomainClassifier, GradientReversal, UnifiedDALoss,
                                            adversarial_domain_loss, annealed_learning_rate,
                                            domain_classifier_accuracy, grl_coefficient, multi_kernel_mmd,
                                            prediction_entropy)


@settings(max_examples=15, deadline=None)
@given(coefficient=st.floats(0.0, 5.0), seed=st.integers(0, 99))
def test_gradient_reversal_is_identity_forward_and_minus_coefficient_backward(coefficient, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    y = GradientReversal(coefficient)(x)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.equal(x.grad, -coefficient * upstream)


def test_schedules_follow_the_dann_formulas():
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert grl_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert annealed_learning_rate(0.01, 0.0) == 0.01
    assert annealed_learning_rate(0.01, 1.0) == pytest.approx(0.01 / 11 ** 0.75)
    with pytest.raises(InputError):
        grl_coefficient(1.5)
    with pytest.raises(InputError):
        GradientReversal(-1.0)


def test_mmd_hand_value_on_two_points():
    # pooled pairwise distance 1 -> sigma = 1; K_ss = K_tt = 5, K_st = sum_m exp(-1 / (2 m^2))
    expected = 10 - 2 * sum(math.exp(-1 / (2 * m * m)) for m in MMD_MULTIPLIERS)
    value = multi_kernel_mmd(torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_mmd_is_zero_for_identical_batches_small_for_same_distribution_and_grows_with_shift():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen)
    assert abs(float(multi_kernel_mmd(a, a))) < 1e-5
    values = [float(multi_kernel_mmd(a, b + shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(v >= -1e-6 for v in values)
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_mmd_gradient_pulls_the_domains_together():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(32, 4, generator=gen)
    b = (torch.randn(32, 4, generator=gen) + 1.0).requires_grad_(True)
    multi_kernel_mmd(a, b).backward()
    assert float(b.grad.mean(0).sum()) > 0  # descending moves target toward the source mean (lower)


def test_entropy_of_one_hot_is_zero_uniform_is_log_c():
    assert float(prediction_entropy(torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, 200.0]]))) == pytest.approx(0, abs=1e-6)
    assert float(prediction_entropy(torch.zeros(4, 7))) == pytest.approx(math.log(7), rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 8), c=st.integers(2, 12), scale=st.floats(0.0, 20.0), seed=st.integers(0, 99))
def test_entropy_lies_in_zero_log_k(n, c, scale, seed):
    logits = scale * torch.randn(n, c, generator=torch.Generator().manual_seed(seed))
    h = float(prediction_entropy(logits))
    assert -1e-6 <= h <= math.log(c) + 1e-5


def test_adversarial_loss_reverses_only_the_feature_gradient():
    torch.manual_seed(0)
    disc = DomainClassifier(5, hidden=6)
    fs, ft = torch.randn(4, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    adversarial_domain_loss(disc, fs, ft, 0.7).backward()
    reversed_grad, disc_grad = fs.grad.clone(), disc.net[0].weight.grad.clone()
    fs.grad, ft.grad = None, None
    disc.zero_grad()
    logit_s, logit_t = disc(fs), disc(ft)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    (bce(logit_s, torch.ones(4)) + bce(logit_t, torch.zeros(3))).backward()
    torch.testing.assert_close(reversed_grad, -0.7 * fs.grad)
    torch.testing.assert_close(disc_grad, disc.net[0].weight.grad)


def loss_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen) + 1,
            torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen), torch.randint(0, 3, (6,), generator=gen))


def test_unified_loss_combines_the_terms_with_the_card_weights_and_warmup():
    torch.manual_seed(0)
    fs, ft, ls, lt, ys = loss_inputs()
    unified = UnifiedDALoss(5, adversarial=1.0, mmd=1.0, entropy=0.1, entropy_warmup=0.2)
    early, late = unified(fs, ft, ls, lt, ys, 0.1), unified(fs, ft, ls, lt, ys, 0.5)
    assert float(early["ent"]) == 0.0 and float(late["ent"]) == pytest.approx(float(prediction_entropy(lt)))
    torch.testing.assert_close(late["mmd"], multi_kernel_mmd(fs, ft))
    torch.testing.assert_close(late["total"], late["cls"] + late["adv"] + late["mmd"] + 0.1 * late["ent"])
    source_only = UnifiedDALoss(5, adversarial=0.0, mmd=0.0, entropy=0.0)
    out = source_only(fs, ft, ls, lt, ys, 0.9)
    assert source_only.discriminator is None and len(list(source_only.parameters())) == 0
    torch.testing.assert_close(out["total"], torch.nn.functional.cross_entropy(ls, ys))
    with pytest.raises(InputError):
        UnifiedDALoss(5, mmd=-1.0)
    with pytest.raises(InputError):
        unified(fs, ft, ls, lt, ys, 1.2)
    with pytest.raises(InputError):
        multi_kernel_mmd(fs, torch.randn(6, 4))


def test_domain_probe_reads_chance_on_one_domain_and_one_on_separated_domains():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 6, generator=gen), torch.randn(200, 6, generator=gen)
    same = domain_classifier_accuracy(a, b)
    apart = domain_classifier_accuracy(a, b + 3.0)
    assert abs(same["accuracy"] - 0.5) < 0.12
    assert apart["accuracy"] > 0.98 and apart["a_distance"] == pytest.approx(2 * (2 * apart["accuracy"] - 1))
    with pytest.raises(InputError):
        domain_classifier_accuracy(a[:3], b)


def test_target_rendering_is_seeded_coloured_and_in_range():
    x = torch.rand(40, 1, 16, 16)
    t1, t2 = render_target_domain(x, seed=3), render_target_domain(x, seed=3)
    assert t1.shape == (40, 3, 16, 16) and torch.equal(t1, t2)
    assert 0 <= float(t1.min()) and float(t1.max()) <= 1
    assert not torch.equal(t1, render_target_domain(x, seed=4))
    assert float((t1[:, 0] - t1[:, 1]).abs().mean()) > 0.05  # really coloured, not grey
    clean = render_target_domain(x, seed=3, max_rotation=0.0, invert_fraction=0.0, noise_std=0.0)
    assert float((t1 - clean).std()) > 0.05  # noise / inversion / rotation change the images
    with pytest.raises(InputError):
        render_target_domain(torch.rand(2, 3, 16, 16))
    with pytest.raises(InputError):
        render_target_domain(x, invert_fraction=1.5)


def test_target_labels_are_guarded_and_never_read_by_the_training_loop():
    split = GuardedSplit(torch.rand(4, 3, 16, 16), torch.arange(4))
    with pytest.raises(LabelAccessError):
        _ = split.y
    with split.labels_unlocked():
        assert torch.equal(split.y, torch.arange(4))
    with pytest.raises(LabelAccessError):
        _ = split.y
    domains = make_digit_domains()
    assert len(set(domains.source_train.x.flatten(1).sum(1).tolist()) &
               set(domains.target_adapt.x.flatten(1).sum(1).tolist())) == 0
    cfg = replace(ConvMDAConfig(), iterations=3, batch_size=8)
    model, curves = adapt(cfg, domains, "convm", "unified", 0, torch.device("cpu"))  # raises if it reads y
    assert domains.target_adapt.label_reads == 0 and domains.target_test.label_reads == 0
    assert len(curves["cls"]) == 3
