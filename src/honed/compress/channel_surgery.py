"""Physical channel removal for conv nets: the export step of GDP (Guo et al., "GDP: Stabilized Neural
Network Pruning via Gates with Differentiable Polarization", arXiv:2109.02220), reusable by any
structured pruner that decides which channels to keep.

The channels a network can lose are described as :class:`ChannelGroup` s, found by tracing the model
with torch.fx (:func:`~honed.compress.channel_trace.find_channel_groups`; residual additions and
multiplications couple groups, concatenations place them side by side). A group is written by
*producers* (a conv and the BatchNorm right after it; a depthwise conv or BatchNorm applied to it
later) and read by *consumers* (convs, or a Linear after a flatten). Channels of a group are kept or
removed together, so every tensor that mixes them stays shape-consistent.

Removing a channel deletes the producers' output filters (+ BN entries) and the matching input slice
of every consumer; a per-channel scale (e.g. GDP's gates) folds into each producer's BN affine
parameters, or into the conv itself when there is no BN.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from honed.compress.channel_trace import (ChannelGroup, ChannelTrace, Consumer, Producer, eval_mode,
                                          find_channel_groups, positions_of, trace_channels)
from honed.core.errors import InputError
from honed.core.loop import model_device
from honed.core.seed import draw_device

__all__ = ["ChannelGroup", "ChannelTrace", "Consumer", "LayerCost", "Producer", "channel_importance", "positions_of",
           "find_channel_groups", "fold_channel_scale", "keep_top", "layer_costs", "macs_from_counts",
           "remove_channels", "round_keep_down", "trace_channels", "uniform_keep_for_macs"]


# ----------------------------------------------------------------------------- MACs from counts

@dataclass(frozen=True)
class LayerCost:
    """MACs of a conv/Linear per (input channel, output channel) pair, summed over its calls; its
    input width is ``fixed_in`` plus the widths of ``in_groups``, its output width ``fixed_out``
    plus those of ``out_groups`` (group indices). A depthwise conv counts as 1 input per output."""

    layer: str
    macs_per_pair: int
    in_groups: tuple[int, ...]
    out_groups: tuple[int, ...]
    fixed_in: int
    fixed_out: int


def _positions_per_call(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Per Conv2d / Linear, output positions per example summed over its calls (H_out*W_out for a
    conv, rows for a Linear), from one forward of ``example[:1]`` in eval mode (modes restored)."""
    layers = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    sizes = dict.fromkeys(layers.values(), 0)

    def count(module, _inputs, out):
        per = out[0, 0].numel() if isinstance(module, nn.Conv2d) else out[0].numel() // module.out_features
        sizes[layers[module]] += per

    handles = [m.register_forward_hook(count) for m in layers]
    try:
        with eval_mode(model), torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and 1 < conv.groups == conv.in_channels == conv.out_channels


@torch.no_grad()
def layer_costs(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor) -> list[LayerCost]:
    """Per-layer MACs per channel pair of every Conv2d/Linear, from one forward of ``example``
    (shape (1, ...)): conv k_h*k_w*H_out*W_out, Linear its rows (times features per channel)."""
    sizes = _positions_per_call(model, example)
    reads: dict[str, list[int]] = {}
    writes: dict[str, list[int]] = {}
    features: dict[str, int] = {}
    for i, group in enumerate(groups):
        for producer in group.producers:
            writes.setdefault(producer.layer, []).append(i)
        for consumer in group.consumers:
            reads.setdefault(consumer.layer, []).append(i)
            features[consumer.layer] = consumer.features_per_channel
    costs = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        ins, outs = tuple(reads.get(name, ())), tuple(writes.get(name, ()))
        width = lambda idx: sum(groups[i].channels for i in idx)  # noqa: E731
        if isinstance(module, nn.Conv2d):
            per_pair = module.kernel_size[0] * module.kernel_size[1] * sizes[name]
            fixed_in = 1 if _is_depthwise(module) else module.in_channels // module.groups - width(ins)
            fixed_out = module.out_channels - width(outs)
        else:
            f = features.get(name, 1)
            per_pair, fixed_in, fixed_out = f * sizes[name], module.in_features // f - width(ins), module.out_features
        costs.append(LayerCost(name, per_pair, ins, outs if isinstance(module, nn.Conv2d) else (), fixed_in, fixed_out))
    return costs


