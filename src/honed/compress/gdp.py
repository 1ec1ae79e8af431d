"""GDP: Gates with Differentiable Polarization for channel pruning (Guo et al., "GDP: Stabilized Neural
Network Pruning via Gates with Differentiable Polarization", ICCV 2021, arXiv:2109.02220).

A per-channel gate g is trained jointly with the weights under the smoothed L0 penalty
||g||_{0,eps} = sum_i g_i^2 / (g_i^2 + eps), weighted by the network's bilinear MACs model; as eps is
annealed the gates polarise (some reach exactly 0, the rest stay clearly away from 0). Zero-gated
channels are then physically removed and the surviving gates folded into the weights
(:mod:`honed.compress.channel_surgery`), so the exported network computes what the gated one did.

Works on your own model: coupled channels (residual additions, concatenations, squeeze-excitation
products, flatten before a Linear) are found by tracing it with torch.fx
(:mod:`honed.compress.channel_trace`). Placement (honed's choice, documented): one gate per channel
group, multiplying the output of every layer that writes the group (after the BatchNorm of a conv,
or after the conv when it has none) through a forward hook; all writers of a residual stream share
one gate, so residual additions stay consistent. For gates >= 0 this computes the same function as
the card's "gate before the consuming conv" (ReLU commutes with a non-negative scale); unlike it,
folding into the BN affine is exact for any sign. The model's parameters and state_dict keys do not
change, and its optimizer never sees the gates: :meth:`GDP.step` trains them with their own SGD
(``GDPSchedule.gate_lr``), because one learning rate for weights and gates does not polarise.

Use it in a plain loop::

    gdp = GDP(model, example=x[:1], schedule=GDPSchedule(target_macs=0.5), steps=epochs * len(loader))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for x, y in loader:                       # every epoch
        loss = F.cross_entropy(model(x), y) + gdp.penalty()
        opt.zero_grad(); loss.backward(); opt.step()
        gdp.step()                            # gates, eps anneal, lambda update
    gdp.enforce_target()                      # warns if gates had to be zeroed to meet the target
    pruned = gdp.export()                     # a new, physically smaller model; ``model`` keeps its gates

or inside :func:`honed.core.loop.train` with ``loss_fn=gdp.loss(F.cross_entropy)`` and
``callbacks=[gdp.callback()]``. Steps the card marks (R) are options of :class:`GDPSchedule`.
"""
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from honed.compress.channel_surgery import (ChannelGroup, fold_channel_scale, layer_costs, macs_from_counts,
                                            remove_channels, trace_channels)
from honed.compress.gdp_gates import ChannelGate, GateAttachment, GateHook, attached_gates
from honed.core.errors import ConfigError, InputError, check_count
from honed.core.loop import Callback, TrainState

__all__ = ["GDP", "GDPCallback", "GDPSchedule", "ChannelGate", "GateHook", "smoothed_l0"]


def smoothed_l0(gate: torch.Tensor, eps: float) -> torch.Tensor:
    """GDP's smoothed L0 norm (arXiv:2109.02220): sum_i g_i^2 / (g_i^2 + eps), a scalar in [0, C).

    ``gate`` any shape (summed over all entries), ``eps > 0``. Tends to the count of non-zeros as
    eps -> 0; its gradient 2 eps g / (g^2 + eps)^2 is strong only near |g| ~ sqrt(eps)."""
    if eps <= 0 or not math.isfinite(eps):
        raise InputError(f"eps must be a positive finite number, got {eps}")
    if torch.isnan(gate).any():
        raise InputError("gate contains NaN")
    sq = gate * gate
    return (sq / (sq + eps)).sum()


