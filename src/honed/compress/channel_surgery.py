"""Physical channel removal for small conv nets: the export step of GDP (Guo et al., "GDP: Stabilized
Neural Network Pruning via Gates with Differentiable Polarization", arXiv:2109.02220), reusable by any
structured pruner that decides which channels to keep.

A network's prunable channels are described as :class:`ChannelGroup` s. A group is a set of channels
written by one or more *producers* (a conv and the BatchNorm right after it) and read by one or more
*consumers* (convs, or a Linear after a flatten). Channels of a group are kept or removed together,
so every tensor that mixes them stays shape-consistent:

- honed's ResNet-s: the channels of a stage's residual stream form ONE group (written by the stem or
  the stage's projection shortcut and by ``bn2`` of every block, read by ``conv1`` of each block,
  by the next projection shortcut and by the head) - residual additions keep a shared keep-set; each
  block's inner channels (``conv1``/``bn1`` -> ``conv2``) are their own group.
- honed's small CNN and plain ``nn.Sequential`` chains of Conv2d/BatchNorm2d/ReLU/pooling/Flatten/
  Linear: one group per conv whose output reaches a later conv or Linear.

Anything else (depthwise/grouped convs, GroupNorm, other model classes) raises one InputError naming
the layer. Removing a channel deletes the producer's output filter (+ BN entries) and the matching
input slice of every consumer; a per-channel scale (e.g. GDP's gates) folds into the producer's BN
affine parameters, or into the conv itself when there is no BN.
"""
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from honed.core.errors import InputError
from honed.core.measure import forward_with_hooks

PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class Producer:
    """A conv writing a group's channels; ``norm`` names the BatchNorm2d/Identity right after it."""

    conv: str
    norm: str | None = None


@dataclass(frozen=True)
class Consumer:
    """A conv or Linear reading a group's channels; a Linear after a flatten of (C, H, W) maps reads
    ``features_per_channel = H * W`` consecutive inputs per channel."""

    layer: str
    features_per_channel: int = 1


@dataclass
class ChannelGroup:
    """Channels kept or removed together: ``channels`` wide, written by ``producers``, read by
    ``consumers``."""

    name: str
    channels: int
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)


def _unsupported(name: str, module: nn.Module, why: str = "") -> InputError:
    return InputError(f"channel surgery cannot handle layer '{name}' ({type(module).__name__}{why}); "
                      "supported: Conv2d with groups=1, BatchNorm2d (affine), Linear, ReLU, pooling, "
                      "Flatten, Dropout in honed's resnet_s, cnn or an nn.Sequential chain")


def _check_conv(name: str, conv: nn.Module) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise _unsupported(name, conv)
    if conv.groups != 1:
        raise _unsupported(name, conv, f", groups={conv.groups}")


def _check_norm(name: str, norm: nn.Module) -> None:
    if isinstance(norm, nn.Identity):
        return
    if not isinstance(norm, nn.BatchNorm2d):
        raise _unsupported(name, norm)
    if not norm.affine or not norm.track_running_stats:
        raise _unsupported(name, norm, " without affine parameters or running statistics")


# ----------------------------------------------------------------------------- finding groups

def find_channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """GDP (arXiv:2109.02220) export support: the prunable channel groups of ``model``.

    Supports honed's ``ResNetS`` and ``SmallCNN`` and ``nn.Sequential`` chains; raises InputError
    naming the first layer it cannot handle (e.g. a depthwise conv or a GroupNorm)."""
    from honed.models.resnet_s import ResNetS
    from honed.models.small import SmallCNN

    if isinstance(model, ResNetS):
        return _resnet_groups(model)
    if isinstance(model, SmallCNN):
        leaves = _sequential_leaves(model.features, "features") + _sequential_leaves(model.classifier, "classifier")
        return _chain_groups(leaves)
    if isinstance(model, nn.Sequential):
        return _chain_groups(_sequential_leaves(model, ""))
    raise InputError(f"channel surgery cannot handle layer '<root>' ({type(model).__name__}): supported "
                     "models are honed's resnet_s, cnn and nn.Sequential chains")


