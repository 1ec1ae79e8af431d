"""SmoothOut: train on the box-averaged loss by injecting uniform weight noise and removing it again
(SmoothOut: Smoothing Out Sharp Minima to Improve Generalization in Deep Learning, arXiv:1805.07898).

The surrogate loss is ``C_bar(w) = E_theta[C(w + theta)]`` with ``theta_i ~ U(-a, a)``. One noise draw per
(ghost) mini-batch gives an unbiased estimate of ``grad C_bar``: inject theta in place, forward and
backward (gradients are evaluated at ``w + theta``), then restore ``w`` BEFORE the optimizer step.

Use it three ways:

* plain loop: ``so.inject(); loss.backward(); so.step(optimizer)`` (``step`` removes the noise, then
  steps the optimizer, then advances the amplitude schedule), or ``with so.perturbed(): loss.backward()``
  then ``so.step(optimizer)``;
* hand the optimizer over once, ``SmoothOut(model, a, optimizer=opt)`` (or :meth:`SmoothOut.attach`):
  the optimizer itself then removes the noise before every ``opt.step()`` and advances the schedule
  after it, so ``so.inject(); loss.backward(); opt.step()`` is safe too;
* as a :class:`honed.core.loop.Callback` (``train(..., callbacks=[so], ghost_size=128)``): one fresh draw
  per ghost chunk (``on_batch_start``), removed after each chunk's backward (``after_backward``), so the
  optimizer always steps from the clean weights.

An optimizer step taken while the noise is in would be thrown away when the clean weights are copied
back; :meth:`SmoothOut.denoise` notices it (the parameters' in-place version counters moved) and raises
instead of dropping the update silently.
"""
import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from honed.core.errors import InputError, check_number
from honed.core.loop import Callback, TrainState
from honed.core.seed import draw_device

MODES = ("none", "filter", "weight")
NOISES = ("uniform", "normal")
SCHEDULES = ("constant", "anneal", "tanh")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
ANNEAL_INDEX = 0.55  # a_t = a * (1 + t) ** (-ANNEAL_INDEX / 2), the code's --anneal-index default
TANH_SCALE = 10.0    # a_t = a * (tanh(TANH_SCALE * (t / T - 0.5)) + 1) / 2, the code's --tanh-scale


def check_amplitude(amplitude: float, name: str = "amplitude") -> float:
    """Return ``amplitude`` as a float or raise InputError when it is NaN, infinite or negative."""
    return check_number(amplitude, name)


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def perturbable_parameters(model: nn.Module, exclude_bn: bool = True) -> list[tuple[str, nn.Parameter]]:
    """SmoothOut (arXiv:1805.07898): the (name, parameter) pairs that receive noise.

    Every parameter with ``requires_grad`` (frozen ones are not trained, so not smoothed), minus the
    affine parameters of normalisation layers (``_BatchNorm``/``InstanceNorm``, ``GroupNorm``,
    ``LayerNorm``) when ``exclude_bn`` (the code's default: perturbing them degrades the model badly).
    """
    skip: set[int] = set()
    if exclude_bn:
        for module in model.modules():
            if isinstance(module, NORM_LAYERS):
                skip.update(id(p) for p in module.parameters(recurse=False))
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in skip]