def macs_from_counts(costs: list[LayerCost], counts):
    """GDP's bilinear FLOPs model (arXiv:2109.02220): sum over layers of macs_per_pair * n_in * n_out,
    where a layer's n adds ``counts[group]`` of its groups to its fixed width (ints for hard counts,
    tensors for the smoothed-L0 surrogate)."""
    total = 0
    for cost in costs:
        n_in = cost.fixed_in + sum(counts[g] for g in cost.in_groups)
        n_out = cost.fixed_out + sum(counts[g] for g in cost.out_groups)
        total = total + cost.macs_per_pair * n_in * n_out
    return total


# ----------------------------------------------------------------------------- folding and removal

@torch.no_grad()
def fold_channel_scale(model: nn.Module, group: ChannelGroup, scale: torch.Tensor) -> None:
    """Multiply the group's channels by ``scale`` (shape (channels,)) at every producer, in place:
    into the BN affine (gamma, beta) of its norm or of a BatchNorm producer, or into the conv's weight
    and bias. Exact for any sign of ``scale`` when the scale acts at the producers' outputs (as GDP's
    gates do)."""
    if scale.shape != (group.channels,):
        raise InputError(f"scale for group '{group.name}' must have shape ({group.channels},), got {tuple(scale.shape)}")
    for producer in group.producers:
        target = model.get_submodule(producer.site)
        index = torch.tensor(positions_of(producer, group.channels), device=target.weight.device)
        s = scale.to(target.weight)
        rows = target.weight.index_select(0, index) * s.view(-1, *([1] * (target.weight.dim() - 1)))
        target.weight.index_copy_(0, index, rows)
        if target.bias is not None:  # a bias-free conv is scaled through its weight alone
            target.bias.index_copy_(0, index, target.bias.index_select(0, index) * s)


def _slice_param(module: nn.Module, attr: str, index: torch.Tensor, dim: int) -> None:
    tensor = getattr(module, attr)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:
        setattr(module, attr, new)