@dataclass(frozen=True)
class GDPSchedule:
    """Hyper-parameters of GDP training (arXiv:2109.02220); (R) marks the card's reconstructions.

    target_macs: kept fraction of the dense MACs, F*/F_full, in (0, 1].
    regularizer: "flops" = bilinear MACs(g)/MACs(full) (resource-aware) or "sparsity" = mean over
      groups of ||g||_{0,eps}/C.
    eps_start, eps_end, anneal_fraction (R): eps decays geometrically from start to end over that
      fraction of the training steps, then stays at eps_end.
    lambda_init, lambda_lr, lambda_every (R): multiplier update every ``lambda_every`` steps,
      lambda <- max(0, lambda + lambda_lr * (MACs_smooth(g)/F* - 1)); it stops increasing once the hard
      count of non-zero gates meets F*.
    threshold (R): a gate counts as zero when |g| <= threshold * max|g| of its group.
    zero_crossing_clamp (R, honed's): an SGD step that carries a gate across 0 lands it exactly on 0
      (and clears its momentum), so polarised gates reach exact zeros despite a step size larger than
      sqrt(eps); every group keeps at least one channel (the card would remove the whole block).
    enforce_target (R, honed's): the paper trains until the hard count meets F*; with a fixed step
      budget, :meth:`GDP.enforce_target` (called by the user after training) zeroes the weakest
      surviving gates (smallest |g| / max|g| of their group) until it does, with a warning.
    gate_lr, gate_momentum (card step 5: gates trained by SGD without weight decay; the values are
      the setting of honed's experiment 28-gdp): the gates' own SGD, run by :meth:`GDP.step`. The
      penalty's gradient on a gate is small (R is a fraction of the dense MACs), so gates need a far
      larger step than weights to polarise within a short run.
    gate_init (R): the gates' initial value.
    """

    target_macs: float = 0.5
    regularizer: Literal["flops", "sparsity"] = "flops"
    eps_start: float = 1e-1
    eps_end: float = 1e-6
    anneal_fraction: float = 2 / 3
    lambda_init: float = 0.5
    lambda_lr: float = 0.05
    lambda_every: int = 1
    threshold: float = 1e-4
    zero_crossing_clamp: bool = True
    enforce_target: bool = True
    gate_lr: float = 1.0
    gate_momentum: float = 0.9
    gate_init: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.target_macs <= 1:
            raise ConfigError(f"target_macs must lie in (0, 1], got {self.target_macs}")
        if self.regularizer not in ("flops", "sparsity"):
            raise ConfigError(f"regularizer must be 'flops' or 'sparsity', got {self.regularizer!r}")
        if not 0 < self.eps_end <= self.eps_start:
            raise ConfigError(f"need 0 < eps_end <= eps_start, got {self.eps_end}, {self.eps_start}")
        if not 0 < self.anneal_fraction <= 1 or self.lambda_every < 1:
            raise ConfigError("anneal_fraction must lie in (0, 1] and lambda_every be >= 1")
        if self.lambda_init < 0 or self.lambda_lr < 0 or not 0 <= self.threshold < 1:
            raise ConfigError("lambda_init and lambda_lr must be >= 0, threshold in [0, 1)")
        if not self.gate_lr > 0 or not 0 <= self.gate_momentum < 1:
            raise ConfigError(f"gate_lr must be > 0 and gate_momentum in [0, 1), got {self.gate_lr}, "
                              f"{self.gate_momentum}")

    def eps_at(self, step: int, total_steps: int) -> float:
        """Geometric anneal of eps: eps_start at step 0, eps_end from anneal_fraction*total on."""
        span = max(1.0, self.anneal_fraction * total_steps)
        t = min(1.0, step / span)
        return self.eps_start * (self.eps_end / self.eps_start) ** t


