"""Randomized smoothing: PREDICT and CERTIFY of Cohen et al. (Certified Adversarial Robustness via
Randomized Smoothing, arXiv:1902.02918).

The smoothed classifier is ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)``, for a
base classifier ``f`` that returns logits. Both procedures count HARD predictions of ``f`` on fresh
Gaussian draws (never averaged softmax), and CERTIFY selects the class on ``n0`` draws and estimates its
probability on ``n`` separate draws, so the selection does not bias the bound::

    smooth = Smooth(model, num_classes=10, sigma=0.25)
    label, radius = smooth.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=1000)
    # label == ABSTAIN (-1) or: g(x + e) == label for every ||e||_2 < radius, with prob >= 1 - alpha
"""
import math

import numpy as np
import torch
from scipy.stats import binomtest

from honed.core.errors import InputError
from honed.core.loop import model_device
from honed.data.base import check_images
from honed.robust.attacks.base import eval_mode
from honed.robust.certify.bounds import check_alpha, check_sigma, certified_radius, clopper_pearson_lower

ABSTAIN = -1


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int or raise InputError unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def cohen_certificate(top_class: int, top_count: int, n: int, alpha: float, sigma: float) -> tuple[int, float]:
    """Randomized smoothing (arXiv:1902.02918), CERTIFY's decision from counts.

    ``top_count`` of ``n`` estimation draws hit ``top_class`` (chosen on separate selection draws).
    ``p_A_lower`` is the one-sided Clopper-Pearson bound at level alpha; returns
    ``(top_class, sigma * Phi^-1(p_A_lower))`` when ``p_A_lower > 1/2``, else ``(ABSTAIN, 0.0)``.
    """
    p_a_lower = clopper_pearson_lower(top_count, n, alpha)
    if p_a_lower <= 0.5:
        return ABSTAIN, 0.0
    return int(top_class), certified_radius(sigma, p_a_lower)


class Smooth:
    """Randomized smoothing (arXiv:1902.02918): Monte-Carlo PREDICT and CERTIFY around a base model.

    Args:
        base: ``nn.Module`` mapping a batch ``(B, *input_shape)`` to logits ``(B, num_classes)``; it is
            put in eval mode while sampling (every submodule's own train/eval flag is restored).
        num_classes: K >= 2.
        sigma: noise level > 0 (the same sigma the base model was trained with).
        device: where the noise and the counts live (default: the base model's device).
        input_shape: optional shape of ONE input (e.g. ``(64,)`` or ``(1, 8, 8)``); when given, an input
            of any other shape is refused. Inputs may also carry a leading batch dimension of 1.
        generator: optional ``torch.Generator`` for reproducible noise (best on ``device``; one on another
            device draws there and its noise is copied over).

    Inputs ``x`` are ONE image in [0, 1] (normalisation lives inside the base model); noisy copies are
    not clipped, as in the paper.
    """

    def __init__(self, base: torch.nn.Module, num_classes: int, sigma: float,
                 device: str | torch.device | None = None, input_shape: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.base = base
        self.num_classes = check_count(num_classes, "num_classes", minimum=2)
        self.sigma = check_sigma(sigma)
        self.device = model_device(base) if device is None else torch.device(device)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self.generator = generator

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` as one input on ``device`` (a leading batch dimension of 1 is dropped when
        ``input_shape`` is known) or raise InputError for a non-tensor, wrong shape, NaN or range."""
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.numel() == 0:
            raise InputError(f"x must be one non-empty input tensor, got {type(x).__name__}")
        if self.input_shape is not None:
            if tuple(x.shape) == (1, *self.input_shape):
                x = x[0]
            if tuple(x.shape) != self.input_shape:
                raise InputError(f"x must have shape {self.input_shape} (one input, no batch), "
                                 f"got {tuple(x.shape)}")
        check_images(x, "x")
        return x.to(self.device)

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int = 1000) -> np.ndarray:
        """Counts (K,) int64 of the base model's hard predictions on ``num`` fresh draws of
        ``x + N(0, sigma^2 I)``, evaluated ``batch_size`` at a time."""
        x = self.check_input(x)
        num, batch_size = check_count(num, "num"), check_count(batch_size, "batch_size")
        with eval_mode(self.base), torch.inference_mode():
            return self._count(x, num, batch_size).cpu().numpy()

    def _count(self, x: torch.Tensor, num: int, batch_size: int) -> torch.Tensor:
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        buffer = torch.empty((min(batch_size, num), *x.shape), dtype=x.dtype, device=self.device)
        foreign = self.generator is not None and self.generator.device != self.device
        draws = torch.empty_like(buffer, device=self.generator.device) if foreign else buffer
        done = 0
        while done < num:
            noisy = buffer[:min(batch_size, num - done)]
            noise = draws[:len(noisy)].normal_(0.0, self.sigma, generator=self.generator)
            (noisy.copy_(noise) if foreign else noisy).add_(x)
            logits = self._forward(noisy) if done == 0 else self.base(noisy)
            counts += torch.bincount(logits.argmax(1), minlength=self.num_classes)
            done += len(noisy)
        return counts

    def _forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """First batch: turn a shape mismatch inside the base model into one clear InputError."""
        try:
            logits = self.base(noisy)
        except RuntimeError as err:
            raise InputError(f"the base model rejected a noisy batch of shape {tuple(noisy.shape)} "
                             f"(x must be ONE input): {str(err).splitlines()[0]}") from None
        if logits.shape != (len(noisy), self.num_classes):
            raise InputError(f"the base model must return logits (B, {self.num_classes}), "
                             f"got {tuple(logits.shape)}")
        return logits

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 1000) -> int:
        """Randomized smoothing (arXiv:1902.02918), PREDICT: the top class of ``n`` draws, or ABSTAIN
        (-1) when a two-sided binomial test of top vs runner-up counts has p-value > alpha. A returned
        class differs from g(x) with probability <= alpha."""
        alpha = check_alpha(alpha)
        counts = self.sample_counts(x, check_count(n, "n"), batch_size)
        runner_up, top = np.argsort(counts, kind="stable")[-2:]
        n_top, n_runner_up = int(counts[top]), int(counts[runner_up])
        if binomtest(n_top, n_top + n_runner_up, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float,
                batch_size: int = 1000) -> tuple[int, float]:
        """Randomized smoothing (arXiv:1902.02918), CERTIFY: select c_A on ``n0`` draws, lower-bound
        p_A on ``n`` separate draws (Clopper-Pearson at level alpha) and return ``(c_A, sigma *
        Phi^-1(p_A_lower))``, or ``(ABSTAIN, 0.0)`` when ``p_A_lower <= 1/2``. Requires n0 <= n."""
        n0, n, alpha = check_count(n0, "n0"), check_count(n, "n"), check_alpha(alpha)
        if n0 > n:
            raise InputError(f"n0 (selection draws) must not exceed n (estimation draws), got {n0} > {n}")
        top_class = int(np.argmax(self.sample_counts(x, n0, batch_size)))
        counts = self.sample_counts(x, n, batch_size)
        return cohen_certificate(top_class, int(counts[top_class]), n, alpha, self.sigma)


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """Randomized smoothing (arXiv:1902.02918): the largest radius CERTIFY can return with ``n``
    estimation draws (all n hit c_A): ``sigma * Phi^-1(alpha ** (1/n))``."""
    from scipy.stats import norm

    n, alpha, sigma = check_count(n, "n"), check_alpha(alpha), check_sigma(sigma)
    return float(sigma * norm.ppf(math.exp(math.log(alpha) / n)))
