"""SuperTickets: architecture search by progressive shrinking and progressive unstructured pruning in
ONE supernet training run (You et al., "SuperTickets: Drawing Task-Agnostic Lottery Tickets from
Supernets via Jointly Architecture Searching and Parameter Pruning", arXiv:2207.03677).

One :class:`SuperTickets` callback drives a :class:`honed.compress.supernet.SuperNet` through
``honed.core.loop.train`` (or your own loop: add :meth:`SuperTickets.penalty` to the loss, call
:meth:`SuperTickets.before_step` before ``optimizer.step()`` and :meth:`SuperTickets.end_epoch` after
each epoch):

1. NAS (network slimming, resource-aware): loss += rho(t) * sum_b pen_b * sum_j |gamma_j| over the
   BN_dw scales; rho ramps linearly from 0 (``epoch_free``) to ``rho`` (``epoch_warmup``), step-wise.
2. every ``nas_interval`` epochs: channels with |gamma_j| <= ``shrink_threshold`` are physically
   removed (bias-folded, :func:`honed.compress.supernet.shrink`).
3. progressive pruning (PP), after the shrink of the same epoch: every ``prune_interval`` epochs a
   global magnitude prune of all conv/linear weights (no bias, no BN) to
   ``min(prune_step * events, target_sparsity)``.
4. iterative reactivation (IR), option ``reactivation`` (R):
   ``"reset_at_next_event"`` (default): the mask gates training until the next event, which first
   resets it to 1 - pruned weights return with their pre-pruning values (they are frozen while
   masked: gradient, weight decay and optimizer state are gated) - and re-ranks all weights, so
   connectivity can change; ``"reset_after_event"``: the card's literal reading, the mask is reset
   right after each event (training is dense between events; the last event's mask is the ticket);
   ``"none"``: persistent nested masks (a pruned weight never returns; the ablation).
5. the ticket = the shrunk architecture + the mask of the last event, used without retraining.

Optimizers must be built WITHOUT weight decay: the L2 term (``weight_decay``) is added by hand to the
conv/linear weight gradients, gated by the mask.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F

from honed.compress.masks import Mask, check_sparsity, magnitude_prune, sparsity
from honed.compress.supernet import (SuperNet, channel_counts, get_mask, masked_layers, nas_penalty,
                                     penalty_weights, reset_mask, set_mask, shrink)
from honed.core.errors import ConfigError
from honed.core.loop import Callback, TrainState, model_device, train
from honed.core.measure import count_macs

REACTIVATION = ("reset_at_next_event", "reset_after_event", "none")


@dataclass(frozen=True)
class SuperTicketsSchedule:
    """Hyper-parameters of one SuperTickets run (card 03 defaults at digits scale; the ImageNet values
    are rho 1.8e-4, warm-up 25, NAS interval 10, prune interval 25 over 350 epochs).

    ``search=False`` disables NAS (pruning only); ``prune=False`` disables PP/IR (search only).
    """

    epochs: int = 30
    search: bool = True
    rho: float = 5e-3  # scaled up from 1.8e-4 so the net shrinks within 30 epochs (card)
    epoch_free: float = 0.0
    epoch_warmup: float = 5.0
    nas_interval: int = 2
    shrink_threshold: float = 1e-3
    shrink_min_macs: float = 0.0  # reference 1e6 MACs on ImageNet; the whole digits net is ~3e5
    prune: bool = True
    prune_interval: int = 3
    prune_step: float = 0.1
    target_sparsity: float = 0.9
    reactivation: Literal["reset_at_next_event", "reset_after_event", "none"] = "reset_at_next_event"
    weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.nas_interval < 1 or self.prune_interval < 1:
            raise ConfigError("epochs, nas_interval and prune_interval must be >= 1")
        if self.rho < 0 or self.weight_decay < 0 or self.shrink_threshold < 0 or self.shrink_min_macs < 0:
            raise ConfigError("rho, weight_decay, shrink_threshold and shrink_min_macs must be >= 0")
        if not 0 <= self.epoch_free <= self.epoch_warmup:
            raise ConfigError(f"need 0 <= epoch_free <= epoch_warmup, got {self.epoch_free}, {self.epoch_warmup}")
        if not 0 < self.prune_step <= 1:
            raise ConfigError(f"prune_step must lie in (0, 1], got {self.prune_step}")
        try:
            check_sparsity(self.target_sparsity)
        except ValueError as err:
            raise ConfigError(f"target_sparsity: {err}") from None
        if self.reactivation not in REACTIVATION:
            raise ConfigError(f"reactivation must be one of {', '.join(REACTIVATION)}, got {self.reactivation!r}")

    def rho_at(self, epoch: float) -> float:
        """rho(t) at fractional epoch ``t``: 0 before ``epoch_free``, linear ramp to ``rho`` at
        ``epoch_warmup``, then constant."""
        if epoch < self.epoch_free:
            return 0.0
        if epoch >= self.epoch_warmup:
            return self.rho
        return self.rho * (epoch - self.epoch_free) / (self.epoch_warmup - self.epoch_free)

    def sparsity_at(self, epoch: int) -> float | None:
        """Target sparsity of the pruning event at the end of 0-based ``epoch``, or None when that
        epoch has none: ``min(prune_step * floor((epoch + 1) / prune_interval), target_sparsity)``."""
        if not self.prune or (epoch + 1) % self.prune_interval:
            return None
        return min(round(self.prune_step * ((epoch + 1) // self.prune_interval), 12), self.target_sparsity)


@torch.no_grad()
def gate_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Zero the optimizer's per-weight state (momentum, Adam moments) at masked positions, so a
    pruned weight stays exactly where it was pruned."""
    for layer in masked_layers(model).values():
        state = optimizer.state.get(layer.weight, {})
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == layer.weight.shape:
                value.mul_(layer.weight_mask)


