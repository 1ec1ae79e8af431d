"""Robust Scratch Tickets and the Random RST Switch (Fu et al., Drawing Robust Scratch Tickets:
Subnetworks with Inborn Robustness Are Found within Randomly Initialized Networks, NeurIPS 2021,
arXiv:2110.14068), built on edge-popup (What's Hidden in a Randomly Weighted Neural Network?,
arXiv:1911.13299).

* :class:`SubnetLinear` / :class:`SubnetConv2d`: a layer with FROZEN random weights ``W`` (a buffer,
  never a parameter) and a same-shaped real score tensor ``S`` (the only parameter). The forward
  weight is ``W * top_k(|S|)``: the ``n - int((1 - k) n)`` entries of largest ``|S|`` are kept
  (``k`` = ``keep_ratio``, the fraction KEPT). The backward is a straight-through estimator:
  ``dL/dS = dL/d(mask)``.
* :func:`search_ticket`: adversarial mask search, min over the mask of max over an L-inf PGD
  perturbation of the cross-entropy, SGD on the scores only.
* :class:`Ticket`, :func:`extract_ticket`, :func:`apply_ticket`: a found subnetwork = per-layer
  boolean masks + the running statistics of the network's non-affine BatchNorms.
* :func:`to_subnet`: a user's own MLP / CNN with its Linear and Conv2d layers made subnet layers.
* :class:`RandomTicketSwitch` (R2S): several tickets sharing one weight tensor; each forward uses one
  ticket drawn uniformly at random (per batch by default, or per input).
* :class:`EOTPGD`: the adaptive attack on R2S - PGD whose gradient is the exact expectation over the
  switch, i.e. the mean of the per-ticket gradients.

Inputs are images in [0, 1] (normalisation, if any, lives inside the model). Steps the card marks
reconstructed are named options: ``weight_init`` ("signed_constant" default, or "kaiming_normal").
"""
import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import model_device
from honed.core.seed import draw_device
from honed.robust.attacks.base import check_count, check_number
from honed.robust.attacks.gradient import PGD

WEIGHT_INITS = ("signed_constant", "kaiming_normal")
SWITCH_MODES = ("per_batch", "per_input")


def check_keep_ratio(keep_ratio: float) -> float:
    """Return ``keep_ratio`` as a float or raise InputError unless it lies in (0, 1]."""
    value = check_number(keep_ratio, "keep_ratio", strict=True)
    if value > 1:
        raise InputError(f"keep_ratio is the fraction of weights KEPT and must lie in (0, 1], got {keep_ratio!r}")
    return value


def top_k_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Edge-popup mask (arXiv:1911.13299, as used by RST arXiv:2110.14068): a bool tensor shaped
    like ``scores`` keeping the ``n - int((1 - k) n)`` entries of largest ``|scores|`` (ties by sort
    order). ``scores`` any shape with n >= 1 finite entries; ``keep_ratio`` k in (0, 1]."""
    keep_ratio = check_keep_ratio(keep_ratio)
    if not torch.isfinite(scores).all():
        raise InputError("scores contain NaN or inf")
    flat = scores.detach().abs().flatten()
    n_pruned = int((1 - keep_ratio) * flat.numel())
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[flat.argsort()[:n_pruned]] = False
    return mask.view_as(scores)


class _StraightThroughMask(torch.autograd.Function):
    """Forward: the given float top-k mask of |scores|; backward: the gradient passes unchanged to
    the scores (straight-through estimator)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _Subnet:
    """Shared pieces of the subnet layers: frozen weight buffer, score parameter, mask override."""

    keep_ratio: float
    fixed_mask: torch.Tensor | None

    def _init_subnet(self, keep_ratio: float, weight_init: str, generator: torch.Generator | None) -> None:
        if weight_init not in WEIGHT_INITS:
            raise InputError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        shape, device = self.weight.shape, self.weight.device
        fan_in = shape[1:].numel()
        std = math.sqrt(2.0) / math.sqrt(fan_in)  # Kaiming normal, ReLU gain, fan_in mode
        draw = draw_device(generator, device)  # on the generator's device, then moved to the layer's
        raw = torch.randn(shape, generator=generator, device=draw).to(device) * std
        frozen = raw.sign() * std if weight_init == "signed_constant" else raw
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform with a = sqrt(5)
        scores = ((2 * torch.rand(shape, generator=generator, device=draw) - 1) * bound).to(device)
        del self.weight
        self.register_buffer("weight", frozen)
        self.scores = nn.Parameter(scores)
        self.keep_ratio = check_keep_ratio(keep_ratio)
        self.fixed_mask = None

    def effective_weight(self) -> torch.Tensor:
        """``W * mask``: the pinned ticket's mask if one is set, else the STE top-k of |scores|."""
        if self.fixed_mask is not None:
            return self.weight * self.fixed_mask.to(self.weight.dtype)
        key = (self.scores._version, self.keep_ratio, self.scores.data_ptr())
        if getattr(self, "_mask_cache", (None, None))[0] != key:  # scores unchanged: reuse the top-k
            self._mask_cache = (key, top_k_mask(self.scores, self.keep_ratio).to(self.weight.dtype))
        return self.weight * _StraightThroughMask.apply(self.scores.abs(), self._mask_cache[1])

    def current_mask(self) -> torch.Tensor:
        """Bool mask of the forward pass right now (pinned mask, else top-k of |scores|)."""
        return self.fixed_mask.clone() if self.fixed_mask is not None else top_k_mask(self.scores, self.keep_ratio)


