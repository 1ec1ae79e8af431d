"""The base of honed's attacks: ``Attack(model, **hp)(x, y) -> x_adv`` (torchattacks' call shape).

The base owns the boilerplate every attack needs, so each attack file holds only its update rule:

* inputs: ``x`` float in [0, 1] with a batch dimension (normalisation lives inside the model),
  ``y`` int64 of shape (N,) - true labels, or target labels when ``targeted=True``; the logits the
  model returns must be (N, C) with every label < C. Anything else is one :class:`InputError`.
* the model runs in eval mode during the attack and every submodule's train/eval flag is restored
  afterwards; the model's parameters are never modified and no gradient is accumulated into them
  (attacks differentiate with ``torch.autograd.grad`` with respect to their own tensors only).
* counting: every forward and backward pass through the model is counted, and after a call
  ``attack.last_stats`` (an :class:`AttackStats`) holds the counts, the iterations, the wall time of
  the attack proper and the per-example success, re-checked by classifying the returned images.
"""
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from honed.core.errors import InputError, check_count, check_number  # noqa: F401 (re-exported)
from honed.core.measure import synchronize
from honed.core.modes import eval_mode  # noqa: F401 (re-exported: attacks and their users import it here)
from honed.data.base import check_images


@dataclass
class AttackStats:
    """What one attack call spent and achieved.

    forwards / backwards: passes through the model made by the attack (batched: one pass over the
    whole batch counts once). ``queries`` is their sum. The final verification forward that fills
    ``success`` is not counted: it is evaluation, not attack.
    iterations: update steps taken (for binary-search attacks, summed over all search steps).
    elapsed_s: wall time of the attack proper (without the verification forward).
    success: (N,) bool, True where the returned image is classified adversarially (argmax != y, or
    == target when targeted), measured on the returned image itself.
    iterations_to_success / queries_to_success: (N,) int64, for attacks that track it (the CW
    family): the iteration (1-based, counted across search steps) and the number of queries spent
    when the example's iterate was first adversarial; -1 when it never was.
    loss_trace: optional per-search-step objective values recorded by optimisation attacks.
    """

    forwards: int = 0
    backwards: int = 0
    iterations: int = 0
    elapsed_s: float = 0.0
    success: torch.Tensor | None = None
    iterations_to_success: torch.Tensor | None = None
    queries_to_success: torch.Tensor | None = None
    loss_trace: list[list[float]] = field(default_factory=list)

    @property
    def queries(self) -> int:
        return self.forwards + self.backwards

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success is not None and len(self.success) else math.nan

    @property
    def ms_per_iteration(self) -> float:
        return 1e3 * self.elapsed_s / self.iterations if self.iterations else math.nan


def check_labels(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise InputError unless ``y`` is an int64 tensor of shape (N,) with N = len(x)."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"labels must be a torch.Tensor of int64, got {type(y).__name__}")
    if y.dtype != torch.int64:
        raise InputError(f"labels must be int64 (torch.long), got {y.dtype}")
    if y.dim() != 1 or len(y) != len(x):
        raise InputError(f"labels must have shape ({len(x)},) to match x, got {tuple(y.shape)}")


def check_attack_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise InputError unless ``x`` is a batched float tensor in [0, 1] and ``y`` matches it."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or len(x) == 0:
        raise InputError(f"x must be a non-empty batch shaped (N, ...), got shape {tuple(x.shape)}")
    check_images(x, "x")
    check_labels(x, y)


def check_logits(logits: torch.Tensor, y: torch.Tensor) -> None:
    """Raise InputError unless ``logits`` is (N, C) with N = len(y) and every label in [0, C)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != len(y):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"the model must return logits of shape ({len(y)}, C), got {shape}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= logits.shape[1]:
        raise InputError(f"labels must lie in [0, {logits.shape[1]}) for {logits.shape[1]} logits, got [{lo}, {hi}]")


def is_adversarial(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(N,) bool: argmax hits the target (targeted) or leaves the true label (untargeted)."""
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y


class Attack:
    """Base of every attack: ``Attack(model, targeted=False, **hp)(x, y) -> x_adv``.

    x: float (N, ...) in [0, 1]; y: int64 (N,), true labels or, with ``targeted``, target labels.
    Returns x_adv (same shape, detached, in [0, 1]). Subclasses implement :meth:`perturb` and call
    :meth:`logits` / :meth:`input_grad` so that passes are counted and shapes checked.
    ``verify`` (True): classify the returned images once to fill ``last_stats.success``; set it to
    False on an instance to skip that extra forward (``success`` is then None).
    """

    verify: bool = True

    def __init__(self, model: nn.Module, *, targeted: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(targeted, bool):
            raise InputError(f"targeted must be True or False, got {targeted!r}")
        self.model, self.targeted = model, targeted
        self.last_stats: AttackStats | None = None
        self._stats = AttackStats()
        self._labels: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_attack_inputs(x, y)
        x, y = x.detach(), y.detach()
        self._stats, self._labels = AttackStats(), y
        with eval_mode(self.model):
            synchronize(x.device)  # wall time of the attack's kernels, not of their launch
            start = time.perf_counter()
            x_adv = self.perturb(x, y).detach()
            synchronize(x.device)
            self._stats.elapsed_s = time.perf_counter() - start
            if self.verify:
                with torch.no_grad():
                    self._stats.success = is_adversarial(self.model(x_adv), y, self.targeted)
        self.last_stats, self._labels = self._stats, None
        return x_adv

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack proper on checked inputs, run in eval mode; returns x_adv in [0, 1]."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """A counted forward pass; the first one of a call checks the logits' shape and labels."""
        out = self.model(x)
        if self._stats.forwards == 0:
            labels = self._labels if self._labels is not None else torch.zeros(len(x), dtype=torch.long,
                                                                               device=out.device)
            check_logits(out, labels)
        self._stats.forwards += 1
        return out

    def input_grad(self, loss: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """A counted backward pass: d loss / d inputs, leaving the model's parameters' .grad alone."""
        (grad,) = torch.autograd.grad(loss, [inputs])
        self._stats.backwards += 1
        return grad

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in ("model", "last_stats", "verify"))
        return f"{type(self).__name__}({hp})"
