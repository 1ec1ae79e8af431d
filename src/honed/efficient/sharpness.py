"""Sharpness measures used to judge SmoothOut (arXiv:1805.07898): Keskar et al.'s epsilon-sharpness
(On Large-Batch Training for Deep Learning, arXiv:1609.04836) and the mean loss increase under random
uniform weight perturbations. Both evaluate the model in eval mode (deterministic BatchNorm) and
restore its weights and the train/eval flag of every submodule (a frozen BN inside a training model
stays frozen) bit-identically afterwards.
"""
from typing import Callable

import torch
from torch import nn

from honed.core.errors import InputError
from honed.efficient.smoothout import SmoothOut, check_amplitude
from honed.robust.attacks.base import eval_mode


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if len(x) == 0 or len(x) != len(y):
        raise InputError(f"x and y must be non-empty with equal length, got {len(x)} and {len(y)}")
    if torch.is_floating_point(x) and torch.isnan(x).any():
        raise InputError("x contains NaN")


def _positive_int(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_weights(model: nn.Module) -> None:
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise InputError(f"the model's weights hold NaN or inf (in {', '.join(bad[:3])}); sharpness is undefined")


@torch.no_grad()
def _loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(loss_fn(model(x), y))


def _base_loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    base = _loss(model, loss_fn, x, y)
    if not torch.isfinite(torch.tensor(base)):
        raise InputError(f"the loss at the unperturbed weights is {base}; sharpness needs a finite loss")
    return base


def epsilon_sharpness(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                      eps: float = 5e-4, steps: int = 10) -> float:
    """Keskar epsilon-sharpness (arXiv:1609.04836, as used by SmoothOut arXiv:1805.07898), in percent:
    ``100 * (L_max - L0) / (1 + L0)`` where L_max is the largest loss found inside the box
    ``|dw_i| <= eps * (|w_i| + 1)`` over all trainable parameters.

    The maximiser is ``steps`` projected sign-gradient ascent steps of size ``2.5 * bound / steps``
    (the reference uses 10 L-BFGS-B iterations); every iterate counts, so the result is >= 0.
    ``x``/``y`` is one full batch (e.g. a fixed train subset); ``loss_fn(logits, y)`` is a scalar mean.
    """
    eps = check_amplitude(eps, "eps")
    steps = _positive_int(steps, "steps")
    _check_batch(x, y)
    _check_weights(model)
    params = [p for p in model.parameters() if p.requires_grad]
    clean = [p.detach().clone() for p in params]
    bounds = [eps * (c.abs() + 1.0) for c in clean]
    with eval_mode(model):
        try:
            return _ascend(model, loss_fn, x, y, params, clean, bounds, steps)
        finally:
            with torch.no_grad():
                for p, c in zip(params, clean):
                    p.data.copy_(c)


def _ascend(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, params: list,
            clean: list, bounds: list, steps: int) -> float:
    """Projected sign-gradient ascent inside the box; returns the epsilon-sharpness in percent."""
    base = _base_loss(model, loss_fn, x, y)
    best = base
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
        with torch.no_grad():
            for p, c, b, g in zip(params, clean, bounds, grads):
                if g is None:
                    continue
                moved = p.data + (2.5 / steps) * b * torch.sign(g)
                p.data.copy_(torch.maximum(torch.minimum(moved, c + b), c - b))
        best = max(best, _loss(model, loss_fn, x, y))
    return 100.0 * (best - base) / (1.0 + base)


def random_perturbation_loss_increase(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                                      y: torch.Tensor, amplitude: float, draws: int = 20,
                                      mode: str = "none", exclude_bn: bool = True,
                                      generator: torch.Generator | None = None) -> float:
    """Mean of ``L(w + theta) - L(w)`` over ``draws`` SmoothOut noise draws (arXiv:1805.07898):
    theta ~ U(-a, a) on the parameters SmoothOut perturbs (mode ``none``; ``filter``/``weight`` give the
    relative variants). Evaluated in eval mode on the full batch (x, y); weights restored exactly.
    """
    draws = _positive_int(draws, "draws")
    _check_batch(x, y)
    _check_weights(model)
    noise = SmoothOut(model, amplitude, mode=mode, exclude_bn=exclude_bn, generator=generator)
    with eval_mode(model):
        base = _base_loss(model, loss_fn, x, y)
        total = 0.0
        for _ in range(draws):
            with noise.perturbed():
                total += _loss(model, loss_fn, x, y) - base
    return total / draws
