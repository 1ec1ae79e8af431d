"""Force Regularization: pairwise attractive forces between the normalised filters of a layer, so the
filters gather in few principal directions and a later low-rank approximation (LRA, see
:mod:`honed.compress.lowrank`) keeps the same energy at a lower rank (Wen et al., "Coordinating
Filters for Faster Deep Neural Networks", arXiv:1703.09746).

A weight of shape (N, ...) with >= 2 axes is viewed as W (N, D), one filter w_i per row; tensors with
fewer axes (biases, BN) are never touched. With w^_i = w_i / ||w_i||:

    f_ji = (w^_j - w^_i) / ||w^_j - w^_i||^p           pull of filter j on filter i
    F_i  = sum_{j != i} f_ji,   F_i_perp = F_i - (F_i . w^_i) w^_i   (tangent to the unit sphere)
    delta_w_i = ||w_i|| F_i_perp

and the gradient becomes dE/dW - force_decay * force_mult * delta_W (weight decay is the optimizer's),
so a descent step moves each filter toward the others. ``force_type`` names p as the reference code
does: ``degradation`` p=0 (L2-norm force, the card's default), ``constant`` p=1 (L1-norm force),
``linear`` p=2, ``gravity`` p=3. Options of the reference solver: ``decay_type`` ``fixed`` (default) or
``adaptive`` (force term rescaled to norm force_decay * ||dE/dW|| per layer), ``direction`` ``all``
(default) or ``same`` (only force entries whose sign matches the error gradient's).

``force_scale``: ``sum`` (default) is the card's and the reference's plain sum over the other filters,
whose strength grows with the filter count N (up to N-fold once filters gather), so a ``force_decay``
chosen on a narrow layer is too strong on a wide one (on a 64/128-channel CNN on digits, 1e-3 collapsed
the ranks to 1). ``mean`` (an option the card does not have) divides F_i by the number of other live
filters M - 1, so F_i_perp is the pull toward the mean of the other filters, of norm at most 1 (p = 0)
whatever the width: one ``force_decay`` then suits layers of 16 or 512 filters, but it needs a decay
about N times larger than ``sum`` for the same pull. Choose ``force_decay`` on a validation split.

Use it in any loop with :func:`add_force_gradient` between ``loss.backward()`` and
``optimizer.step()``, or with honed's loop through the :class:`ForceRegularization` callback (which
also works alone in a plain loop: call ``after_backward()`` after each ``backward()``).
"""
from typing import Iterable, Literal

import torch
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import Callback, TrainState

GRAM_RESOLUTION = 1e-6  # distances below this are rounding noise of the float64 Gram form
FORCE_EXPONENTS = {"degradation": 0, "constant": 1, "linear": 2, "gravity": 3}
ForceType = Literal["degradation", "constant", "linear", "gravity"]
ForceScale = Literal["mean", "sum"]
DecayType = Literal["fixed", "adaptive"]
Direction = Literal["all", "same"]


def _check_options(force_type: str, decay_type: str = "fixed", direction: str = "all",
                   force_scale: str = "sum") -> None:
    if force_scale not in ("mean", "sum"):
        raise InputError(f"force_scale must be 'mean' or 'sum', got {force_scale!r}")
    if force_type not in FORCE_EXPONENTS:
        raise InputError(f"force_type must be one of {', '.join(FORCE_EXPONENTS)}, got {force_type!r}")
    if decay_type not in ("fixed", "adaptive"):
        raise InputError(f"decay_type must be 'fixed' or 'adaptive', got {decay_type!r}")
    if direction not in ("all", "same"):
        raise InputError(f"direction must be 'all' or 'same', got {direction!r}")


def _pairwise_resultant(unit: torch.Tensor, exponent: int, eps: float, chunk_size: int) -> torch.Tensor:
    """F_i = sum_j (u_j - u_i) / ||u_j - u_i||^p over pairs farther apart than eps; (M, D) for
    unit rows (M, D). Rows are processed ``chunk_size`` at a time: memory O(chunk_size * M).
    Distances come from float64 Gram matrices, ||u_j - u_i||^2 = 2 - 2 u_i.u_j, so pairs closer than
    max(eps, GRAM_RESOLUTION) count as coincident and are skipped like the pair (i, i)."""
    out = torch.empty_like(unit)
    unit64 = unit.double()
    floor = max(eps, GRAM_RESOLUTION)
    for start in range(0, len(unit), chunk_size):
        rows = unit64[start:start + chunk_size]
        dist = (2 - 2 * rows @ unit64.T).clamp_min(0).sqrt()
        pull = torch.where(dist > floor, dist.clamp_min(floor).pow(-exponent), torch.zeros_like(dist))
        out[start:start + chunk_size] = (pull @ unit64 - pull.sum(1, keepdim=True) * rows).to(unit.dtype)
    return out


