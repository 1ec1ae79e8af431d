"""GDP: Gates with Differentiable Polarization for channel pruning (Guo et al., "GDP: Stabilized Neural
Network Pruning via Gates with Differentiable Polarization", ICCV 2021, arXiv:2109.02220).

A per-channel gate g is trained jointly with the weights under the smoothed L0 penalty
||g||_{0,eps} = sum_i g_i^2 / (g_i^2 + eps), weighted by the network's bilinear MACs model; as eps is
annealed the gates polarise (some reach exactly 0, the rest stay clearly away from 0). Zero-gated
channels are then physically removed and the surviving gates folded into the weights
(:mod:`honed.compress.channel_surgery`), so the exported network computes what the gated one did.

Placement (honed's choice, documented): one gate per channel group (see
:func:`~honed.compress.channel_surgery.find_channel_groups`), applied right after the BatchNorm of
every conv that writes the group, before the ReLU. All producers of a residual stream share one gate,
so residual additions stay consistent. For gates >= 0 this computes the same function as the card's
"gate before the consuming conv" (ReLU commutes with a non-negative scale); unlike it, folding into the
BN affine is exact for any sign. Steps the card marks (R) are options of :class:`GDPSchedule`.

Typical use::

    gdp = GDP(model, example=x[:1], schedule=GDPSchedule(target_macs=0.5))
    opt = torch.optim.SGD([{"params": gdp.weight_parameters(), "weight_decay": 5e-4},
                           {"params": gdp.gate_parameters(), "weight_decay": 0.0}], lr=0.05, momentum=0.9)
    train(model, batches, opt, epochs, loss_fn=gdp.loss(F.cross_entropy), callbacks=[gdp.callback()])
    gdp.enforce_target()         # only if the step budget ended above the MACs target
    pruned = gdp.export()        # a new, physically smaller model; ``model`` keeps its gates
"""
import copy
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from honed.compress.channel_surgery import (ChannelGroup, find_channel_groups, fold_channel_scale, layer_costs,
                                            macs_from_counts, remove_channels)
from honed.core.errors import ConfigError, InputError
from honed.core.loop import Callback, TrainState


