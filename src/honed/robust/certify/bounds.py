"""Confidence bounds and the certified radius of randomized smoothing (Certified Adversarial
Robustness via Randomized Smoothing, arXiv:1902.02918; the two-class radius of its Theorem 1).

* :func:`clopper_pearson_lower` / :func:`clopper_pearson_upper`: one-sided exact binomial bounds
  (``scipy.stats.beta.ppf``), each holding with probability >= 1 - alpha.
* :func:`goodman_intervals`: simultaneous multinomial intervals for all K class probabilities.
* :func:`certified_radius`: ``sigma/2 * (Phi^-1(p_A_lower) - Phi^-1(p_B_upper))``; with the default
  ``p_B_upper = 1 - p_A_lower`` it is Cohen's ``sigma * Phi^-1(p_A_lower)``.
"""
import math

import numpy as np
from scipy.stats import beta, chi2, norm

from honed.core.errors import InputError, check_number


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float or raise InputError unless it lies in the open interval (0, 1)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < value < 1.0:
        raise InputError(f"alpha must lie in (0, 1), got {alpha!r}")
    return value


def check_sigma(sigma: float) -> float:
    """Return ``sigma`` as a float or raise InputError unless it is finite and > 0."""
    return check_number(sigma, "sigma", strict=True)


def _check_counts(successes: int, trials: int) -> tuple[int, int]:
    k, n = int(successes), int(trials)
    if k != successes or n != trials:
        raise InputError(f"successes and trials must be integers, got {successes!r}, {trials!r}")
    if n < 1 or not 0 <= k <= n:
        raise InputError(f"need trials >= 1 and 0 <= successes <= trials, got {k} of {n}")
    return k, n


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """Randomized smoothing (arXiv:1902.02918): one-sided Clopper-Pearson lower bound on a binomial p.

    ``P(p >= bound) >= 1 - alpha``; ``bound = Beta(alpha; k, n - k + 1)`` quantile, 0 when k = 0.
    Scalars only: ``successes`` k in [0, n], ``trials`` n >= 1, ``alpha`` in (0, 1).
    """
    k, n = _check_counts(successes, trials)
    alpha = check_alpha(alpha)
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_upper(successes, trials: int, alpha: float):
    """Randomized smoothing (arXiv:1902.02918): one-sided Clopper-Pearson upper bound on a binomial p.

    ``P(p <= bound) >= 1 - alpha``; ``bound = Beta(1 - alpha; k + 1, n - k)`` quantile, 1 when k = n.
    ``successes`` is an int or an integer array (one bound per entry, same shape back); n >= 1.
    """
    counts = np.asarray(successes)
    if counts.size == 0 or not np.issubdtype(counts.dtype, np.integer):
        raise InputError(f"successes must be integers, got {successes!r}")
    for k in counts.ravel():
        _check_counts(int(k), trials)
    alpha = check_alpha(alpha)
    full = counts == trials
    safe = np.where(full, trials - 1, counts)  # avoids Beta(., 0) on the entries replaced by 1 below
    bound = np.where(full, 1.0, beta.ppf(1 - alpha, safe + 1, trials - safe))
    return float(bound) if np.ndim(successes) == 0 else bound


def goodman_intervals(counts, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Goodman (1965) simultaneous intervals for multinomial probabilities: all K hold at once with
    probability >= 1 - alpha (asymptotic). ``counts`` int array (K,), K >= 2; returns (lower, upper).

    Offered as the pluggable interval of the tight certificate (Regularized Training and Tight
    Certification for Randomized Smoothed Classifier, Feng et al. AAAI 2020; no arXiv id).
    """
    n_c = np.asarray(counts, dtype=np.float64)
    if n_c.ndim != 1 or len(n_c) < 2 or (n_c < 0).any() or n_c.sum() < 1:
        raise InputError(f"counts must be a 1-D array of K >= 2 non-negative counts, got {counts!r}")
    alpha = check_alpha(alpha)
    n = n_c.sum()
    a = chi2.ppf(1 - alpha / len(n_c), 1)
    half = np.sqrt(a * (a + 4 * n_c * (n - n_c) / n))
    lower = (a + 2 * n_c - half) / (2 * (n + a))
    upper = (a + 2 * n_c + half) / (2 * (n + a))
    return np.clip(lower, 0.0, 1.0), np.clip(upper, 0.0, 1.0)


def certified_radius(sigma: float, p_a_lower: float, p_b_upper: float | None = None) -> float:
    """Randomized smoothing (arXiv:1902.02918, Theorem 1): the l2 radius within which the smoothed
    prediction cannot change, ``sigma/2 * (Phi^-1(p_A_lower) - Phi^-1(p_B_upper))``.

    ``p_b_upper`` defaults to ``1 - p_a_lower``, giving ``sigma * Phi^-1(p_A_lower)``. Returns 0.0 when
    ``p_a_lower <= p_b_upper`` (no certificate). Probabilities in [0, 1], sigma > 0.
    """
    sigma = check_sigma(sigma)
    p_a = float(p_a_lower)
    p_b = 1.0 - p_a if p_b_upper is None else float(p_b_upper)
    if not (0.0 <= p_a <= 1.0 and 0.0 <= p_b <= 1.0):
        raise InputError(f"probabilities must lie in [0, 1], got p_A={p_a_lower!r}, p_B={p_b_upper!r}")
    if p_a <= p_b:
        return 0.0
    if p_b_upper is None:
        return float(sigma * norm.ppf(p_a))
    return float(sigma * 0.5 * (norm.ppf(p_a) - norm.ppf(p_b)))