class SubnetLinear(_Subnet, nn.Linear):
    """RST / edge-popup linear layer (arXiv:2110.14068): x (N, in) -> (N, out) with weight
    ``W * top_k(|S|)``; W frozen (buffer), S trainable, no bias."""

    def __init__(self, in_features: int, out_features: int, keep_ratio: float = 0.1,
                 weight_init: str = "signed_constant", generator: torch.Generator | None = None,
                 device: str | torch.device | None = None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=False, device=device)
        self._init_subnet(keep_ratio, weight_init, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight())


class SubnetConv2d(_Subnet, nn.Conv2d):
    """RST / edge-popup conv layer (arXiv:2110.14068): x (N, C_in, H, W) -> (N, C_out, H', W') with
    weight ``W * top_k(|S|)``; W frozen (buffer), S trainable, no bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, keep_ratio: float = 0.1, weight_init: str = "signed_constant",
                 generator: torch.Generator | None = None, device: str | torch.device | None = None) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, bias=False, device=device)
        self._init_subnet(keep_ratio, weight_init, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), None)


def subnet_layers(network: nn.Module) -> dict[str, _Subnet]:
    """``{module name: layer}`` of every subnet layer of ``network`` (InputError when there is none)."""
    layers = {name: m for name, m in network.named_modules() if isinstance(m, _Subnet)}
    if not layers:
        raise InputError(f"{type(network).__name__} has no SubnetLinear/SubnetConv2d layer; convert a plain "
                         "model with to_subnet(model, keep_ratio) first")
    return layers


def set_keep_ratio(network: nn.Module, keep_ratio: float) -> None:
    """Use the same remaining ratio k for every subnet layer (the card's setting)."""
    keep_ratio = check_keep_ratio(keep_ratio)
    for layer in subnet_layers(network).values():
        layer.keep_ratio = keep_ratio


def scratch_mlp(in_features: int = 64, hidden: Sequence[int] = (512, 512), num_classes: int = 10,
                keep_ratio: float = 0.1, weight_init: str = "signed_constant", seed: int = 0,
                device: str | torch.device | None = None) -> nn.Sequential:
    """RST network (arXiv:2110.14068) as an MLP: x (N, in_features) in [0, 1] -> logits (N, classes).
    Subnet linear layers with non-affine BatchNorm + ReLU between them; ``seed`` fixes W and S (drawn
    by a CPU generator, so networks built with one seed share the same random weights on every device;
    ``device``: where the network lives, torch's default device when None)."""
    gen = torch.Generator().manual_seed(seed)
    widths, layers = [check_count(in_features, "in_features"), *hidden], []
    for a, b in zip(widths, widths[1:]):
        layers += [SubnetLinear(a, check_count(b, "hidden width"), keep_ratio, weight_init, gen, device),
                   nn.BatchNorm1d(b, affine=False, device=device), nn.ReLU()]
    layers.append(SubnetLinear(widths[-1], check_count(num_classes, "num_classes", 2), keep_ratio, weight_init,
                               gen, device))
    return nn.Sequential(*layers)


def to_subnet(model: nn.Module, keep_ratio: float = 0.1, weight_init: str = "signed_constant",
              seed: int = 0) -> nn.Module:
    """RST (arXiv:2110.14068) on a user's architecture: a deep copy of ``model`` in which every
    ``nn.Linear`` and ``nn.Conv2d`` (groups=1, dilation 1, square kernel/stride/padding, zero padding)
    is a :class:`SubnetLinear` / :class:`SubnetConv2d` with frozen weights and trainable scores.
    ``weight_init``: "signed_constant" / "kaiming_normal" draw fresh random weights (the card; ``seed``
    fixes them), "keep" freezes the layer's current weights. Biases are dropped (edge-popup layers have
    none); BatchNorms are kept as they are (the card's are non-affine). Any other conv is refused."""
    if weight_init not in (*WEIGHT_INITS, "keep"):
        raise InputError(f"weight_init must be one of {WEIGHT_INITS + ('keep',)}, got {weight_init!r}")
    check_keep_ratio(keep_ratio)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise InputError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to turn into a subnet")
    for name, m in layers:
        if isinstance(m, nn.Conv2d) and not (m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros"
                                             and not isinstance(m.padding, str)
                                             and all(len(set(v)) == 1 for v in (m.kernel_size, m.stride, m.padding))):
            raise InputError(f"conv '{name}' cannot become a SubnetConv2d (needs groups=1, dilation 1, square "
                             "kernel/stride/padding and zero padding)")
    gen, new = torch.Generator().manual_seed(seed), copy.deepcopy(model)
    init = "signed_constant" if weight_init == "keep" else weight_init
    for name, m in layers:
        device = m.weight.device
        if isinstance(m, nn.Linear):
            layer = SubnetLinear(m.in_features, m.out_features, keep_ratio, init, gen, device)
        else:
            layer = SubnetConv2d(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                                 keep_ratio, init, gen, device)
        if weight_init == "keep":
            layer.weight.copy_(m.weight.detach())
        parent, _, leaf = name.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, leaf, layer)
    return new