class ChannelGate(nn.Module):
    """GDP (arXiv:2109.02220) gate vector g of shape (C,): multiplies (N, C, H, W) maps channel-wise.
    Initialised to ``init`` (card: 1, marked (R))."""

    def __init__(self, channels: int, init: float = 1.0, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if channels < 1:
            raise InputError(f"a gate needs at least one channel, got {channels}")
        self.gate = nn.Parameter(torch.full((channels,), float(init), device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != len(self.gate):
            raise InputError(f"gate expects (N, {len(self.gate)}, H, W) maps, got {tuple(x.shape)}")
        return x * self.gate.view(1, -1, 1, 1)


class Gated(nn.Module):
    """``gate(inner(x))``: a BatchNorm2d (or Identity/conv) followed by a shared :class:`ChannelGate`
    (GDP, arXiv:2109.02220). Inserted by :class:`GDP`; removed again by :meth:`GDP.export`."""

    def __init__(self, inner: nn.Module, gate: ChannelGate) -> None:
        super().__init__()
        self.inner, self.gate = inner, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.inner(x))


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
      surviving gates (smallest |g| / max|g| of their group) until it does.
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

    def eps_at(self, step: int, total_steps: int) -> float:
        """Geometric anneal of eps: eps_start at step 0, eps_end from anneal_fraction*total on."""
        span = max(1.0, self.anneal_fraction * total_steps)
        t = min(1.0, step / span)
        return self.eps_start * (self.eps_end / self.eps_start) ** t


class GDP:
    """GDP channel pruning (arXiv:2109.02220) attached to ``model`` (modified in place: gates are
    inserted after the BN of every prunable conv).

    ``example``: one input (1, C, H, W) of the size the model will see, used to count MACs.
    Supported models: those of :func:`~honed.compress.channel_surgery.find_channel_groups`
    (InputError naming the layer otherwise).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, schedule: GDPSchedule = GDPSchedule(),
                 device: str | torch.device = "cpu") -> None:
        self.model, self.schedule = model, schedule
        self.groups: list[ChannelGroup] = find_channel_groups(model)
        if not self.groups:
            raise InputError(f"{type(model).__name__} has no prunable channel group")
        self.costs = layer_costs(model, self.groups, example.to(device))
        self.dense_macs = macs_from_counts(self.costs, [g.channels for g in self.groups])
        self.gates = [ChannelGate(g.channels, schedule.gate_init, device) for g in self.groups]
        for group, gate in zip(self.groups, self.gates):
            for producer in group.producers:
                _replace(model, producer.norm or producer.conv, lambda inner, gate=gate: Gated(inner, gate))
        self.lam, self.eps = schedule.lambda_init, schedule.eps_start
        self.trace: dict[str, list[float]] = {"lambda": [], "eps": [], "hard_macs_fraction": [],
                                              "soft_macs_fraction": []}

    # -- parameters and measurements
    def gate_parameters(self) -> list[nn.Parameter]:
        return [g.gate for g in self.gates]

    def weight_parameters(self) -> list[nn.Parameter]:
        gate_ids = {id(p) for p in self.gate_parameters()}
        return [p for p in self.model.parameters() if id(p) not in gate_ids]

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

    def loss(self, task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        """``(logits, y) -> task_loss + lambda * R(g)`` for :func:`honed.core.loop.train`."""
        def gdp_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return task_loss(logits, y) + self.lam * self.regularizer()

        return gdp_loss

    def callback(self) -> "GDPCallback":
        return GDPCallback(self)

    # -- the schedule (called by GDPCallback)
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

    @torch.no_grad()
    def enforce_target(self) -> int:
        """If the hard MACs exceed F* (and ``schedule.enforce_target``), zero the surviving gate of
        smallest |g| / max|g| of its group, one at a time (never a group's last), until they meet it.
        Returns how many gates were zeroed."""
        target, zeroed = self.schedule.target_macs * self.dense_macs, 0
        while self.schedule.enforce_target and self.hard_macs() > target:
            weakest = None
            for gi, (gate, mask) in enumerate(zip(self.gates, self.alive())):
                if int(mask.sum()) <= 1:
                    continue
                rel = (gate.gate.abs() / gate.gate.abs().max()).masked_fill(~mask, float("inf"))
                i = int(rel.argmin())
                if weakest is None or rel[i] < weakest[0]:
                    weakest = (float(rel[i]), gi, i)
            if weakest is None:
                break
            self.gates[weakest[1]].gate[weakest[2]] = 0.0
            zeroed += 1
        return zeroed

    # -- export
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
        pruned = copy.deepcopy(self.model)
        for module_name, module in list(pruned.named_modules()):
            if isinstance(module, Gated):
                _replace(pruned, module_name, lambda gated: gated.inner)
        groups = copy.deepcopy(self.groups)
        for group, gate in zip(groups, self.gates):
            fold_channel_scale(pruned, group, gate.gate.detach())
        return remove_channels(pruned, groups, self.keep_sets())


class GDPCallback(Callback):
    """Runs GDP's schedule inside :func:`honed.core.loop.train`: eps anneal per step, zero-crossing
    clamp after each step, the lambda update every ``lambda_every`` steps, a trace per epoch."""

    def __init__(self, gdp: GDP) -> None:
        self.gdp = gdp
        self._before: list[torch.Tensor] = []

    def on_step_start(self, state: TrainState) -> None:
        self.gdp.eps = self.gdp.schedule.eps_at(state.step, max(state.total_steps, 1))

    def before_step(self, state: TrainState) -> None:
        self._before = [g.gate.detach().clone() for g in self.gdp.gates]

    def after_step(self, state: TrainState) -> None:
        if self.gdp.schedule.zero_crossing_clamp:
            self.gdp.clamp_crossings(self._before, state.optimizer)
        if state.step % self.gdp.schedule.lambda_every == 0:
            self.gdp.update_lambda()

    def on_epoch_end(self, state: TrainState) -> None:
        trace = self.gdp.trace
        trace["lambda"].append(self.gdp.lam)
        trace["eps"].append(self.gdp.eps)
        trace["hard_macs_fraction"].append(self.gdp.hard_macs() / self.gdp.dense_macs)
        with torch.no_grad():
            trace["soft_macs_fraction"].append(float(self.gdp.soft_macs()) / self.gdp.dense_macs)


def _replace(model: nn.Module, name: str, build: Callable[[nn.Module], nn.Module]) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, build(getattr(parent, child)))
