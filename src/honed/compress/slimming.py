"""Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
ICCV 2017, arXiv:1708.06519): an L1 penalty on the BatchNorm scales gamma during training, then the
channels with the smallest |gamma| are removed under one global threshold.

* :class:`BNScaleL1` - training callback adding the L1 subgradient ``lam * sign(gamma)`` to the grad
  of every BatchNorm2d weight after each backward (the reference's way of applying the penalty); in
  your own loop call :func:`add_bn_l1_subgradient` between ``backward()`` and ``optimizer.step()``.
* :func:`bn_importance` - per channel of a :class:`~honed.compress.channel_surgery.ChannelGroup`,
  |gamma| of its producers' BatchNorms (mean over producers: residual streams are written by several
  BNs, and the mean keeps their scores on the scale of single-BN groups for the global threshold).
* :func:`global_keep_for_macs` - one global threshold on the scores, the lowest whose kept channels
  fit a MACs budget (GDP's bilinear MACs model), each group keeping at least one channel.

Together with :func:`~honed.compress.channel_surgery.remove_channels` this gives the physically
slimmed network. Inputs: any model whose channel groups ``find_channel_groups`` finds (torch.fx traceable).
"""
import torch
from torch import nn

from honed.compress.channel_surgery import ChannelGroup, LayerCost, macs_from_counts, positions_of
from honed.core.errors import InputError, check_number
from honed.core.loop import Callback, TrainState


class BNScaleL1(Callback):
    """Network Slimming (arXiv:1708.06519) sparsity training: after each backward, grad(gamma) +=
    ``lam * sign(gamma)`` for every ``nn.BatchNorm2d`` weight of the model (paper: lam = 1e-4)."""

    def __init__(self, lam: float = 1e-4) -> None:
        self.lam = check_number(lam, "lam")

    def after_backward(self, state: TrainState) -> None:
        add_bn_l1_subgradient(state.model, self.lam)


@torch.no_grad()
def add_bn_l1_subgradient(model: nn.Module, lam: float) -> None:
    """grad(gamma) += lam * sign(gamma) for every BatchNorm2d weight (creating the grad if absent).
    Call it after ``loss.backward()`` in your own loop; ``lam`` a finite number >= 0."""
    check_number(lam, "lam")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.weight is not None and module.weight.requires_grad:
            if module.weight.grad is None:
                module.weight.grad = torch.zeros_like(module.weight)
            module.weight.grad.add_(torch.sign(module.weight), alpha=lam)


@torch.no_grad()
def bn_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """|gamma| per channel (shape (channels,)), mean over the group's BatchNorm2d producers (the BN
    after a conv, or a BN applied to the group further on), on the BN's device; InputError if it has
    none (Network Slimming needs BN scales)."""
    scores = []
    for producer in group.producers:
        norm = model.get_submodule(producer.site)
        if isinstance(norm, nn.BatchNorm2d):
            rows = torch.tensor(positions_of(producer, group.channels), device=norm.weight.device)
            scores.append(norm.weight.detach().index_select(0, rows).abs())
    if not scores:
        raise InputError(f"channel group '{group.name}' has no BatchNorm2d producer: no scale to slim")
    return torch.stack([s.to(scores[0].device) for s in scores]).mean(0)


def keep_above(scores: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """Per group the channels with score >= ``threshold`` (sorted); at least the top one."""
    keep = {}
    for name, score in scores.items():
        kept = torch.nonzero(score >= threshold).flatten()
        keep[name] = kept if len(kept) else score.argmax().view(1)
    return keep


def global_keep_for_macs(scores: dict[str, torch.Tensor], groups: list[ChannelGroup], costs: list[LayerCost],
                         macs_budget: float) -> dict[str, torch.Tensor]:
    """Network Slimming's global threshold (arXiv:1708.06519), set by the MACs budget: the lowest
    threshold among the score values whose keep-sets need at most ``macs_budget`` MACs (bisection over
    the sorted distinct scores; MACs grow as the threshold falls). ``scores`` maps group name ->
    (channels,) scores. If even one channel per group exceeds the budget, that minimum is returned."""
    if set(scores) != {g.name for g in groups}:
        raise InputError("scores must have one entry per channel group")

    def macs(threshold: float) -> float:
        keep = keep_above(scores, threshold)
        return macs_from_counts(costs, [len(keep[g.name]) for g in groups])

    values = torch.cat(list(scores.values())).unique().sort(descending=True).values.tolist()
    lo, hi = 0, len(values) - 1  # invariant: values[lo] fits (or lo == 0); find the last index that fits
    if macs(values[0]) > macs_budget:
        return keep_above(scores, values[0])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if macs(values[mid]) <= macs_budget else (lo, mid - 1)
    return keep_above(scores, values[lo])