def revived_count(before: Mask, after: Mask) -> int:
    """Weights pruned in ``before`` and kept in ``after`` (same layers and shapes)."""
    return int(sum(int((after[k] & ~before[k]).sum()) for k in after if k in before))


@dataclass
class Trace:
    """Per-epoch log of a run (lists aligned by epoch) and the list of shrink/prune events."""

    channels: list[int] = field(default_factory=list)
    macs: list[int] = field(default_factory=list)
    sparsity: list[float] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)


class SuperTickets(Callback):
    """SuperTickets (arXiv:2207.03677): joint NAS (progressive shrinking) + progressive pruning with
    iterative reactivation inside one training run of a :class:`SuperNet` (see module docstring).

    ``example``: one input (1, C, H, W) used to count MACs. Use with ``honed.core.loop.train(model,
    data, optimizer, schedule.epochs, loss_fn=st.loss(), callbacks=[st])``; the optimizer must have
    ``weight_decay=0``. After training, ``model`` holds the ticket (shrunk, masks in its layers).
    """

    def __init__(self, model: SuperNet, schedule: SuperTicketsSchedule, steps_per_epoch: int,
                 example: torch.Tensor) -> None:
        if steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.model, self.schedule, self.steps_per_epoch = model, schedule, steps_per_epoch
        self.example = example[:1]
        self.weights = penalty_weights(model)
        self.current_rho = schedule.rho_at(0.0)
        self.plain_steps = 0  # optimizer steps seen by before_step() in a plain loop (no TrainState)
        self.ticket_mask: Mask | None = None
        self.trace = Trace()
        self.history: dict[str, list[float]] = {}

    # -- loss and step -------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """rho(t) * resource-weighted L1 of the BN_dw scales (0 when search is off)."""
        if not self.schedule.search or self.current_rho == 0.0:
            return torch.zeros((), device=self.example.device)
        return self.current_rho * nas_penalty(self.model, self.weights)

    def loss(self, base: Callable = F.cross_entropy) -> Callable:
        """``loss_fn(logits, y)`` for the loop: ``base(logits, y) + penalty()``."""
        return lambda logits, y: base(logits, y) + self.penalty()

    def on_step_start(self, state: TrainState) -> None:
        self.current_rho = self.schedule.rho_at(state.step / self.steps_per_epoch)

    @torch.no_grad()
    def before_step(self, state: TrainState | None = None) -> None:
        """Manual L2 on conv/linear weights, gated by the mask (pruned weights stay frozen). Called
        without a state (a plain loop), it also sets rho(t) for the next step."""
        if state is None:
            self.plain_steps += 1
            self.current_rho = self.schedule.rho_at(self.plain_steps / self.steps_per_epoch)
        wd = self.schedule.weight_decay
        for layer in masked_layers(self.model).values():
            if layer.weight.grad is not None:
                if wd:
                    layer.weight.grad.add_(layer.weight, alpha=wd)
                layer.weight.grad.mul_(layer.weight_mask)

    # -- events --------------------------------------------------------------------------------
    def on_epoch_end(self, state: TrainState) -> None:
        self.end_epoch(state.epoch, state.optimizer)

    def end_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Shrink (every ``nas_interval``), then prune (every ``prune_interval``), then log."""
        s = self.schedule
        if s.search and (epoch + 1) % s.nas_interval == 0:
            removed = shrink(self.model, s.shrink_threshold, s.shrink_min_macs, optimizer)
            if removed:
                self.weights = penalty_weights(self.model)
                self.trace.events.append({"epoch": epoch + 1, "kind": "shrink", "removed_macs": removed,
                                          "channels": channel_counts(self.model)})
        target = s.sparsity_at(epoch)
        if target is not None:
            self.prune_event(target, optimizer, last=epoch + 1 >= s.epochs)
        self.trace.channels.append(sum(channel_counts(self.model).values()))
        self.trace.macs.append(count_macs(self.model, self.example))
        self.trace.sparsity.append(sparsity(get_mask(self.model)))
        self.trace.rho.append(self.current_rho)

    def prune_event(self, target: float, optimizer: torch.optim.Optimizer | None, last: bool = False) -> Mask:
        """One PP step to ``target`` sparsity with this run's reactivation rule; returns the mask."""
        before = get_mask(self.model)
        if self.schedule.reactivation == "none":
            mask = magnitude_prune(self.model, target, current=before)
        else:
            reset_mask(self.model)  # IR: pruned weights return with their pre-pruning values
            mask = magnitude_prune(self.model, target)
        set_mask(self.model, mask)
        if optimizer is not None:
            gate_optimizer_state(optimizer, self.model)
        self.ticket_mask = mask
        self.trace.events.append({"kind": "prune", "sparsity": sparsity(mask), "target": target,
                                  "revived": revived_count(before, mask), "last": last})
        if self.schedule.reactivation == "reset_after_event" and not last:
            reset_mask(self.model)
        return mask

    def on_train_end(self, state: TrainState | None = None) -> None:
        """The ticket: under ``reset_after_event`` the last event's mask is put back."""
        if self.ticket_mask is not None and self.schedule.reactivation == "reset_after_event":
            set_mask(self.model, self.ticket_mask)