class SmoothOut(Callback):
    """SmoothOut (arXiv:1805.07898): weight-noise injection and exact removal, per (ghost) mini-batch.

    Args:
        model: any ``nn.Module``; its trainable parameters (of any shape) receive noise, norm-layer
            affine parameters excepted when ``exclude_bn``.
        amplitude: ``a >= 0``. Absolute in mode ``none`` (card range 1e-3..3e-2); relative to the filter
            norm in ``filter`` (0.01..0.1); relative to ``|w|`` in ``weight``.
        mode: ``none`` theta ~ U(-a, a) * coef (plain SmoothOut); ``filter`` (AdaSmoothOut) row i of p
            viewed as [out, -1] gets ``a * coef * ||w_i|| * u_i / ||u_i||`` with u_i ~ U(-1, 1)^D (a 1-D
            parameter such as a bias is ONE row, so its whole noise vector has norm a*||b||);
            ``weight`` theta = U(-1, 1) * a * |w| * coef.
        noise: ``uniform`` (the method; the box-average theory needs it) or ``normal`` (ablation: the
            U(-1, 1) draw is replaced by N(0, 1), so in ``none`` mode the std is ``a * coef``).
        schedule: amplitude over optimizer steps t (see :meth:`amplitude_at`).
        total_steps: T for ``tanh``; taken from the train loop when used as a callback and left None.
        generator: a ``torch.Generator`` for reproducible noise (best on the parameters' device; one on
            another device draws there and the noise is moved).
        optimizer: optional; attached with :meth:`attach` (noise removed before each of its steps).

    Restoration is exact: :meth:`inject` keeps a copy of the clean weights and :meth:`denoise` copies
    it back. Subtracting the noise, as the reference code does, is NOT bit-exact in float arithmetic
    ((w + theta) - theta != w when theta is much larger than w's last bits), so an lr = 0 step would
    drift. The noise itself is kept in :attr:`noise` (name -> tensor) for inspection.
    """

    def __init__(self, model: nn.Module, amplitude: float, mode: str = "none", noise: str = "uniform",
                 schedule: str = "constant", total_steps: int | None = None, exclude_bn: bool = True,
                 coef: float = 1.0, generator: torch.Generator | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.amplitude = check_amplitude(amplitude)
        self.coef = check_amplitude(coef, "coef")
        self.mode = _check_choice(mode, MODES, "mode")
        self.noise_type = _check_choice(noise, NOISES, "noise")
        self.schedule = _check_choice(schedule, SCHEDULES, "schedule")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps <= 0):
            raise InputError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.total_steps = total_steps
        self.generator = generator
        self.params = perturbable_parameters(model, exclude_bn)
        self.t = 0
        self.noise: dict[str, torch.Tensor] = {}
        self._clean: list[tuple[nn.Parameter, torch.Tensor, int]] = []
        self._hooks: list = []
        if optimizer is not None:
            self.attach(optimizer)

    # -- schedule ---------------------------------------------------------------------------------
    def amplitude_at(self, step: int) -> float:
        """Amplitude at optimizer step ``step`` (0-based): constant ``a``; anneal
        ``a * (1 + t) ** -0.275``; tanh ``a * (tanh(10 * (t / T - 0.5)) + 1) / 2``."""
        if step < 0:
            raise InputError(f"step must be >= 0, got {step}")
        if self.schedule == "constant":
            return self.amplitude
        if self.schedule == "anneal":
            return self.amplitude * (1.0 + step) ** (-ANNEAL_INDEX / 2)
        if self.total_steps is None:
            raise InputError("schedule 'tanh' needs total_steps (or use SmoothOut as a train() callback)")
        return self.amplitude * (math.tanh(TANH_SCALE * (step / self.total_steps - 0.5)) + 1.0) / 2.0

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Plain-loop step: remove the noise (if in), ``optimizer.step()``, advance the schedule by one.
        Without ``optimizer`` only the schedule advances, and the noise must already be out."""
        if optimizer is None:
            if self.injected:
                raise RuntimeError("SmoothOut.step() without an optimizer while the noise is in: call "
                                   "so.step(optimizer), which removes the noise before stepping")
            self.t += 1
            return
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.denoise()
        optimizer.step()
        if not self._hooks:  # an attached optimizer's post-hook advances t itself
            self.t += 1

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Make ``optimizer`` remove the noise before each of its steps (step pre-hook) and advance
        the amplitude schedule after it, whatever order the loop calls things in."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self._hooks.append(optimizer.register_step_pre_hook(lambda *_: self.denoise()))
        self._hooks.append(optimizer.register_step_post_hook(lambda *_: self._advance()))

    def detach(self) -> None:
        """Remove the hooks :meth:`attach` put on the optimizer."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _advance(self) -> None:
        self.t += 1

    # -- noise ------------------------------------------------------------------------------------
    def _unit_draw(self, like: torch.Tensor) -> torch.Tensor:
        draw = draw_device(self.generator, like.device)  # a generator on another device draws there
        if self.noise_type == "normal":
            return torch.randn(like.shape, generator=self.generator, device=draw, dtype=like.dtype).to(like.device)
        r = torch.rand(like.shape, generator=self.generator, device=draw, dtype=like.dtype).to(like.device)
        return r.mul_(2.0).sub_(1.0)  # in [-1, 1): |2r - 1| <= 1 exactly, so |theta| <= a

    def draw_noise(self, weight: torch.Tensor, amplitude: float) -> torch.Tensor:
        """One noise tensor shaped like ``weight`` for the configured mode (see the class docstring)."""
        unit = self._unit_draw(weight)
        scale = amplitude * self.coef
        if self.mode == "none":
            return unit.mul_(scale)
        if self.mode == "weight":
            return unit.mul_(weight.abs()).mul_(scale)
        rows = unit.reshape(1 if weight.dim() <= 1 else weight.shape[0], -1)
        w_norms = weight.reshape(rows.shape).norm(dim=1, keepdim=True)
        u_norms = rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
        return (rows * (w_norms / u_norms) * scale).reshape(weight.shape)

    @property
    def injected(self) -> bool:
        """True between :meth:`inject` and :meth:`denoise`."""
        return bool(self._clean)

    @torch.no_grad()
    def inject(self) -> None:
        """Add a fresh noise draw to every perturbed parameter in place (on ``p.data``, invisible to
        autograd), keeping the clean weights and the noise. Raises if noise is already injected."""
        if self.injected:
            raise RuntimeError("SmoothOut.inject() called twice without denoise()")
        amplitude = self.amplitude_at(self.t)
        self.noise = {}
        for name, p in self.params:
            theta = self.draw_noise(p.data, amplitude)
            self._clean.append((p, p.data.clone(), p._version))
            self.noise[name] = theta
            p.data.add_(theta)

    @torch.no_grad()
    def denoise(self) -> None:
        """Restore the clean weights bit-identically (copied back, not subtracted). No-op if clean.

        Raises RuntimeError (after restoring) when a parameter was changed in place while the noise
        was in - an ``optimizer.step()`` before ``denoise()`` - since that update is now lost."""
        moved = [p for p, _, version in self._clean if p._version != version]
        for p, clean, _ in self._clean:
            p.data.copy_(clean)
        self._clean = []
        if moved:
            raise RuntimeError(
                f"SmoothOut: {len(moved)} parameter(s) were changed in place while the noise was in "
                "(optimizer.step() before denoise()?); restoring the clean weights threw that update away. "
                "Use so.step(optimizer), or SmoothOut(..., optimizer=opt) so the optimizer removes the noise first")

    def commit(self) -> None:
        """Keep the current noisy weights as the new clean weights (the noisy-SGD baseline)."""
        self._clean = []

    @contextmanager
    def perturbed(self) -> Iterator["SmoothOut"]:
        """``with so.perturbed(): loss.backward()`` - inject on entry, denoise on exit (even on error)."""
        self.inject()
        try:
            yield self
        finally:
            self.denoise()

    # -- Callback hooks ---------------------------------------------------------------------------
    def on_train_start(self, state: TrainState) -> None:
        if self.total_steps is None and self.schedule == "tanh" and state.total_steps > 0:
            self.total_steps = state.total_steps

    def on_step_start(self, state: TrainState) -> None:
        self.t = state.step  # stays right when the loop resumes from a checkpoint

    def on_batch_start(self, state: TrainState) -> None:
        self.inject()

    def after_backward(self, state: TrainState) -> None:
        self.denoise()

    def on_train_end(self, state: TrainState) -> None:
        self.denoise()