class GDP:
    """GDP channel pruning (arXiv:2109.02220) attached to ``model`` (any model torch.fx can trace):
    gates are hooked onto the output of every layer writing a prunable channel group.

    ``example``: one input (1, C, H, W) of the size the model will see, used to trace and count MACs.
    ``steps``: how many times :meth:`step` will be called (for the eps anneal); inside
    :func:`honed.core.loop.train` the callback fills it in. ``device``: the gates' device (default:
    the model's). Channels that cannot be removed exactly stay, with the reason in ``self.frozen``;
    InputError when nothing can be pruned, or when the model already carries GDP gates.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, schedule: GDPSchedule = GDPSchedule(),
                 steps: int | None = None, device: str | torch.device | None = None) -> None:
        if not isinstance(schedule, GDPSchedule):
            raise ConfigError(f"schedule must be a GDPSchedule, got {type(schedule).__name__}")
        if steps is not None:
            check_count(steps, "steps")
        if attached_gates(model):
            raise InputError(f"the model already carries GDP gates (at {', '.join(attached_gates(model)[:3])}); "
                             "call remove() on the first GDP, or export() it, before attaching another")
        trace = trace_channels(model, example)
        if not trace.groups:
            why = "; ".join(f"'{k}': {v}" for k, v in trace.frozen.items())
            raise InputError(f"{type(model).__name__} has no channel group GDP can prune ({why})")
        self.model, self.schedule, self.steps, self.frozen = model, schedule, steps, trace.frozen
        self.groups: list[ChannelGroup] = trace.groups
        self.costs = layer_costs(model, self.groups, example)
        self.dense_macs = macs_from_counts(self.costs, [g.channels for g in self.groups])
        if device is None:
            device = next((p.device for p in model.parameters()), example.device)
        self._attachment = GateAttachment(model, self.groups, schedule.gate_init, torch.device(device))
        self.gates = self._attachment.gates
        self.gate_optimizer = torch.optim.SGD(self.gate_parameters(), lr=schedule.gate_lr,
                                              momentum=schedule.gate_momentum)
        self._attachment.attach()
        self.lam, self.eps, self.step_count = schedule.lambda_init, schedule.eps_start, 0
        self._last: list[torch.Tensor] | None = None  # gates after the last step (to spot outside updates)
        self.trace: dict[str, list[float]] = {"lambda": [], "eps": [], "hard_macs_fraction": [],
                                              "soft_macs_fraction": []}

    # -- parameters and measurements
    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates (trained by :meth:`step`; keep them out of your own optimizer)."""
        return [g.gate for g in self.gates]

    def weight_parameters(self) -> list[nn.Parameter]:
        """The model's own parameters (the gates are not among them)."""
        return list(self.model.parameters())

    def soft_counts(self, eps: float | None = None) -> list[torch.Tensor]:
        return [smoothed_l0(g.gate, self.eps if eps is None else eps) for g in self.gates]

    @torch.no_grad()
    def alive(self) -> list[torch.Tensor]:
        """Per group a bool mask of gates above the export threshold (|g| > threshold * max|g|)."""
        masks = []
        for gate in self.gates:
            mag = gate.gate.abs()
            masks.append(mag > self.schedule.threshold * mag.max().clamp_min(1e-30))
        return masks

    def hard_counts(self) -> list[int]:
        return [int(m.sum()) for m in self.alive()]

    def hard_macs(self) -> int:
        """MACs of the network exported now (hard gate counts in the bilinear model)."""
        return int(macs_from_counts(self.costs, self.hard_counts()))

    def soft_macs(self) -> torch.Tensor:
        return macs_from_counts(self.costs, self.soft_counts())

    def regularizer(self) -> torch.Tensor:
        """R(g) at the current eps: MACs(g)/MACs(full) ("flops") or mean ||g||_{0,eps}/C ("sparsity")."""
        if self.schedule.regularizer == "flops":
            return self.soft_macs() / self.dense_macs
        counts = self.soft_counts()
        return sum(n / g.channels for n, g in zip(counts, self.groups)) / len(self.groups)

    def penalty(self) -> torch.Tensor:
        """lambda * R(g): add it to your task loss before ``backward()``."""
        return self.lam * self.regularizer()

    def loss(self, task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        """``(logits, y) -> task_loss + lambda * R(g)`` for :func:`honed.core.loop.train`."""
        def gdp_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return task_loss(logits, y) + self.penalty()

        return gdp_loss

    def callback(self) -> "GDPCallback":
        return GDPCallback(self)

    # -- the schedule
    def step(self) -> None:
        """Call once after each ``optimizer.step()``: one SGD step of the gates on the gradient of the
        last backward, the zero-crossing clamp, the lambda update every ``lambda_every`` steps and the
        eps anneal. InputError (nothing changed) when ``steps`` is unknown or a gate gradient is not
        finite."""
        if self.steps is None:
            raise InputError("GDP does not know how many steps training has (needed for the eps anneal): "
                             "pass GDP(..., steps=N) with N the number of gdp.step() calls")
        grads = [g.grad for g in self.gate_parameters() if g.grad is not None]
        if any(not bool(torch.isfinite(g).all()) for g in grads):
            raise InputError("a gate gradient is NaN or inf (the loss was not finite); gates left unchanged")
        before = [g.gate.detach().clone() for g in self.gates]
        if self._last is not None and any(not torch.equal(a, b) for a, b in zip(before, self._last)):
            warnings.warn("GDP's gates changed between two gdp.step() calls: if they are in your optimizer, take "
                          "them out (GDP.step trains them with their own lr, schedule.gate_lr)", stacklevel=2)
        self.gate_optimizer.step()
        if self.schedule.zero_crossing_clamp:
            self.clamp_crossings(before, self.gate_optimizer)
        self.gate_optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        if self.step_count % self.schedule.lambda_every == 0:
            self.update_lambda()
        self.eps = self.schedule.eps_at(self.step_count, self.steps)
        self._last = [g.gate.detach().clone() for g in self.gates]

    def update_lambda(self) -> None:
        """lambda <- max(0, lambda + lr (MACs_smooth/F* - 1)); no increase once hard MACs meet F*."""
        target = self.schedule.target_macs * self.dense_macs
        with torch.no_grad():
            step = self.schedule.lambda_lr * (float(self.soft_macs()) / target - 1.0)
        if self.hard_macs() <= target:
            step = min(step, 0.0)
        self.lam = max(0.0, self.lam + step)

    @torch.no_grad()
    def clamp_crossings(self, before: list[torch.Tensor], optimizer: torch.optim.Optimizer | None) -> None:
        """Gates whose last step crossed 0 become exactly 0 (momentum cleared); a group that would
        lose every channel keeps its largest gate of before the step."""
        for gate, old in zip(self.gates, before):
            g = gate.gate
            crossed = (old * g < 0) | ((old != 0) & (g == 0))
            g[crossed] = 0.0
            buf = optimizer.state.get(g, {}).get("momentum_buffer") if optimizer is not None else None
            if buf is not None:
                buf[crossed | (g == 0)] = 0.0
            if not bool((g != 0).any()):
                i = int(old.abs().argmax())
                g[i] = old[i]

    def record(self) -> None:
        """Append lambda, eps and the hard / smoothed MACs fractions to ``self.trace``."""
        self.trace["lambda"].append(self.lam)
        self.trace["eps"].append(self.eps)
        self.trace["hard_macs_fraction"].append(self.hard_macs() / self.dense_macs)
        with torch.no_grad():
            self.trace["soft_macs_fraction"].append(float(self.soft_macs()) / self.dense_macs)

    def enforce_target(self) -> int:
        """If the hard MACs exceed F* (and ``schedule.enforce_target``), zero the surviving gate of
        smallest |g| / max|g| of its group, one at a time (never a group's last), until they meet it.
        Returns how many gates were zeroed, and warns when that is more than none: those channels
        had not polarised, so removing them costs accuracy."""
        zeroed = 0
        with torch.no_grad():
            while self.schedule.enforce_target and self.hard_macs() > self.schedule.target_macs * self.dense_macs:
                weakest = self._weakest_open_gate()
                if weakest is None:
                    break
                self.gates[weakest[0]].gate[weakest[1]] = 0.0
                zeroed += 1
        if zeroed:
            never = " (gdp.step() was never called, so the gates were not trained)" if self.step_count == 0 else ""
            warnings.warn(f"GDP.enforce_target zeroed {zeroed} of {sum(g.channels for g in self.groups)} channel "
                          f"gates that training had left open, to meet target_macs={self.schedule.target_macs}"
                          f"{never}; accuracy can drop: train longer, or raise gate_lr or lambda_lr so the gates "
                          "polarise", stacklevel=2)
        return zeroed

    def _weakest_open_gate(self) -> tuple[int, int] | None:
        """(group, channel) of the open gate of smallest |g| / max|g| in a group keeping > 1 channel."""
        weakest = None
        for gi, (gate, mask) in enumerate(zip(self.gates, self.alive())):
            if int(mask.sum()) <= 1:
                continue
            rel = (gate.gate.abs() / gate.gate.abs().max()).masked_fill(~mask, float("inf"))
            i = int(rel.argmin())
            if weakest is None or rel[i] < weakest[0]:
                weakest = (float(rel[i]), gi, i)
        return None if weakest is None else weakest[1:]

    # -- export and lifecycle
    @torch.no_grad()
    def keep_sets(self) -> dict[str, torch.Tensor]:
        """Per group the sorted indices of gates above the threshold (at least the largest one)."""
        keep = {}
        for group, mask, gate in zip(self.groups, self.alive(), self.gates):
            idx = torch.nonzero(mask).flatten().cpu()
            keep[group.name] = idx if len(idx) else gate.gate.abs().argmax().view(1).cpu()
        return keep

    @torch.no_grad()
    def export(self) -> nn.Module:
        """A new model without gates: zero-gated channels physically removed, the other gates folded
        into the BN affine (or conv) of their producers. ``self.model`` is left as it is."""
        with self._attachment.detached():
            pruned = copy.deepcopy(self.model)
        groups = copy.deepcopy(self.groups)
        for group, gate in zip(groups, self.gates):
            fold_channel_scale(pruned, group, gate.gate.detach())
        return remove_channels(pruned, groups, self.keep_sets())

    def remove(self) -> nn.Module:
        """Take the gates off ``self.model`` (weights untouched); returns it."""
        self._attachment.detach()
        return self.model

    def to(self, device: str | torch.device) -> "GDP":
        """Move the gates (and their optimizer state) to ``device``, e.g. after ``model.to(device)``."""
        self._last = None
        with torch.no_grad():
            for gate in self.gate_parameters():
                gate.data = gate.data.to(device)
                for key, value in self.gate_optimizer.state.get(gate, {}).items():
                    if torch.is_tensor(value):
                        self.gate_optimizer.state[gate][key] = value.to(device)
        return self

    def state_dict(self) -> dict:
        """GDP's own state (gates, lambda, eps, step count, gate optimizer, trace) for a checkpoint
        beside ``model.state_dict()``."""
        return {"gates": [g.detach().clone() for g in self.gate_parameters()], "lam": self.lam, "eps": self.eps,
                "step_count": self.step_count, "steps": self.steps, "trace": copy.deepcopy(self.trace),
                "gate_optimizer": self.gate_optimizer.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; InputError (nothing changed) when its gates do not fit."""
        keys = {"gates", "lam", "eps", "step_count", "steps", "trace", "gate_optimizer"}
        shapes = [tuple(g.shape) for g in self.gate_parameters()]
        if not isinstance(state, dict) or not keys <= set(state) or \
                [tuple(torch.as_tensor(g).shape) for g in state["gates"]] != shapes:
            raise InputError(f"GDP state must be a GDP.state_dict() with keys {sorted(keys)} and gates of "
                             f"shapes {shapes}")
        gates = state["gates"]
        for gate, value in zip(self.gate_parameters(), gates):
            gate.copy_(torch.as_tensor(value))
        self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        self.lam, self.eps = state["lam"], state["eps"]
        self.step_count, self.steps = state["step_count"], state["steps"]
        self._last = None
        self.trace = copy.deepcopy(state["trace"])


class GDPCallback(Callback):
    """Runs GDP's schedule inside :func:`honed.core.loop.train`: eps anneal per step, :meth:`GDP.step`
    after each optimizer step, a trace entry per epoch."""

    def __init__(self, gdp: GDP) -> None:
        self.gdp = gdp

    def on_train_start(self, state: TrainState) -> None:
        if self.gdp.steps is None:
            self.gdp.steps = max(state.total_steps, 1)

    def on_step_start(self, state: TrainState) -> None:
        self.gdp.eps = self.gdp.schedule.eps_at(state.step, self.gdp.steps)

    def after_step(self, state: TrainState) -> None:
        self.gdp.step()

    def on_epoch_end(self, state: TrainState) -> None:
        self.gdp.record()
