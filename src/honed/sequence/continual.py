"""Regularisation- and gradient-based lifelong-learning baselines used by the lifelong multilingual TTS
reproduction (Towards lifelong learning of multilingual text-to-speech synthesis, arXiv:2110.04482):
EWC (Kirkpatrick et al. 2017; diagonal Fisher from the previous task's checkpoint) and GEM (Lopez-Paz
and Ranzato 2017; the dual QP of the gradient projection, solved as a bound-constrained least squares
with scipy).

Both work on any ``nn.Module`` in a plain loop: call them between ``loss.backward()`` and
``optimizer.step()`` (GEM) or add their penalty to the loss (EWC).
"""
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from honed.core.errors import InputError, check_number


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class EWC:
    """Elastic weight consolidation: after a task, ``consolidate`` stores the weights theta* and the
    diagonal empirical Fisher F (the mean over batches of each squared batch gradient of ``loss_of``);
    while learning the next task add ``importance * penalty(model)`` = importance * sum F (theta -
    theta*)^2 to the loss (the card's importance 1.0)."""

    def __init__(self, model: nn.Module, importance: float = 1.0) -> None:
        self.model, self.importance = model, check_number(importance, "importance")
        self.means: dict[str, torch.Tensor] = {}
        self.fisher: dict[str, torch.Tensor] = {}

    def consolidate(self, batches: Iterable, loss_of: Callable[[object], torch.Tensor]) -> None:
        """Fisher and anchor weights from the current model on ``batches`` (each passed to ``loss_of``).
        The model's gradients are zeroed before and after; its train/eval mode is kept."""
        params = _params(self.model)
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        for batch in batches:
            self.model.zero_grad()
            loss_of(batch).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2
            count += 1
        self.model.zero_grad()
        if count == 0:
            raise InputError("EWC.consolidate needs at least one batch")
        self.fisher = {n: f / count for n, f in fisher.items()}
        self.means = {n: p.detach().clone() for n, p in params.items()}

    def penalty(self, model: nn.Module | None = None) -> torch.Tensor:
        """importance * sum_i F_i (theta_i - theta*_i)^2 (0 before the first ``consolidate``)."""
        params = _params(model or self.model)
        if not self.fisher:
            return next(iter(params.values())).new_zeros(())
        total = sum((self.fisher[n] * (p - self.means[n]) ** 2).sum() for n, p in params.items() if n in self.fisher)
        return self.importance * total


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    """All ``.grad`` of ``params`` as one vector (zeros where a parameter has no gradient)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def write_flat_grad(params: list[torch.Tensor], vector: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = vector[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def gem_project(gradient: torch.Tensor, memories: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """GEM's projection of ``gradient`` (P,) given the previous tasks' gradients ``memories`` (K, P):
    when some g . g_k < 0, return g + M^T v with v = argmin_{v >= margin} ||M^T v + g||^2 (the dual QP;
    scipy's ``lsq_linear``); otherwise ``gradient`` itself. ``margin`` is GEM's memory strength."""
    from scipy.optimize import lsq_linear

    check_number(margin, "margin")
    if gradient.dim() != 1 or memories.dim() != 2 or memories.shape[1] != gradient.shape[0]:
        raise InputError(f"gradient must be (P,) and memories (K, P); got {tuple(gradient.shape)}, "
                         f"{tuple(memories.shape)}")
    if len(memories) == 0 or bool((memories @ gradient >= 0).all()):
        return gradient
    m = memories.detach().double().cpu().numpy()
    g = gradient.detach().double().cpu().numpy()
    v = lsq_linear(m.T, -g, bounds=(margin, np.inf)).x
    return torch.from_numpy(g + m.T @ v).to(gradient)


class GEM:
    """Gradient episodic memory on a model: ``memory_gradients`` computes one gradient per previous
    task from its memory batch; after the current ``loss.backward()``, ``project(memories)`` replaces
    the model's gradients by :func:`gem_project` of them (memory strength ``margin``, card: 0.5)."""

    def __init__(self, model: nn.Module, margin: float = 0.5) -> None:
        self.model, self.margin = model, check_number(margin, "margin")
        self.params = [p for p in model.parameters() if p.requires_grad]

    def memory_gradients(self, memory_batches: list, loss_of: Callable[[object], torch.Tensor]) -> torch.Tensor:
        """(K, P): the gradient of ``loss_of(batch)`` for each previous task's memory batch; the model's
        gradients are zeroed afterwards."""
        grads = []
        for batch in memory_batches:
            self.model.zero_grad()
            loss_of(batch).backward()
            grads.append(flat_grad(self.params))
        self.model.zero_grad()
        return torch.stack(grads) if grads else torch.zeros(0, sum(p.numel() for p in self.params))

    def project(self, memories: torch.Tensor) -> bool:
        """Project the current gradients; True when a constraint was violated (and they changed)."""
        current = flat_grad(self.params)
        projected = gem_project(current, memories, self.margin)
        if projected is current:
            return False
        write_flat_grad(self.params, projected)
        return True