def force_delta(weight: torch.Tensor, force_type: ForceType = "degradation", eps: float = 1e-8,
                chunk_size: int = 256, force_scale: ForceScale = "sum") -> torch.Tensor:
    """Force Regularization (arXiv:1703.09746), steps 1-3: delta_W = ||w_i|| * F_i_perp for a weight
    of shape (N, ...) with >= 2 axes (any float dtype/device); returns the same shape.
    ``force_scale="mean"`` divides F_i by M - 1, M the number of live filters (see the module note).

    Filters with ||w_i|| <= eps neither pull nor move (their row is 0). p = 0 uses the O(N D) form
    F_i_perp = S - (S . w^_i) w^_i with S the sum of all unit filters; p >= 1 sums pairwise forces,
    skipping pairs with ||w^_i - w^_j|| <= max(eps, 1e-6), in row chunks of ``chunk_size``.
    """
    _check_options(force_type, force_scale=force_scale)
    if not torch.is_tensor(weight) or weight.dim() < 2:
        raise InputError(f"force regularization needs a weight with >= 2 axes, got shape "
                         f"{tuple(getattr(weight, 'shape', ()))}")
    if not eps > 0 or chunk_size < 1:
        raise InputError(f"eps must be > 0 and chunk_size >= 1, got {eps} and {chunk_size}")
    matrix = weight.detach().reshape(weight.shape[0], -1)
    if not torch.isfinite(matrix).all():
        raise InputError("weight contains NaN or infinite entries")
    norms = matrix.norm(dim=1)
    alive = norms > eps
    delta = torch.zeros_like(matrix)
    if int(alive.sum()) < 2:
        return delta.reshape(weight.shape)
    unit = matrix[alive] / norms[alive, None]
    exponent = FORCE_EXPONENTS[force_type]
    if exponent == 0:
        resultant = unit.sum(0, keepdim=True) - len(unit) * unit
    else:
        resultant = _pairwise_resultant(unit, exponent, eps, chunk_size)
    tangent = resultant - (resultant * unit).sum(1, keepdim=True) * unit
    if force_scale == "mean":
        tangent = tangent / (len(unit) - 1)
    delta[alive] = norms[alive, None] * tangent
    return delta.reshape(weight.shape)


def force_gradient_term(weight: torch.Tensor, error_grad: torch.Tensor | None, force_decay: float,
                        force_type: ForceType = "degradation", decay_type: DecayType = "fixed",
                        direction: Direction = "all", eps: float = 1e-8,
                        force_scale: ForceScale = "sum") -> torch.Tensor:
    """Force Regularization (arXiv:1703.09746), step 4: the term added to the gradient of ``weight``
    (N, ...): -force_decay * delta_W ('fixed'); 'adaptive' rescales it to norm force_decay *
    ||error_grad||; direction 'same' zeroes entries whose sign differs from ``error_grad``'s.
    ``force_scale`` 'sum' (default, the reference) or 'mean', see the module note."""
    _check_options(force_type, decay_type, direction, force_scale)
    if not force_decay >= 0:
        raise InputError(f"force_decay must be >= 0, got {force_decay}")
    term = -force_decay * force_delta(weight, force_type, eps, force_scale=force_scale)
    if decay_type == "adaptive" or direction == "same":
        if error_grad is None:
            raise InputError(f"decay_type={decay_type!r}, direction={direction!r} need the error gradient")
        if direction == "same":
            term = term * (torch.sign(term) == torch.sign(error_grad))
        if decay_type == "adaptive":
            norm = term.norm()
            term = term * (force_decay * error_grad.norm() / norm) if norm > 0 else term
    return term