class PersistentWeightNoise(SmoothOut):
    """Noisy-SGD baseline for SmoothOut (arXiv:1805.07898): the same noise draw per (ghost) chunk, but
    never removed - each draw stays in the weights, which therefore random-walk. Same arguments."""

    def after_backward(self, state: TrainState) -> None:
        self.commit()

    def on_train_end(self, state: TrainState) -> None:
        self.commit()


def smoothout_gradient(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                       amplitude: float, copies: int, mode: str = "none", noise: str = "uniform",
                       exclude_bn: bool = True, generator: torch.Generator | None = None,
                       ) -> dict[str, torch.Tensor]:
    """"Original" SmoothOut (arXiv:1805.07898): the mean gradient over ``copies`` perturbed copies of
    the weights for ONE batch (x, y) - an M-sample estimate of grad C_bar(w).

    ``loss_fn(model(x), y)`` must return a scalar. Returns {parameter name: gradient} for every
    parameter (the ``.grad`` fields are overwritten with the same values); weights are restored exactly.
    """
    if not isinstance(copies, int) or copies < 1:
        raise InputError(f"copies must be a positive integer, got {copies!r}")
    so = SmoothOut(model, amplitude, mode=mode, noise=noise, exclude_bn=exclude_bn, generator=generator)
    model.zero_grad(set_to_none=True)
    for _ in range(copies):
        with so.perturbed():
            (loss_fn(model(x), y) / copies).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