def _sequential_leaves(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    leaves = []
    for key, module in seq.named_children():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(module, nn.Sequential):
            leaves += _sequential_leaves(module, name)
        else:
            leaves.append((name, module))
    return leaves


def _chain_groups(leaves: list[tuple[str, nn.Module]]) -> list[ChannelGroup]:
    """Walk a straight chain of layers; one group per conv whose channels reach a conv or Linear."""
    groups: list[ChannelGroup] = []
    current: ChannelGroup | None = None
    flattened, previous = False, None
    for name, module in leaves:
        if isinstance(module, nn.Conv2d):
            _check_conv(name, module)
            if flattened:
                raise _unsupported(name, module, " after Flatten")
            if current is not None:
                current.consumers.append(Consumer(name))
                groups.append(current)
            current = ChannelGroup(name, module.out_channels, [Producer(name)])
        elif isinstance(module, (nn.BatchNorm2d, nn.Identity)) and isinstance(previous, nn.Conv2d):
            _check_norm(name, module)
            current.producers[0] = Producer(current.producers[0].conv, name)
        elif isinstance(module, nn.Linear):
            if current is not None and flattened:
                if module.in_features % current.channels:
                    raise _unsupported(name, module, f", in_features {module.in_features} is not a "
                                       f"multiple of {current.channels} channels")
                current.consumers.append(Consumer(name, module.in_features // current.channels))
                groups.append(current)
            elif current is not None:
                raise _unsupported(name, module, " reading conv maps without Flatten")
            current = None
        elif isinstance(module, nn.Flatten):
            flattened = True
        elif not isinstance(module, PASS_THROUGH):
            raise _unsupported(name, module)
        previous = module
    return [g for g in groups if g.consumers]


def _resnet_groups(model: nn.Module) -> list[ChannelGroup]:
    """Stream groups (one per stage, residual-coupled) and one inner group per BasicBlock."""
    from honed.models.resnet_s import BasicBlock

    _check_resnet_modules(model)
    stream = ChannelGroup("stream0", model.stem[0].out_channels, [Producer("stem.0", "stem.1")])
    groups = [stream]
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            if not isinstance(block, BasicBlock):
                raise _unsupported(f"stages.{s}.{b}", block)
            prefix = f"stages.{s}.{b}"
            stream.consumers.append(Consumer(f"{prefix}.conv1"))
            if len(block.shortcut):
                stream.consumers.append(Consumer(f"{prefix}.shortcut.0"))
                stream = ChannelGroup(f"stream{s}" if b == 0 else f"stream{s}.{b}",
                                      block.conv2.out_channels,
                                      [Producer(f"{prefix}.shortcut.0", f"{prefix}.shortcut.1")])
                groups.append(stream)
            inner = ChannelGroup(f"{prefix}.inner", block.conv1.out_channels, [Producer(f"{prefix}.conv1", f"{prefix}.bn1")],
                                 [Consumer(f"{prefix}.conv2")])
            groups.append(inner)
            stream.producers.append(Producer(f"{prefix}.conv2", f"{prefix}.bn2"))
    stream.consumers.append(Consumer("head"))
    return groups


def _check_resnet_modules(model: nn.Module) -> None:
    from honed.models.resnet_s import BasicBlock, ResNetS

    allowed = (ResNetS, BasicBlock, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear)
    for name, module in model.named_modules():
        if not isinstance(module, allowed):
            raise _unsupported(name, module)
        if isinstance(module, nn.Conv2d):
            _check_conv(name, module)
        if isinstance(module, nn.BatchNorm2d):
            _check_norm(name, module)
    stem = list(model.stem)
    if len(stem) != 3 or not isinstance(stem[0], nn.Conv2d) or not isinstance(stem[1], nn.BatchNorm2d):
        raise _unsupported("stem", model.stem, ", expected Conv2d-BatchNorm2d-ReLU")


# ----------------------------------------------------------------------------- MACs from counts

@dataclass(frozen=True)
class LayerCost:
    """MACs of a conv/Linear per (input channel, output channel) pair; ``in_group``/``out_group``
    index the groups setting its widths (None: the layer's own fixed width)."""

    layer: str
    macs_per_pair: int
    in_group: int | None
    out_group: int | None
    fixed_in: int
    fixed_out: int


@torch.no_grad()
def layer_costs(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor) -> list[LayerCost]:
    """Per-layer MACs per channel pair of every Conv2d/Linear, from one forward of ``example``
    (shape (1, C, H, W)): conv k_h*k_w*H_out*W_out, Linear 1 (times features per channel)."""
    out_sizes: dict[str, int] = {}
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    forward_with_hooks(model, example, convs, lambda n, mod, inp, out: out_sizes.__setitem__(n, out[0, 0].numel()))
    writes = {p.conv: i for i, g in enumerate(groups) for p in g.producers}
    reads = {c.layer: (i, c.features_per_channel) for i, g in enumerate(groups) for c in g.consumers}
    costs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            per_pair = module.kernel_size[0] * module.kernel_size[1] * out_sizes.get(name, 0)
            fixed_in, fixed_out = module.in_channels, module.out_channels
        elif isinstance(module, nn.Linear):
            per_pair = reads[name][1] if name in reads else 1
            fixed_in, fixed_out = module.in_features // per_pair, module.out_features
        else:
            continue
        in_group = reads[name][0] if name in reads else None
        costs.append(LayerCost(name, per_pair, in_group, writes.get(name), fixed_in, fixed_out))
    return costs


def macs_from_counts(costs: list[LayerCost], counts):
    """GDP's bilinear FLOPs model (arXiv:2109.02220): sum over layers of macs_per_pair * n_in * n_out,
    where n is ``counts[group]`` (ints for hard counts, tensors for the smoothed-L0 surrogate)."""
    total = 0
    for cost in costs:
        n_in = cost.fixed_in if cost.in_group is None else counts[cost.in_group]
        n_out = cost.fixed_out if cost.out_group is None else counts[cost.out_group]
        total = total + cost.macs_per_pair * n_in * n_out
    return total


# ----------------------------------------------------------------------------- folding and removal

@torch.no_grad()
def fold_channel_scale(model: nn.Module, group: ChannelGroup, scale: torch.Tensor) -> None:
    """Multiply the group's channels by ``scale`` (shape (channels,)) at every producer, in place:
    into the BN affine (gamma, beta) after the conv, or into the conv's weight and bias when there is
    no BN. Exact for any sign of ``scale`` because the scale acts after the BN, before the ReLU."""
    if scale.shape != (group.channels,):
        raise InputError(f"scale for group '{group.name}' must have shape ({group.channels},), got {tuple(scale.shape)}")
    for producer in group.producers:
        norm = model.get_submodule(producer.norm) if producer.norm else None
        target = norm if isinstance(norm, nn.BatchNorm2d) else model.get_submodule(producer.conv)
        s = scale.to(target.weight)
        target.weight.mul_(s.view(-1, *([1] * (target.weight.dim() - 1))))
        if target.bias is not None:  # a bias-free conv is scaled through its weight alone
            target.bias.mul_(s)


def _slice_param(module: nn.Module, attr: str, index: torch.Tensor, dim: int) -> None:
    tensor = getattr(module, attr)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:
        setattr(module, attr, new)


def _shrink_producer(model: nn.Module, producer: Producer, keep: torch.Tensor) -> None:
    conv = model.get_submodule(producer.conv)
    _slice_param(conv, "weight", keep, 0)
    _slice_param(conv, "bias", keep, 0)
    conv.out_channels = len(keep)
    norm = model.get_submodule(producer.norm) if producer.norm else None
    if isinstance(norm, nn.BatchNorm2d):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(norm, attr, keep, 0)
        norm.num_features = len(keep)


def _shrink_consumer(model: nn.Module, consumer: Consumer, keep: torch.Tensor) -> None:
    layer = model.get_submodule(consumer.layer)
    if isinstance(layer, nn.Conv2d):
        _slice_param(layer, "weight", keep, 1)
        layer.in_channels = len(keep)
        return
    f = consumer.features_per_channel
    columns = (keep.view(-1, 1) * f + torch.arange(f).view(1, -1)).flatten()
    _slice_param(layer, "weight", columns, 1)
    layer.in_features = len(columns)


def remove_channels(model: nn.Module, groups: list[ChannelGroup], keep: dict[str, torch.Tensor]) -> nn.Module:
    """Physically remove channels in place: for each group named in ``keep`` (sorted unique int64
    indices of channels to keep, at least one), slice every producer's filters and BN entries and
    every consumer's input slice. Returns ``model`` (now smaller and faster)."""
    by_name = {g.name: g for g in groups}
    for name, index in keep.items():
        if name not in by_name:
            raise InputError(f"unknown channel group '{name}'; groups: {', '.join(by_name)}")
        group, index = by_name[name], torch.as_tensor(index, dtype=torch.long).flatten().cpu()
        if len(index) == 0 or index.min() < 0 or index.max() >= group.channels or len(index.unique()) != len(index):
            raise InputError(f"keep-set of group '{name}' must hold 1..{group.channels} distinct indices "
                             f"in [0, {group.channels}), got {index.tolist()}")
        index = index.sort().values
        for producer in group.producers:
            _shrink_producer(model, producer, index)
        for consumer in group.consumers:
            _shrink_consumer(model, consumer, index)
        group.channels = len(index)
    return model


# ----------------------------------------------------------------------------- magnitude baseline

@torch.no_grad()
def channel_importance(model: nn.Module, group: ChannelGroup, kind: str = "l1",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """L1-norm filter importance (Li et al., arXiv:1608.08710): per channel, the sum over the group's
    producers of the L1 norm of its conv filter; ``kind="random"`` draws uniform scores instead."""
    if kind == "random":
        return torch.rand(group.channels, generator=generator)
    if kind != "l1":
        raise InputError(f"importance must be 'l1' or 'random', got {kind!r}")
    score = torch.zeros(group.channels)
    for producer in group.producers:
        weight = model.get_submodule(producer.conv).weight
        score += weight.detach().abs().flatten(1).sum(1).cpu()
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
