"""Feng et al. (AAAI 2020) on randomized smoothing (arXiv:1902.02918): the adaptive regulariser on
hand-made probability vectors, its gradient, the noisy-copy callback in honed's loop, and the tight
certificate's invariants against Cohen's bound."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, norm
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import TrainState, train
from honed.robust.certify import (ABSTAIN, Smooth, SmoothingRegularizer, certify_tight, clopper_pearson_lower,
                                  cohen_certificate, goodman_intervals, regularized_smoothing_loss,
                                  runner_up_probability, smoothed_probabilities, smoothing_regularizer,
                                  tight_certificate)

# two inputs, two noisy copies each, three classes; softmax(log p) = p for a probability vector p
COPY_PROBS = torch.tensor([[[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]],    # G = [0.60, 0.15, 0.25]
                           [[0.2, 0.6, 0.2], [0.4, 0.4, 0.2]]])   # G = [0.30, 0.50, 0.20]
LABELS = torch.tensor([0, 0])  # first: g right, runner-up is class 2; second: g wrong, top is class 1


def test_runner_up_is_selected_when_right_and_the_wrong_top_class_otherwise():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    got = runner_up_probability(probs, torch.tensor([0, 0, 2]))
    assert got.tolist() == pytest.approx([0.3, 0.5, 0.1])


def test_regulariser_and_loss_equal_the_hand_computation():
    logits = COPY_PROBS.log()
    assert smoothed_probabilities(logits).flatten().tolist() == pytest.approx([0.6, 0.15, 0.25, 0.3, 0.5, 0.2])
    log_reg = smoothing_regularizer(logits, LABELS)
    assert log_reg.tolist() == pytest.approx([math.log(0.25 + 1e-10), math.log(0.5 + 1e-10)])
    assert smoothing_regularizer(logits, LABELS, phi="identity").tolist() == pytest.approx([0.25, 0.5])
    loss, ce, reg = regularized_smoothing_loss(logits, LABELS, lam=0.5)
    hand_ce = -(math.log(0.7) + math.log(0.5) + math.log(0.2) + math.log(0.4)) / 4
    hand_reg = (math.log(0.25) + math.log(0.5)) / 2
    assert float(ce) == pytest.approx(hand_ce) and float(reg) == pytest.approx(hand_reg)
    assert float(loss) == pytest.approx(hand_ce + 0.5 * hand_reg)
    assert float(regularized_smoothing_loss(logits, LABELS, lam=0.0)[0]) == pytest.approx(hand_ce)


def test_gradient_flows_through_the_smoothed_classifier_to_every_copy():
    logits = COPY_PROBS.log().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: smoothing_regularizer(z, LABELS), (logits,))
    smoothing_regularizer(logits, LABELS).sum().backward()
    assert (logits.grad.abs().sum(-1) > 0).all()  # every copy of every input gets a gradient
    # d R / d G_c = 1 / G_c on the selected class only: pushing that class down lowers the loss
    g = smoothed_probabilities(COPY_PROBS.log().double()).requires_grad_()
    torch.log(runner_up_probability(g, LABELS) + 1e-10).sum().backward()
    assert g.grad.flatten().tolist() == pytest.approx([0, 0, 1 / 0.25, 0, 1 / 0.5, 0])


def test_log_of_zero_runner_up_is_finite():
    logits = torch.tensor([[[50.0, -50.0, -50.0]]], requires_grad=True)
    reg = smoothing_regularizer(logits, torch.tensor([0]))
    reg.sum().backward()
    assert torch.isfinite(reg).all() and torch.isfinite(logits.grad).all()


def test_noisy_copies_are_adjacent_per_input_with_the_requested_sigma():
    reg = SmoothingRegularizer(sigma=0.5, copies=4, generator=torch.Generator().manual_seed(0))
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    many = reg.noisy_copies(x.repeat(500, 1))
    assert many.shape == (6000, 2)
    noise = many - x.repeat(500, 1).repeat_interleave(4, 0)
    assert noise.std().item() == pytest.approx(0.5, rel=0.03)
    tiny = SmoothingRegularizer(sigma=1e-6, copies=3).noisy_copies(x)
    assert torch.allclose(tiny, x.repeat_interleave(3, 0), atol=1e-4)


def test_callback_in_the_loop_feeds_k_copies_and_defers_the_regulariser():
    sizes = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            sizes.append(len(x))
            return self.fc(x)

    torch.manual_seed(0)
    model, x, y = Spy(), torch.rand(10, 4), torch.randint(0, 3, (10,))
    reg = SmoothingRegularizer(sigma=0.25, copies=8, lam=0.3, start_epoch=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = train(model, [(x, y)], opt, epochs=2, loss_fn=reg, callbacks=[reg], progress=False)
    assert sizes == [80, 80] and len(history["train_loss"]) == 2
    assert reg.active  # on in epoch 1
    reg.on_step_start(TrainState(model, opt, epoch=0))
    logits = model(reg.noisy_copies(x))
    ce = F.cross_entropy(logits, y.repeat_interleave(8))
    assert reg(logits, y).item() == pytest.approx(ce.item(), rel=1e-6)  # deferred: CE only
    reg.on_step_start(TrainState(model, opt, epoch=1))
    assert reg(logits, y).item() == pytest.approx(ce.item() + 0.3 * reg.last_reg.item(), rel=1e-6)


def test_regulariser_bad_input_is_one_input_error():
    with pytest.raises(InputError, match="phi"):
        smoothing_regularizer(COPY_PROBS.log(), LABELS, phi="square")
    with pytest.raises(InputError, match="copies"):
        smoothing_regularizer(COPY_PROBS[0].log(), LABELS)
    with pytest.raises(InputError, match="labels"):
        runner_up_probability(COPY_PROBS[:, 0], torch.tensor([0, 3]))
    for kwargs in ({"sigma": 0.0}, {"sigma": 0.25, "lam": -1.0}, {"sigma": 0.25, "copies": 0}):
        with pytest.raises(InputError):
            SmoothingRegularizer(**kwargs)
    with pytest.raises(InputError, match="N \\* copies"):
        SmoothingRegularizer(0.25, copies=2)(torch.zeros(5, 3), torch.zeros(2, dtype=torch.long))


def test_tight_certificate_from_hand_counts():
    alpha, sigma, counts = 0.001, 0.5, np.array([800, 100, 100])
    p_a = beta.ppf(alpha / 2, 800, 201)
    p_b = beta.ppf(1 - alpha / 4, 101, 900)  # Bonferroni over K - 1 = 2 runner-ups
    label, radius = tight_certificate(0, counts, alpha, sigma)
    assert label == 0 and radius == pytest.approx(sigma / 2 * (norm.ppf(p_a) - norm.ppf(p_b)), rel=1e-9)
    # the runner-up mass is split, so the tight radius beats Cohen's even at the full alpha
    assert radius > cohen_certificate(0, 800, 1000, alpha, sigma)[1]
    assert tight_certificate(0, np.array([40, 35, 25]), alpha, sigma) == (ABSTAIN, 0.0)


def test_tight_certificate_equals_cohen_at_half_alpha_when_the_complement_is_tighter():
    # K = 2 and all draws on c_A: the runner-up bound is 1 - (alpha/2)^(1/n) = 1 - p_A_lower exactly
    label, radius = tight_certificate(1, np.array([0, 500]), 0.01, 0.25)
    assert (label, radius) == cohen_certificate(1, 500, 500, 0.005, 0.25)


@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.integers(0, 400), min_size=2, max_size=10).filter(lambda c: sum(c) > 0),
       alpha=st.sampled_from([1e-4, 1e-3, 0.05]), sigma=st.sampled_from([0.12, 0.5, 1.0]))
def test_tight_is_never_below_cohen_at_half_alpha_and_abstains_iff_no_gap(counts, alpha, sigma):
    counts = np.array(counts)
    top, n = int(np.argmax(counts)), int(counts.sum())
    label, radius = tight_certificate(top, counts, alpha, sigma)
    half_label, half_radius = cohen_certificate(top, int(counts[top]), n, alpha / 2, sigma)
    assert radius >= half_radius - 1e-12
    if half_label != ABSTAIN:
        assert label == top
    p_a = clopper_pearson_lower(int(counts[top]), n, alpha / 2)
    others = np.delete(counts, top)
    p_b = min(max(beta.ppf(1 - alpha / (2 * len(others)), k + 1, n - k) if k < n else 1.0 for k in others), 1 - p_a)
    assert (label == ABSTAIN) == (p_a <= p_b)


def test_goodman_intervals_hand_formula_and_pluggable_intervals():
    counts, alpha = np.array([60, 30, 10]), 0.05
    a = norm.ppf(1 - alpha / 6) ** 2  # chi2.ppf(1 - alpha / K, 1) for K = 3, via the normal quantile
    lower, upper = goodman_intervals(counts, alpha)
    half = math.sqrt(a * (a + 4 * 60 * 40 / 100))
    assert lower[0] == pytest.approx((a + 120 - half) / (2 * (100 + a)), rel=1e-6)
    assert upper[0] == pytest.approx((a + 120 + half) / (2 * (100 + a)), rel=1e-6)
    assert (lower <= counts / 100).all() and (counts / 100 <= upper).all()
    label, radius = tight_certificate(0, counts, alpha, 1.0, interval="goodman")
    assert label == 0 and radius == pytest.approx(0.5 * (norm.ppf(lower[0]) - norm.ppf(upper[1])))
    assert tight_certificate(0, counts, alpha, 1.0, interval=lambda c, t, a: (0.7, 0.2)) == (
        0, pytest.approx(0.5 * (norm.ppf(0.7) - norm.ppf(0.2))))
    with pytest.raises(InputError, match="interval"):
        tight_certificate(0, counts, alpha, 1.0, interval="wilson")
    with pytest.raises(InputError, match="counts"):
        tight_certificate(0, np.array([0.5, 0.5]), alpha, 1.0)


def test_certify_tight_on_a_linear_classifier_stays_below_the_closed_form():
    w, margin, sigma = torch.tensor([0.6, -0.8]), 0.2, 0.25
    x = torch.tensor([0.5, 0.5])
    b = margin * float(w.norm()) - float(w @ x)
    base = nn.Linear(2, 2)
    with torch.no_grad():
        base.weight.copy_(torch.stack([torch.zeros(2), w]))
        base.bias.copy_(torch.tensor([0.0, b]))
    smooth = Smooth(base, 2, sigma, generator=torch.Generator().manual_seed(3))
    label, radius = certify_tight(smooth, x, 100, 20_000, 0.001, batch_size=5000)
    assert label == 1 and 0.8 * margin < radius <= margin
    with pytest.raises(InputError, match="n0"):
        certify_tight(smooth, x, 200, 100, 0.001)


def test_noisy_copies_follow_the_batch_device_with_a_cpu_generator():
    """Issue 18: copies and noise live on the batch's device (default) or on ``device``; the noise is
    drawn on the generator's device and moved."""
    from tests.device_checks import META, assert_on, cpu_generator
    assert_on(META, SmoothingRegularizer(0.5, copies=2, generator=cpu_generator()).noisy_copies(
        torch.rand(2, 3, device=META)))
    assert_on(META, SmoothingRegularizer(0.5, copies=2, device=META).noisy_copies(torch.rand(2, 3)))
    x = torch.rand(2, 3)
    copies = SmoothingRegularizer(0.5, copies=2, generator=cpu_generator(1)).noisy_copies(x)
    assert torch.allclose(copies, x.repeat_interleave(2, 0) + 0.5 * torch.randn(4, 3, generator=cpu_generator(1)))
