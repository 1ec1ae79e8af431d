"""Randomized smoothing (arXiv:1902.02918): bounds against scipy's exact binomial, the linear-classifier
closed form of the certified radius, PREDICT's abstention, CERTIFY on noise, and bad inputs."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, binom, binomtest, norm
from torch import nn

from honed.core.errors import InputError
from honed.robust.certify import (ABSTAIN, Smooth, certified_radius, clopper_pearson_lower,
                                  clopper_pearson_upper, cohen_certificate, max_certifiable_radius)


class LinearBinary(nn.Module):
    """f(x) = 1 if w.x + b > 0 else 0, as logits [0, w.x + b]."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], 1)


class RowPattern(nn.Module):
    """Ignores x: row i of every batch gets ``logits[i % len(logits)]`` (deterministic votes)."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append(self.training)
        idx = torch.arange(len(x)) % len(self.logits)
        return self.logits[idx]


class PureNoise(nn.Module):
    """Uniformly random class, independent of x."""

    def forward(self, x):
        return torch.randn(len(x), 10)


def linear_case(margin: float = 0.3, d: int = 4):
    w = torch.tensor([0.6, -0.8, 0.0, 0.0][:d], dtype=torch.float64)
    x = torch.full((d,), 0.5, dtype=torch.float64)
    b = margin * float(w.norm()) - float(w @ x)  # puts x at distance `margin` from the boundary, class 1
    return LinearBinary(w, b), x


@pytest.mark.parametrize("k,n,alpha", [(1, 10, 0.05), (7, 10, 0.001), (500, 1000, 0.01), (999, 1000, 0.001),
                                       (3, 7, 0.2)])
def test_clopper_pearson_matches_beta_quantiles_and_the_exact_binomial_tail(k, n, alpha):
    lower, upper = clopper_pearson_lower(k, n, alpha), clopper_pearson_upper(k, n, alpha)
    assert lower == pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-12)
    assert upper == pytest.approx(beta.ppf(1 - alpha, k + 1, n - k), rel=1e-12)
    # definition: at the lower bound, seeing >= k successes has probability exactly alpha (and <= k at the upper)
    assert binom.sf(k - 1, n, lower) == pytest.approx(alpha, rel=1e-6)
    assert binom.cdf(k, n, upper) == pytest.approx(alpha, rel=1e-6)
    # an independent route: scipy's two-sided exact interval at level 1 - 2 alpha has the same ends
    ci = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert (lower, upper) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_clopper_pearson_edges_have_closed_forms():
    n, alpha = 100, 0.001
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    assert clopper_pearson_upper(n, n, alpha) == 1.0
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)
    assert clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-12)
    both = clopper_pearson_upper(np.array([0, 50, 100]), n, alpha)
    assert both.shape == (3,) and both[2] == 1.0 and both[0] == pytest.approx(1 - alpha ** (1 / n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0, 1), alpha=st.floats(1e-6, 0.5))
def test_clopper_pearson_brackets_the_frequency(n, frac, alpha):
    k = round(frac * n)
    assert clopper_pearson_lower(k, n, alpha) <= k / n <= clopper_pearson_upper(k, n, alpha)


def test_radius_helper_is_sigma_phi_inverse_and_equals_the_general_formula_at_the_complement():
    for p in (0.51, 0.7, 0.99, 0.9999):
        assert certified_radius(0.5, p) == pytest.approx(0.5 * norm.ppf(p), rel=1e-12)
        assert certified_radius(0.5, p, 1 - p) == pytest.approx(0.5 * norm.ppf(p), rel=1e-9)
    assert certified_radius(0.25, 0.8, 0.1) == pytest.approx(0.125 * (norm.ppf(0.8) - norm.ppf(0.1)))
    assert certified_radius(0.25, 0.5) == 0.0 and certified_radius(0.25, 0.4, 0.45) == 0.0


def test_cohen_certificate_from_hand_counts():
    label, radius = cohen_certificate(3, 100, 100, 0.001, 0.25)
    assert label == 3 and radius == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 100)))
    assert radius == pytest.approx(max_certifiable_radius(100, 0.001, 0.25))
    assert cohen_certificate(3, 55, 100, 0.001, 0.25) == (ABSTAIN, 0.0)  # p_A_lower < 1/2


@pytest.mark.parametrize("margin,sigma", [(0.3, 0.5), (0.1, 0.25)])
def test_linear_classifier_radius_approaches_the_closed_form_from_below(margin, sigma):
    model, x = linear_case(margin)
    gen = torch.Generator().manual_seed(0)
    smooth = Smooth(model, 2, sigma, generator=gen)
    p_true = norm.cdf(margin / sigma)  # Phi(|w.x + b| / (sigma ||w||))
    hits = int(smooth.sample_counts(x, 20_000, batch_size=4096)[1])
    assert clopper_pearson_lower(hits, 20_000, 0.001) <= p_true <= clopper_pearson_upper(hits, 20_000, 0.001)
    gaps = []
    for n in (1000, 20_000):
        label, radius = smooth.certify(x, 100, n, 0.001, batch_size=4096)
        assert label == 1 and 0 < radius <= margin
        gaps.append(margin - radius)
    assert gaps[1] < gaps[0] and gaps[1] < 0.15 * margin


def test_predict_abstains_on_an_exact_tie_and_answers_a_clear_majority():
    tie = Smooth(RowPattern([[1.0, 0.0], [0.0, 1.0]]), 2, 0.25)
    assert tie.predict(torch.full((3,), 0.5), n=1000, alpha=0.001) == ABSTAIN
    clear = Smooth(RowPattern([[0.0, 2.0, 1.0]]), 3, 0.25)
    assert clear.predict(torch.full((3,), 0.5), n=50, alpha=0.001) == 1
    # 30 vs 20 votes: two-sided binomial p-value 0.20 -> abstain at 0.05, but answers at alpha = 0.25
    close = Smooth(RowPattern([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2), 2, 0.25)
    assert binomtest(30, 50, 0.5).pvalue == pytest.approx(0.2026, abs=1e-3)
    assert close.predict(torch.zeros(2), 50, 0.05) == ABSTAIN and close.predict(torch.zeros(2), 50, 0.25) == 0


def test_counts_are_hard_votes_not_averaged_softmax():
    # 3 of 5 rows vote class 0 by a hair, 2 of 5 vote class 1 with certainty: mean softmax prefers 1
    base = RowPattern([[0.1, 0.0]] * 3 + [[0.0, 10.0]] * 2)
    counts = Smooth(base, 2, 0.25).sample_counts(torch.zeros(4), 1000, batch_size=1000)
    assert counts.tolist() == [600, 400]
    assert base.logits.softmax(1).mean(0).argmax() == 1


def test_certify_abstains_on_a_pure_noise_base_and_constant_base_gets_the_maximal_radius():
    torch.manual_seed(0)
    noise = Smooth(PureNoise(), 10, 0.25)
    assert [noise.certify(torch.rand(5), 50, 500, 0.001) for _ in range(3)] == [(ABSTAIN, 0.0)] * 3
    constant = Smooth(RowPattern([[0.0, 0.0, 3.0]]), 3, 0.5)
    label, radius = constant.certify(torch.rand(5), 10, 777, 0.01, batch_size=100)
    assert label == 2 and radius == pytest.approx(0.5 * norm.ppf(0.01 ** (1 / 777)))


def test_counts_sum_to_num_across_uneven_batches_and_mode_is_restored():
    base = RowPattern([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).train()
    counts = Smooth(base, 3, 0.25).sample_counts(torch.rand(2), 1003, batch_size=100)
    assert counts.sum() == 1003 and len(base.seen_training) == 11
    assert not any(base.seen_training) and base.training


def test_noise_has_the_requested_sigma():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(len(x), 2)

    x = torch.full((8,), 0.25)
    Smooth(Spy(), 2, 0.5, generator=torch.Generator().manual_seed(1)).sample_counts(x, 4000)
    noise = torch.cat(seen) - x
    assert noise.mean().abs() < 0.02 and noise.std().item() == pytest.approx(0.5, rel=0.03)


def bad_smooth(**kw):
    return Smooth(RowPattern([[0.0, 1.0]]), kw.pop("num_classes", 2), kw.pop("sigma", 0.25), **kw)


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_sigma_is_one_input_error(sigma):
    with pytest.raises(InputError, match="sigma"):
        bad_smooth(sigma=sigma)


def test_bad_arguments_are_one_input_error_each():
    smooth, x = bad_smooth(), torch.rand(4)
    with pytest.raises(InputError, match="n0"):
        smooth.certify(x, 200, 100, 0.001)
    for alpha in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(InputError, match="alpha"):
            smooth.certify(x, 10, 100, alpha)
        with pytest.raises(InputError, match="alpha"):
            smooth.predict(x, 100, alpha)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        smooth.certify(x + 2, 10, 100, 0.001)
    with pytest.raises(InputError, match="NaN"):
        smooth.predict(torch.full((4,), float("nan")), 10, 0.001)
    with pytest.raises(InputError, match="num_classes"):
        bad_smooth(num_classes=1)
    with pytest.raises(InputError, match="n must"):
        smooth.certify(x, 1, 0, 0.001)
    with pytest.raises(InputError, match="batch_size"):
        smooth.sample_counts(x, 10, batch_size=0)


def test_wrong_shapes_are_one_input_error():
    shaped = Smooth(nn.Linear(64, 10), 10, 0.25, input_shape=(64,))
    with pytest.raises(InputError, match=r"shape \(64,\)"):
        shaped.certify(torch.rand(5, 64), 10, 100, 0.001)
    assert shaped.certify(torch.rand(1, 64), 10, 100, 0.001)[0] in range(-1, 10)  # a batch of one is fine
    unshaped = Smooth(nn.Linear(64, 10), 10, 0.25)
    with pytest.raises(InputError, match="rejected"):
        unshaped.certify(torch.rand(63), 10, 100, 0.001)
    with pytest.raises(InputError, match=r"logits \(B, 3\)"):
        Smooth(nn.Linear(64, 10), 3, 0.25).predict(torch.rand(64), 10, 0.001)


@pytest.mark.parametrize("k, n, alpha", [(0, 10, 0.05), (3, 10, 0.05), (10, 10, 0.05), (97, 100, 0.001),
                                         (512, 1000, 0.01), (1, 1, 0.2)])
def test_clopper_pearson_equals_scipys_exact_binomtest_interval(k, n, alpha):
    # a one-sided bound at alpha is one end of the two-sided exact interval at confidence 1 - 2 alpha
    ci = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(ci.low, abs=1e-12)
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(ci.high, abs=1e-12)


def test_smooth_defaults_to_the_base_model_device():
    """Issue 18: noise and counts live where the base model lives unless ``device`` says otherwise."""
    from tests.device_checks import META
    assert Smooth(nn.Linear(3, 2).to(META), 2, 0.5).device == META
    assert Smooth(nn.Linear(3, 2), 2, 0.5, device=META).device == META


def test_counts_on_the_test_device_with_a_cpu_generator_match_the_cpu_counts(device):
    """A CPU generator drives noise for a model on ``device``: drawn on the CPU and copied over, so
    one seed gives the same counts on every device."""
    from tests.device_checks import cpu_generator
    torch.manual_seed(0)
    model, x = nn.Linear(3, 4), torch.rand(3)
    on_cpu = Smooth(model, 4, 0.5, generator=cpu_generator(5)).sample_counts(x, 60, batch_size=25)
    moved = Smooth(model.to(device), 4, 0.5, generator=cpu_generator(5)).sample_counts(x, 60, batch_size=25)
    assert (moved == on_cpu).all()