def _shrink_outputs(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep output channels ``keep`` of a conv (a depthwise conv's inputs too) or a BatchNorm2d."""
    if isinstance(module, nn.BatchNorm2d):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(module, attr, keep, 0)
        module.num_features = len(keep)
        return
    depthwise = _is_depthwise(module)
    _slice_param(module, "weight", keep, 0)
    _slice_param(module, "bias", keep, 0)
    module.out_channels = len(keep)
    if depthwise:
        module.in_channels = module.groups = len(keep)


def _shrink_inputs(module: nn.Module, keep: torch.Tensor, features: int) -> None:
    """Keep input channels ``keep`` of a conv, or their ``features`` columns each of a Linear."""
    if isinstance(module, nn.Conv2d):
        _slice_param(module, "weight", keep, 1)
        module.in_channels = len(keep)
        return
    columns = (keep.view(-1, 1) * features + torch.arange(features).view(1, -1)).flatten()
    _slice_param(module, "weight", columns, 1)
    module.in_features = len(columns)


def _check_keep(groups: list[ChannelGroup], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    by_name = {g.name: g for g in groups}
    checked = {}
    for name, index in keep.items():
        if name not in by_name:
            raise InputError(f"unknown channel group '{name}'; groups: {', '.join(by_name)}")
        channels = by_name[name].channels
        index = torch.as_tensor(index, dtype=torch.long).flatten().cpu()
        if len(index) == 0 or index.min() < 0 or index.max() >= channels or len(index.unique()) != len(index):
            raise InputError(f"keep-set of group '{name}' must hold 1..{channels} distinct indices "
                             f"in [0, {channels}), got {index.tolist()}")
        checked[name] = index.sort().values
    return checked


def _removed_positions(groups: list[ChannelGroup], keep: dict[str, torch.Tensor]):
    """Per layer the output positions and (input positions, features) to remove."""
    outputs: dict[str, set[int]] = {}
    inputs: dict[str, tuple[set[int], int]] = {}
    for group in groups:
        if group.name not in keep:
            continue
        gone = sorted(set(range(group.channels)) - set(keep[group.name].tolist()))
        for producer in group.producers:
            pos = positions_of(producer, group.channels)
            for layer in filter(None, (producer.layer, producer.norm)):
                outputs.setdefault(layer, set()).update(pos[i] for i in gone)
        for consumer in group.consumers:
            pos = positions_of(consumer, group.channels)
            inputs.setdefault(consumer.layer, (set(), consumer.features_per_channel))[0].update(pos[i] for i in gone)
    return outputs, inputs


def _out_width(module: nn.Module) -> int:
    return module.num_features if isinstance(module, nn.BatchNorm2d) else module.out_channels


def _in_width(module: nn.Module, features: int) -> int:
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features // features


def remove_channels(model: nn.Module, groups: list[ChannelGroup], keep: dict[str, torch.Tensor]) -> nn.Module:
    """Physically remove channels in place: for each group named in ``keep`` (distinct int indices of
    channels to keep, at least one), slice every producer's filters and BN entries and every
    consumer's input slice. ``groups`` must describe ``model`` as it is now (they go stale after).
    Every keep-set is checked before anything changes. Returns ``model`` (now smaller and faster)."""
    keep = _check_keep(groups, keep)
    outputs, inputs = _removed_positions(groups, keep)
    for layer, gone in outputs.items():
        module = model.get_submodule(layer)
        _shrink_outputs(module, torch.tensor([i for i in range(_out_width(module)) if i not in gone], dtype=torch.long))
    for layer, (gone, features) in inputs.items():
        module = model.get_submodule(layer)
        kept = [i for i in range(_in_width(module, features)) if i not in gone]
        _shrink_inputs(module, torch.tensor(kept, dtype=torch.long), features)
    for group in groups:
        if group.name in keep:
            group.channels = len(keep[group.name])
    return model


def round_keep_down(keep: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
                    block: int) -> dict[str, torch.Tensor]:
    """Keep-sets cut down to kernel-friendly widths: each set of at least ``block`` channels keeps its
    ``block * (len // block)`` highest-``scores`` members (sorted indices), narrower sets stay as they
    are. A pruning OPTION (it removes channels the pruner kept), reported beside a claim, never its
    default. ``scores[name]``: one score per channel of the group (e.g. |gate|)."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise InputError(f"block must be an integer >= 1, got {block!r}")
    out = {}
    for name, index in keep.items():
        index = torch.as_tensor(index, dtype=torch.long).flatten().cpu()
        if name not in scores:
            raise InputError(f"no scores for channel group '{name}'")
        if len(index) < block:
            out[name] = index.sort().values
            continue
        strength = torch.as_tensor(scores[name]).detach().flatten().cpu()[index]
        out[name] = index[strength.topk(len(index) // block * block).indices].sort().values
    return out


# ----------------------------------------------------------------------------- magnitude baseline

@torch.no_grad()
def channel_importance(model: nn.Module, group: ChannelGroup, kind: str = "l1",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """L1-norm filter importance (Li et al., arXiv:1608.08710): per channel, the sum over the group's
    producing convs (``groups=1``) of the L1 norm of its filter; ``kind="random"`` draws uniform scores
    instead. Returns (C,) scores on the model's device."""
    device = model_device(model)
    if kind == "random":
        return torch.rand(group.channels, generator=generator, device=draw_device(generator, device)).to(device)
    if kind != "l1":
        raise InputError(f"importance must be 'l1' or 'random', got {kind!r}")
    score = torch.zeros(group.channels, device=device)
    for producer in group.producers:
        layer = model.get_submodule(producer.layer)
        if isinstance(layer, nn.Conv2d) and layer.groups == 1:
            weight = layer.weight.detach().index_select(0, torch.tensor(positions_of(producer, group.channels),
                                                                        device=layer.weight.device))
            score += weight.abs().flatten(1).sum(1).to(device)
    return score


def keep_top(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Per group keep the ceil(fraction * C) highest-scoring channels (at least one)."""
    keep = {}
    for name, score in scores.items():
        k = max(1, min(len(score), math.ceil(fraction * len(score) - 1e-9)))
        keep[name] = torch.topk(score, k).indices.sort().values
    return keep


def uniform_keep_for_macs(scores: dict[str, torch.Tensor], groups: list[ChannelGroup], costs: list[LayerCost],
                          macs_budget: float, steps: int = 40) -> dict[str, torch.Tensor]:
    """The largest uniform keep fraction whose pruned network needs at most ``macs_budget`` MACs
    (bisection), and its keep-sets: the equal-MACs setting for magnitude/random baselines."""
    def macs(fraction: float) -> int:
        keep = keep_top(scores, fraction)
        return macs_from_counts(costs, [len(keep[g.name]) for g in groups])

    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(mid) <= macs_budget else (lo, mid)
    return keep_top(scores, lo)