def force_parameters(model: nn.Module, layers: Iterable[str] | None = None) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of the layers to regularise: by default every parameter with >= 2 axes;
    with ``layers`` (module names, e.g. ``["features.3", "classifier.1"]``) their ``weight`` only.
    The card's authors leave the first conv, shortcut convs and the classifier out."""
    if layers is None:
        return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    modules = dict(model.named_modules())
    out = []
    for name in layers:
        weight = getattr(modules.get(name), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            raise InputError(f"layer '{name}' has no weight with >= 2 axes to regularise "
                             f"(found {type(modules.get(name)).__name__})")
        out.append((f"{name}.weight", weight))
    return out


def add_force_gradient(weights: nn.Module | Iterable[tuple[str, torch.Tensor]], force_decay: float = 1e-3,
                       force_type: ForceType = "degradation", decay_type: DecayType = "fixed",
                       direction: Direction = "all", multipliers: dict[str, float] | None = None,
                       eps: float = 1e-8, force_scale: ForceScale = "sum") -> dict[str, torch.Tensor]:
    """Force Regularization (arXiv:1703.09746): add the force term to ``.grad`` of each weight, in
    place; call it after ``loss.backward()`` and before ``optimizer.step()``.

    ``weights``: a model (every parameter with >= 2 axes) or (name, parameter) pairs, e.g. from
    :func:`force_parameters`. ``multipliers[name]`` is the card's per-layer ``force_mult`` (default 1;
    0 disables a layer). Weights without a gradient are skipped. Returns {name: term added}.
    ``force_scale``: 'mean' (default, strength independent of the filter count) or 'sum' (reference).
    """
    _check_options(force_type, decay_type, direction, force_scale)
    if not force_decay >= 0:
        raise InputError(f"force_decay must be >= 0, got {force_decay}")
    pairs = force_parameters(weights) if isinstance(weights, nn.Module) else list(weights)
    multipliers = multipliers or {}
    added = {}
    for name, weight in pairs:
        scale = force_decay * float(multipliers.get(name, 1.0))
        if weight.grad is None or scale == 0:
            continue
        term = force_gradient_term(weight, weight.grad, scale, force_type, decay_type, direction, eps,
                                   force_scale)
        weight.grad.add_(term)
        added[name] = term
    return added


class ForceRegularization(Callback):
    """Force Regularization (arXiv:1703.09746) as a callback of :func:`honed.core.loop.train`:
    ``after_backward`` adds the force term to the gradients of ``force_parameters(model, layers)``.

    Inside honed's loop with ghost batches (several backward passes per step) the term added after the
    previous chunk of the same step is taken back first, so every optimizer step sees exactly one force
    term, computed from the whole error gradient. Outside honed's loop (no ``on_step_start``), each
    ``after_backward()`` call simply adds the force once: in a plain loop call it after
    ``loss.backward()`` and before ``optimizer.step()``. Options as in :func:`add_force_gradient` (card
    defaults: p = 0 ``degradation``, ``fixed`` decay, ``all`` directions; ``force_scale`` 'mean').
    """

    def __init__(self, model: nn.Module, force_decay: float = 1e-3, force_type: ForceType = "degradation",
                 layers: Iterable[str] | None = None, decay_type: DecayType = "fixed",
                 direction: Direction = "all", multipliers: dict[str, float] | None = None,
                 eps: float = 1e-8, force_scale: ForceScale = "sum") -> None:
        _check_options(force_type, decay_type, direction, force_scale)
        if not force_decay >= 0:
            raise InputError(f"force_decay must be >= 0, got {force_decay}")
        self.weights = force_parameters(model, layers)
        self.options = dict(force_decay=force_decay, force_type=force_type, decay_type=decay_type,
                            direction=direction, multipliers=multipliers, eps=eps, force_scale=force_scale)
        self.added: dict[str, torch.Tensor] = {}
        self._in_step = False  # True between honed's on_step_start and after_step

    def on_step_start(self, state: TrainState) -> None:
        self.added, self._in_step = {}, True

    def after_backward(self, state: TrainState | None = None) -> None:
        """Add the force to the current gradients (taking back this step's earlier term in honed's loop)."""
        with torch.no_grad():
            if self._in_step:
                for name, weight in self.weights:
                    if name in self.added and weight.grad is not None:
                        weight.grad.sub_(self.added[name])
            self.added = add_force_gradient(self.weights, **self.options)

    def after_step(self, state: TrainState) -> None:
        self.added, self._in_step = {}, False
