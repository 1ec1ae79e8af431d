"""Iterative magnitude pruning with weight rewinding, and its controls (The Lottery Ticket Hypothesis,
arXiv:1803.03635; rewinding: Stabilizing the Lottery Ticket Hypothesis / Linear Mode Connectivity and
the LTH, arXiv:1903.01611 / 1912.05671; open_lth semantics).

IMP, as in open_lth's lottery runner:

* level 0: train the dense model from ``theta_init`` for the whole budget, saving the full state at
  optimizer step ``rewind_step`` (``theta_rewind``; step 0 = the initialisation, i.e. the original LTH);
* level L >= 1: magnitude-prune the trained weights of level L-1 to sparsity ``1 - (1 - p)^L`` (a
  fraction ``p`` of the weights that remain, up to rounding to a whole count), rewind the surviving
  weights to ``theta_rewind`` and retrain with the mask from step ``rewind_step`` to the end.

Masks are nested across levels (a pruned weight never returns). Controls: ``random_reinit`` (same
mask, fresh initialisation; open_lth's randomly_reinitialize) and ``shuffle_mask`` +
:func:`train_ticket` (random mask of the same layer-wise density from ``theta_rewind``; open_lth's
randomly_prune).

Training, either way:

* a plain ``train(model, steps)`` that runs ``steps`` optimizer steps of your own loop (building its
  optimizer inside, as open_lth restarts it at each level): pass ``steps=`` (the whole budget) to
  :func:`iterative_magnitude_pruning`, or wrap it as :class:`PlainTrainer` for :func:`train_ticket` /
  :func:`random_reinit`. Pruned weights stay zero through :func:`~honed.compress.masks.masked_weights`
  (it masks around every optimizer step, as IMP's callback does in honed's loop); with
  ``rewind_step=k > 0`` the dense training runs as ``train(model, k)`` then ``train(model, steps - k)``
  (so your optimizer restarts at the rewind point);
* ``train_fn(model, start_step, callbacks)`` that trains ``model`` from optimizer step ``start_step``
  to the end of its budget with ``honed.core.loop.train`` and passes ``callbacks`` to it (they keep
  the mask and capture the rewind point). :class:`StepTrainer` is one such function.
"""
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
from torch import nn

from honed.compress.masks import (Mask, MaskCallback, apply_mask, magnitude_prune, masked_weights, ones_mask,
                                  pruned_entries_are_zero, sparsity)
from honed.core.errors import InputError, check_count
from honed.core.loop import Callback, TrainState, train


