"""Adaptive D/G update choice by loss-change-ratio balancing (Ouyang & Agam, "Accelerated WGAN update
strategy with loss change rate balancing", WACV 2021, arXiv:2008.12463).

Instead of a fixed n_d critic steps per generator step, every iteration compares the relative change
of both losses between consecutive iterations,

    r_D = |(L_D^t - L_D^{t-1}) / L_D^{t-1}|,   r_G = |(L_G^t - L_G^{t-1}) / L_G^{t-1}|,

and updates D when ``r_D > lam * r_G``, else G (a tie goes to G; a larger ``lam`` favours G).

* :class:`LossChangeRatioScheduler` - the drop-in rule for any GAN loop: ``choose()`` says "D" or "G",
  ``observe(which, loss_d, loss_g)`` records the step and BOTH current losses (measured on the same
  batch). Warm-up: ``warmup_cycles`` cycles of the fixed schedule (``n_critic`` D steps, 1 G step),
  then the rule. Epsilon guard: the denominator is ``max(|L^{t-1}|, eps)``, so a zero previous loss
  gives a large finite ratio instead of a crash; ``guard_hits`` counts how often it triggered.
* :class:`FixedUpdateSchedule` - the usual n_d : n_g schedule with the same interface (baseline).
* :func:`gradient_penalty`, :func:`critic_objective` - WGAN-GP's critic loss (Gulrajani et al.).
* :func:`train_gan_updates` - a small loop running a budget of total updates (D + G steps) under
  either schedule, WGAN-GP losses, Adam; both losses are re-evaluated on the step's batch when the
  schedule needs them (the non-stepped network's loss costs one extra evaluation).
"""
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from honed.core.errors import InputError, check_count, check_number
from honed.core.loop import model_device
from honed.core.progress import progress_bar

CHOICES = ("D", "G")


def relative_change(current: float, previous: float, eps: float = 1e-8) -> tuple[float, bool]:
    """Loss change ratio of arXiv:2008.12463: ``|current - previous| / max(|previous|, eps)``.

    Returns ``(ratio, guarded)``; ``guarded`` is True when ``|previous| < eps`` (the epsilon guard for
    WGAN losses, which change sign and cross zero). Inputs: finite floats; eps > 0."""
    denominator = abs(previous)
    guarded = denominator < eps
    return abs(current - previous) / (eps if guarded else denominator), guarded


def fixed_choice(step: int, n_d: int, n_g: int = 1) -> str:
    """The fixed schedule's choice at 0-based update ``step``: n_d times "D", then n_g times "G"."""
    return "D" if step % (n_d + n_g) < n_d else "G"