class _CosineLR(Callback):
    def on_train_start(self, state: TrainState) -> None:
        self.base = [g["lr"] for g in state.optimizer.param_groups]

    def on_step_start(self, state: TrainState) -> None:
        frac = state.step / max(state.total_steps, 1)
        for group, base in zip(state.optimizer.param_groups, self.base):
            group["lr"] = base * 0.5 * (1 + math.cos(math.pi * frac))


def train_supertickets(model: SuperNet, data: Iterable, schedule: SuperTicketsSchedule, example: torch.Tensor,
                       lr: float = 0.05, momentum: float = 0.9, device: str | torch.device | None = None,
                       evaluate: Callable | None = None, progress: bool = False) -> SuperTickets:
    """Run SuperTickets on ``model`` in place: SGD (``lr``, ``momentum``, no built-in weight decay),
    cosine lr over ``schedule.epochs``; ``data`` is an iterable of (x, y) batches with ``len`` (e.g.
    ``honed.data.Batches``), moved to ``device`` (default: the model's). Returns the :class:`SuperTickets`
    object (trace, ticket mask); the per-epoch ``evaluate(model)`` values land in ``result.history``."""
    if lr <= 0 or not 0 <= momentum < 1:
        raise ConfigError(f"need lr > 0 and momentum in [0, 1), got {lr}, {momentum}")
    device = model_device(model) if device is None else torch.device(device)
    tickets = SuperTickets(model, schedule, len(data), example.to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    tickets.history = train(model, data, optimizer, schedule.epochs, loss_fn=tickets.loss(),
                            callbacks=[_CosineLR(), tickets], device=device, evaluate=evaluate,
                            progress=progress, desc="supertickets")
    return tickets


def one_shot_prune(model: SuperNet, target_sparsity: float) -> Mask:
    """Search-then-prune baseline step: one global magnitude prune of all conv/linear weights of the
    (searched) supernet to ``target_sparsity`` in [0, 1), loaded into its layers; returns the mask."""
    mask = magnitude_prune(model, target_sparsity)
    set_mask(model, mask)
    return mask