class TrainFn(Protocol):
    """What IMP calls to train: ``fn(model, start_step, callbacks)`` trains ``model`` from ``start_step``
    with ``callbacks`` (IMP passes the mask callback and the rewind capture)."""
    def __call__(self, model: nn.Module, start_step: int, callbacks: list[Callback]) -> None: ...


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model.state_dict()`` (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class StopAfterSteps(Callback):
    """Stops ``honed.core.loop.train`` once ``steps`` optimizer steps have run."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_start(self, state: TrainState) -> None:
        state.stop = self.steps <= 0

    def after_step(self, state: TrainState) -> None:
        if state.step >= self.steps:
            state.stop = True


class RewindCapture(Callback):
    """Saves a copy of the model's state after ``step`` optimizer steps (0 = before training)."""

    def __init__(self, step: int) -> None:
        self.step, self.state = step, None

    def on_train_start(self, state: TrainState) -> None:
        if self.step == 0:
            self.state = clone_state(state.model)

    def after_step(self, state: TrainState) -> None:
        if state.step == self.step:
            self.state = clone_state(state.model)


@dataclass
class StepTrainer:
    """A ``train_fn`` for IMP: a fresh optimizer (``make_optimizer(params)``, default Adam 1e-3) and
    ``total_steps - start_step`` steps over ``data`` (an iterable of (x, y) batches with ``len``,
    e.g. ``honed.data.Batches``) with ``honed.core.loop.train``, on ``device`` (default: the model's)."""

    data: Iterable
    total_steps: int
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = \
        lambda params: torch.optim.Adam(params, lr=1e-3)
    device: str | torch.device | None = None

    def __call__(self, model: nn.Module, start_step: int, callbacks: list[Callback]) -> None:
        steps = self.total_steps - start_step
        epochs = max(1, math.ceil(steps / max(len(self.data), 1)))
        train(model, self.data, self.make_optimizer(model.parameters()), epochs,
              callbacks=[*callbacks, StopAfterSteps(steps)], device=self.device, progress=False)


class PlainTrainer:
    """IMP's ``train_fn`` made from a plain ``train(model, steps)`` (your loop, ``steps`` optimizer
    steps) and the whole budget ``total_steps``: it runs ``train(model, total_steps - start_step)``
    with the mask held by :func:`~honed.compress.masks.masked_weights`, split at a rewind point that
    falls inside (state captured between the two calls)."""

    def __init__(self, train: Callable[[nn.Module, int], object], total_steps: int) -> None:
        if not callable(train):
            raise InputError(f"train must be a function train(model, steps), got {type(train).__name__}")
        self.train, self.total_steps = train, check_count(total_steps, "steps")

    def __call__(self, model: nn.Module, start_step: int, callbacks: list[Callback]) -> None:
        masks = [cb.mask for cb in callbacks if isinstance(cb, MaskCallback)]
        captures = [cb for cb in callbacks if isinstance(cb, RewindCapture)]
        if len(masks) + len(captures) != len(callbacks):
            raise InputError("a plain train(model, steps) cannot run honed loop callbacks other than IMP's own")
        mask = {k: v for m in masks for k, v in m.items()}
        remaining = self.total_steps - start_step
        cut = captures[0].step - start_step if captures else None
        if cut == 0:
            captures[0].state = clone_state(apply_mask(model, mask))
        if cut is not None and 0 < cut <= remaining:
            self._run(model, mask, cut)
            captures[0].state = clone_state(model)
            self._run(model, mask, remaining - cut)
        else:
            self._run(model, mask, remaining)

    def _run(self, model: nn.Module, mask: Mask, steps: int) -> None:
        if steps > 0:
            with masked_weights(model, mask):
                self.train(model, steps)


def as_train_fn(train, steps: int | None) -> TrainFn:
    """``train`` as IMP's ``train_fn``: wrapped in :class:`PlainTrainer` when ``steps`` is given; a
    two-parameter function without ``steps`` is refused (it cannot take IMP's callbacks)."""
    if steps is not None:
        if isinstance(train, (PlainTrainer, StepTrainer)):
            raise InputError("steps= is for a plain train(model, steps) function; this train_fn has its own budget")
        return PlainTrainer(train, steps)
    if not callable(train):
        raise InputError(f"train_fn must be callable, got {type(train).__name__}")
    try:
        params = [p for p in inspect.signature(train).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return train
    if len(params) == 2:
        raise InputError("train takes two arguments, like a plain train(model, steps): pass steps=<total "
                         "optimizer steps> so IMP can drive it (or accept (model, start_step, callbacks))")
    return train


@dataclass
class IMPLevel:
    """One IMP level: its mask, the mask's sparsity, ``evaluate(model)`` after training, and (when
    kept) the trained state_dict."""

    level: int
    mask: Mask
    sparsity: float
    metrics: dict[str, float] = field(default_factory=dict)
    trained: dict[str, torch.Tensor] | None = None


@dataclass
class IMPResult:
    """The IMP run: ``init_state`` (theta_init), ``rewind_state`` (theta at ``rewind_step``) and the
    levels 0..rounds (level 0 is dense)."""

    init_state: dict[str, torch.Tensor]
    rewind_state: dict[str, torch.Tensor]
    rewind_step: int
    levels: list[IMPLevel]

    @property
    def masks(self) -> list[Mask]:
        return [lv.mask for lv in self.levels]


def rewind(model: nn.Module, rewind_state: dict[str, torch.Tensor], mask: Mask) -> nn.Module:
    """Load ``rewind_state`` into ``model`` and zero the pruned entries: surviving weights equal the
    saved ones exactly."""
    model.load_state_dict(rewind_state)
    return apply_mask(model, mask)


def _train_masked(model: nn.Module, mask: Mask, train_fn: TrainFn, start_step: int, extra=()) -> None:
    train_fn(model, start_step, [MaskCallback(mask), *extra])
    if not pruned_entries_are_zero(model, mask):
        raise InputError("train_fn let pruned weights become non-zero: it must pass IMP's callbacks to "
                         "honed.core.loop.train (or give IMP a plain train(model, steps) with steps=...)")


def train_ticket(model: nn.Module, rewind_state: dict[str, torch.Tensor], mask: Mask, train_fn: TrainFn,
                 start_step: int) -> nn.Module:
    """Train the sparse network (``mask``, weights rewound to ``rewind_state``) from ``start_step``."""
    rewind(model, rewind_state, mask)
    _train_masked(model, mask, train_fn, start_step)
    return model


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter with its module's own ``reset_parameters`` under ``seed`` (without
    touching the global RNG, CUDA generators included: manual_seed reseeds every initialised GPU); returns
    ``model``."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def random_reinit(model: nn.Module, mask: Mask, train_fn: TrainFn, start_step: int, seed: int) -> nn.Module:
    """LTH control (arXiv:1803.03635, open_lth randomly_reinitialize): same mask, fresh random
    initialisation (``seed``), trained from ``start_step``."""
    reinitialize(model, seed)
    apply_mask(model, mask)
    _train_masked(model, mask, train_fn, start_step)
    return model


def _check_imp_args(rounds: int, prune_fraction: float, rewind_step: int) -> None:
    if not isinstance(rounds, int) or rounds < 0:
        raise InputError(f"rounds must be an integer >= 0, got {rounds!r}")
    if not isinstance(prune_fraction, (int, float)) or not 0.0 < prune_fraction < 1.0:
        raise InputError(f"prune_fraction must lie in (0, 1), got {prune_fraction!r}")
    if not isinstance(rewind_step, int) or rewind_step < 0:
        raise InputError(f"rewind_step must be an integer >= 0, got {rewind_step!r}")


def iterative_magnitude_pruning(model: nn.Module, train_fn: TrainFn | Callable[[nn.Module, int], object],
                                rounds: int, *, steps: int | None = None, prune_fraction: float = 0.2,
                                rewind_step: int = 0, scope: str = "global", ignore: Iterable[str] = (),
                                evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                                keep_trained: bool = False) -> IMPResult:
    """IMP with rewinding (LTH, arXiv:1803.03635; rewinding arXiv:1903.01611), open_lth semantics.

    ``model``: any module holding ``theta_init``; it is trained in place and ends as the last level's
    trained sparse network. ``train_fn``: a plain ``train(model, steps)`` with ``steps=`` the whole
    budget in optimizer steps, or a ``train_fn(model, start_step, callbacks)`` (module docstring).
    ``rounds``: pruning levels after the dense one; level L has sparsity ``1 - (1 - prune_fraction)^L``
    over the pruned layers (Linear/Conv weights minus ``ignore``). ``scope``: ``"global"`` (open_lth
    sparse_global) or ``"layerwise"``. ``evaluate(model)`` is called after each level's training;
    ``keep_trained`` stores each level's trained state_dict.
    """
    _check_imp_args(rounds, prune_fraction, rewind_step)
    train_fn = as_train_fn(train_fn, steps)
    if steps is not None and rewind_step >= steps:
        raise InputError(f"rewind_step={rewind_step} must be smaller than steps={steps}")
    init_state = clone_state(model)
    mask = ones_mask(model, ignore)
    capture = RewindCapture(rewind_step)
    capture.state = clone_state(model) if rewind_step == 0 else None
    _train_masked(model, mask, train_fn, 0, [capture])
    if capture.state is None:
        raise InputError(f"the rewind point (optimizer step {rewind_step}) was never captured: train_fn must run "
                         "at least that many steps and pass IMP's callbacks to honed.core.loop.train (or give "
                         "IMP a plain train(model, steps) with steps=...)")
    levels = [_record(model, 0, mask, evaluate, keep_trained)]
    for level in range(1, rounds + 1):
        mask = magnitude_prune(model, 1.0 - (1.0 - prune_fraction) ** level, scope, current=mask)
        train_ticket(model, capture.state, mask, train_fn, rewind_step)
        levels.append(_record(model, level, mask, evaluate, keep_trained))
    return IMPResult(init_state, capture.state, rewind_step, levels)


def _record(model: nn.Module, level: int, mask: Mask, evaluate, keep_trained: bool) -> IMPLevel:
    metrics = dict(evaluate(model)) if evaluate is not None else {}
    trained = clone_state(model) if keep_trained else None
    return IMPLevel(level, {k: v.clone() for k, v in mask.items()}, sparsity(mask), metrics, trained)