def as_finite(value: Any, name: str) -> float:
    """A float from a number or 0-dim tensor; InputError when it is NaN/inf or not a scalar."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise InputError(f"{name} must be a scalar loss, got a tensor of shape {tuple(value.shape)}")
        value = value.detach().item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be finite, got {number}")
    return number


class FixedUpdateSchedule:
    """Fixed n_d : n_g update schedule (baseline of arXiv:2008.12463; WGAN's n_critic = 5 is 5 : 1).

    ``choose()`` -> "D" or "G"; ``observe(which, loss_d=None, loss_g=None)`` counts the step (losses are
    not needed). Counters: ``d_steps``, ``g_steps``, ``steps``."""

    needs_both_losses = False

    def __init__(self, n_d: int = 5, n_g: int = 1) -> None:
        self.n_d, self.n_g = check_count(n_d, "n_d"), check_count(n_g, "n_g")
        self.d_steps = self.g_steps = 0

    @property
    def steps(self) -> int:
        return self.d_steps + self.g_steps

    def choose(self) -> str:
        return fixed_choice(self.steps, self.n_d, self.n_g)

    def observe(self, which: str, loss_d: Any = None, loss_g: Any = None) -> None:
        if which not in CHOICES:
            raise InputError(f"which must be 'D' or 'G', got {which!r}")
        self.d_steps += which == "D"
        self.g_steps += which == "G"


class LossChangeRatioScheduler(FixedUpdateSchedule):
    """Loss-change-ratio balancing of arXiv:2008.12463: update D iff ``r_D > lam * r_G`` (ties -> G).

    lam > 0 (larger favours G). Warm-up: the first ``warmup_cycles * (n_critic + 1)`` updates follow the
    fixed n_critic : 1 schedule exactly (the PyTorch port's 3 cycles; (R) count). r_D = r_G = 1 until two
    observations exist. After every update call ``observe(which, loss_d, loss_g)`` with BOTH losses of
    this iteration on the same batch (the non-stepped network's loss evaluated without an update): we
    re-evaluate both rather than keep a stale ratio, so neither ratio freezes at 0. Losses: finite
    floats or 0-dim tensors of any sign. ``guard_hits`` counts uses of the epsilon guard."""

    needs_both_losses = True

    def __init__(self, lam: float = 1.0, n_critic: int = 5, warmup_cycles: int = 3, eps: float = 1e-8) -> None:
        super().__init__(check_count(n_critic, "n_critic"), 1)
        self.lam = check_number(lam, "lam", strict=True)
        self.eps = check_number(eps, "eps", strict=True)
        self.warmup_updates = check_count(warmup_cycles, "warmup_cycles", minimum=0) * (n_critic + 1)
        self.ratio_d = self.ratio_g = 1.0
        self.prev_d: float | None = None
        self.prev_g: float | None = None
        self.guard_hits = 0
        self.decisions: list[str] = []

    def choose(self) -> str:
        if self.steps < self.warmup_updates:
            return fixed_choice(self.steps, self.n_d, 1)
        return "D" if self.ratio_d > self.lam * self.ratio_g else "G"

    def observe(self, which: str, loss_d: Any = None, loss_g: Any = None) -> None:
        if loss_d is None or loss_g is None:
            raise InputError("the adaptive scheduler needs both loss_d and loss_g at every update")
        current_d, current_g = as_finite(loss_d, "loss_d"), as_finite(loss_g, "loss_g")
        super().observe(which)
        self.decisions.append(which)
        if self.prev_d is not None:
            self.ratio_d, hit_d = relative_change(current_d, self.prev_d, self.eps)
            self.ratio_g, hit_g = relative_change(current_g, self.prev_g, self.eps)
            self.guard_hits += hit_d + hit_g
        self.prev_d, self.prev_g = current_d, current_g


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None, create_graph: bool = True) -> torch.Tensor:
    """WGAN-GP penalty used by arXiv:2008.12463's WGAN-GP runs: mean over the batch of
    ``(||grad_x D(x_hat)||_2 - 1)^2`` at ``x_hat = a * real + (1 - a) * fake``, a ~ U(0, 1) per sample.

    real, fake: (B, ...) of the same shape; returns a 0-dim tensor (differentiable w.r.t. the critic's
    parameters when ``create_graph``)."""
    if real.shape != fake.shape or real.dim() < 2:
        raise InputError(f"real and fake must share a (B, ...) shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=generator,
                       device=real.device if generator is None else generator.device).to(real.device)
    x_hat = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=create_graph)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def critic_objective(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, lambda_gp: float = 10.0,
                     generator: torch.Generator | None = None, create_graph: bool = True,
                     d_fake: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP critic loss (arXiv:2008.12463's L_D): ``E[D(fake)] - E[D(real)] + lambda_gp * GP``.
    real, fake: (B, ...); ``d_fake`` may pass precomputed critic outputs on ``fake``."""
    d_fake = critic(fake.detach()) if d_fake is None else d_fake
    penalty = gradient_penalty(critic, real, fake, generator, create_graph) if lambda_gp > 0 else 0.0
    return d_fake.mean() - critic(real).mean() + lambda_gp * penalty


@dataclass
class GanUpdateLog:
    """What :func:`train_gan_updates` did: counts, the D/G sequence, training seconds (evaluation
    excluded) and ``evals``: one ``{"update", "seconds", **metrics}`` per evaluation."""

    d_steps: int = 0
    g_steps: int = 0
    decisions: str = ""
    train_seconds: float = 0.0
    guard_hits: int = 0
    evals: list[dict[str, float]] = field(default_factory=list)


def critic_update(generator_net, critic, opt_d, real, z, lambda_gp, rng) -> tuple[float, float]:
    """One WGAN-GP critic step; returns (L_D before the step, L_G on the same batch)."""
    with torch.no_grad():
        fake = generator_net(z)
    d_fake = critic(fake)
    loss_d = critic_objective(critic, real, fake, lambda_gp, rng, d_fake=d_fake)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    return loss_d.item(), -d_fake.mean().item()


def generator_update(generator_net, critic, opt_g, real, z, lambda_gp, rng, need_d: bool) -> tuple[float, float | None]:
    """One generator step (L_G = -E[D(G(z))]); returns (L_G before the step, L_D on the same batch or
    None when ``need_d`` is False). The critic's parameters get no gradient."""
    critic.requires_grad_(False)
    try:
        fake = generator_net(z)
        d_fake = critic(fake)
        loss_g = -d_fake.mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        loss_d = None
        if need_d:
            loss_d = critic_objective(critic, real, fake.detach(), lambda_gp, rng, create_graph=False,
                                      d_fake=d_fake.detach()).item()
    finally:
        critic.requires_grad_(True)
    return loss_g.item(), loss_d


def train_gan_updates(generator_net: nn.Module, critic: nn.Module, sample_real: Callable[[int, torch.Generator], torch.Tensor],
                      schedule: FixedUpdateSchedule, total_updates: int, z_dim: int, *, batch_size: int = 256,
                      lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.9), lambda_gp: float = 10.0,
                      eval_every: int = 0, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                      seed: int = 0, device: str | torch.device | None = None) -> GanUpdateLog:
    """WGAN-GP training (arXiv:2008.12463's setting) for exactly ``total_updates`` D + G steps, each
    chosen by ``schedule`` (fixed or :class:`LossChangeRatioScheduler`). ``sample_real(B, rng)`` -> (B, ...)
    real batch; z ~ N(0, I) of shape (B, z_dim); the same ``seed`` gives every schedule the same batch
    stream. ``evaluate(generator)`` -> metrics, run at update 0, every ``eval_every`` and at the end.
    ``device``: where batches, noise and the seeded generator live (default: the generator net's device).
    ``train_seconds`` is wall time per update; each update reads its losses back (``.item()``), so the
    device is synchronised inside it."""
    check_count(total_updates, "total_updates")
    device = model_device(generator_net) if device is None else torch.device(device)
    rng = torch.Generator(device=device).manual_seed(seed)
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
    opt_g = torch.optim.Adam(generator_net.parameters(), lr=lr, betas=betas)
    log, decisions = GanUpdateLog(), []

    def run_eval(update: int) -> None:
        if evaluate is not None:
            log.evals.append({"update": update, "seconds": log.train_seconds, **evaluate(generator_net)})

    run_eval(0)
    with progress_bar(total_updates, "GAN updates") as bar:
        for update in range(1, total_updates + 1):
            start = time.perf_counter()
            which = schedule.choose()
            real = sample_real(batch_size, rng).to(device)
            z = torch.randn(batch_size, z_dim, generator=rng, device=device)
            if which == "D":
                loss_d, loss_g = critic_update(generator_net, critic, opt_d, real, z, lambda_gp, rng)
            else:
                loss_g, loss_d = generator_update(generator_net, critic, opt_g, real, z, lambda_gp, rng,
                                                  schedule.needs_both_losses)
            schedule.observe(which, loss_d, loss_g)
            decisions.append(which)
            log.train_seconds += time.perf_counter() - start
            if eval_every and (update % eval_every == 0) and update != total_updates:
                run_eval(update)
            bar.advance()
    run_eval(total_updates)
    log.d_steps, log.g_steps, log.decisions = schedule.d_steps, schedule.g_steps, "".join(decisions)
    log.guard_hits = getattr(schedule, "guard_hits", 0)
    return log