def frozen_weights(network: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every subnet layer's frozen weight W (to verify it never changes)."""
    return {name: layer.weight.detach().clone() for name, layer in subnet_layers(network).items()}


@dataclass
class Ticket:
    """A found scratch ticket (arXiv:2110.14068): ``masks`` {subnet layer name: bool tensor}, plus
    ``norm_stats`` {buffer name: tensor}, the running statistics of its non-affine BatchNorms (tickets
    of one network share W but each has its own statistics); ``keep_ratio`` k."""

    keep_ratio: float
    masks: dict[str, torch.Tensor]
    norm_stats: dict[str, torch.Tensor]

    def density(self) -> float:
        kept = sum(int(m.sum()) for m in self.masks.values())
        return kept / sum(m.numel() for m in self.masks.values())


def _norm_buffers(network: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in network.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for key in ("running_mean", "running_var"):
                out[f"{name}.{key}"] = getattr(module, key)
    return out


def extract_ticket(network: nn.Module) -> Ticket:
    """The ticket ``network`` computes now: top-k masks of its scores and its BN running stats."""
    layers = subnet_layers(network)
    ratios = {layer.keep_ratio for layer in layers.values()}
    return Ticket(min(ratios), {n: layer.current_mask() for n, layer in layers.items()},
                  {k: v.detach().clone() for k, v in _norm_buffers(network).items()})


def apply_ticket(network: nn.Module, ticket: Ticket | None) -> None:
    """Pin ``ticket``'s masks on ``network`` and load its BN statistics (``None`` un-pins the masks,
    returning to the top-k of the scores). InputError when a mask does not match a layer."""
    layers = subnet_layers(network)
    if ticket is None:
        for layer in layers.values():
            layer.fixed_mask = None
        return
    if set(ticket.masks) != set(layers):
        raise InputError(f"ticket masks name layers {sorted(ticket.masks)}, the network has {sorted(layers)}")
    for name, layer in layers.items():
        mask = ticket.masks[name]
        if mask.shape != layer.weight.shape or mask.dtype != torch.bool:
            raise InputError(f"ticket mask of '{name}' must be bool {tuple(layer.weight.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        layer.fixed_mask = mask.to(layer.weight.device)
    buffers = _norm_buffers(network)
    with torch.no_grad():
        for key, value in ticket.norm_stats.items():
            buffers[key].copy_(value)


def search_ticket(network: nn.Module, batches: Iterable, epochs: int, *,
                  attack: Callable[[nn.Module], Callable] | None = None, lr: float = 0.1,
                  momentum: float = 0.9, weight_decay: float = 5e-4, milestones: Sequence[float] = (0.5, 0.75),
                  parameters: Iterable[nn.Parameter] | None = None,
                  device: str | torch.device | None = None) -> list[float]:
    """RST search (arXiv:2110.14068): for each batch craft ``attack(network)(x, y)`` (PGD with the
    current mask, BN in eval mode; ``None`` = clean edge-popup), then SGD (lr, momentum 0.9, weight
    decay 5e-4 also on the scores) on the cross-entropy of the crafted batch, with BN in train mode.
    Only the scores move (``parameters`` overrides that, e.g. for dense adversarial training); the
    LR drops x0.1 at each fraction of ``epochs`` in ``milestones``. Returns the per-epoch mean loss.
    ``batches``: iterable of (x (N, ...) in [0, 1], y int64 (N,)), re-iterated per epoch, moved to
    ``device`` (default: the network's)."""
    epochs = check_count(epochs, "epochs")
    device = model_device(network) if device is None else torch.device(device)
    params = list(parameters) if parameters is not None else [l.scores for l in subnet_layers(network).values()]
    opt = torch.optim.SGD(params, lr=check_number(lr, "lr", strict=True), momentum=momentum,
                          weight_decay=weight_decay)
    steps = sorted({max(1, int(round(f * epochs))) for f in milestones})
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=0.1)
    crafter, history = (attack(network) if attack else None), []
    for epoch in range(epochs):
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        total, count = 0.0, 0
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            x_used = crafter(x, y) if crafter else x
            network.train()
            loss = F.cross_entropy(network(x_used), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(x), count + len(x)
        schedule.step()
        history.append(total / max(count, 1))
    network.eval()
    return history


class RandomTicketSwitch(nn.Module):
    """R2S, the Random RST Switch (arXiv:2110.14068): ``tickets`` found on ONE ``network`` (shared W);
    each forward classifies with a ticket drawn uniformly at random - one per batch
    (``switch="per_batch"``, default) or one per input (``"per_input"``). x as ``network`` expects
    (N, ...) in [0, 1] -> logits (N, C). ``generator`` seeds the draws; ``draw_counts[i]`` counts how
    often ticket i was used. :meth:`pinned` fixes one ticket (for attacks crafted on one candidate)."""

    def __init__(self, network: nn.Module, tickets: Sequence[Ticket], switch: str = "per_batch",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if len(tickets) < 1:
            raise InputError("RandomTicketSwitch needs at least one ticket")
        if switch not in SWITCH_MODES:
            raise InputError(f"switch must be one of {SWITCH_MODES}, got {switch!r}")
        self.network, self.tickets, self.switch = network, list(tickets), switch
        for ticket in self.tickets:
            apply_ticket(network, ticket)  # validates every ticket against the network
        apply_ticket(network, None)
        self.generator = generator
        self.draw_counts = [0] * len(self.tickets)
        self._pinned: int | None = None

    @property
    def num_tickets(self) -> int:
        return len(self.tickets)

    @contextmanager
    def pinned(self, index: int) -> Iterator["RandomTicketSwitch"]:
        """Within the block, every forward uses ticket ``index`` (no random draw)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_tickets:
            raise InputError(f"ticket index must be an int in [0, {self.num_tickets}), got {index!r}")
        previous, self._pinned = self._pinned, index
        try:
            yield self
        finally:
            self._pinned = previous

    def forward_ticket(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Logits of ticket ``index`` on x."""
        apply_ticket(self.network, self.tickets[index])
        try:
            return self.network(x)
        finally:
            apply_ticket(self.network, None)

    def _draw(self, n: int) -> torch.Tensor:
        choice = torch.randint(self.num_tickets, (n,), generator=self.generator,
                               device=draw_device(self.generator, "cpu"))
        for i in choice.tolist():
            self.draw_counts[i] += 1
        return choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pinned is not None:
            return self.forward_ticket(x, self._pinned)
        if self.switch == "per_batch":
            return self.forward_ticket(x, int(self._draw(1)))
        choice = self._draw(len(x)).to(x.device)
        out = None
        for i in choice.unique().tolist():
            rows = choice == i
            logits = self.forward_ticket(x[rows], i)
            out = logits.new_zeros(len(x), logits.shape[1]) if out is None else out
            out[rows] = logits
        return out


class EOTPGD(PGD):
    """Adaptive L-inf PGD against R2S (EOT, Synthesizing Robust Adversarial Examples,
    arXiv:1707.07397; R2S arXiv:2110.14068): the ascent direction is the EXACT expectation of the
    cross-entropy gradient over the uniform switch, i.e. the mean over all candidate tickets of the
    per-ticket gradient. ``model`` must be a :class:`RandomTicketSwitch`. x (N, ...) in [0, 1],
    y int64 (N,); returns x_adv in the eps-ball and [0, 1]."""

    def __init__(self, model: RandomTicketSwitch, *, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 10, random_start: bool = True, generator: torch.Generator | None = None,
                 targeted: bool = False) -> None:
        if not isinstance(model, RandomTicketSwitch):
            raise InputError(f"EOTPGD attacks a RandomTicketSwitch, got {type(model).__name__}")
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         generator=generator, targeted=targeted)

    def loss_grad(self, x_adv: torch.Tensor, y: torch.Tensor, transform=None) -> torch.Tensor:
        """Mean over tickets of d(+-CE summed over the batch)/dx at x_adv."""
        total = torch.zeros_like(x_adv)
        for i in range(self.model.num_tickets):
            with self.model.pinned(i):
                total += super().loss_grad(x_adv, y, transform)
        return total / self.model.num_tickets


__all__ = ["EOTPGD", "RandomTicketSwitch", "SubnetConv2d", "SubnetLinear", "Ticket", "apply_ticket",
           "extract_ticket", "frozen_weights", "scratch_mlp", "search_ticket", "set_keep_ratio", "subnet_layers",
           "top_k_mask"]
