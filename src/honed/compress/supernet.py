"""The weight-sharing supernet of SuperTickets (You et al., "SuperTickets: Drawing Task-Agnostic Lottery
Tickets from Supernets via Jointly Architecture Searching and Parameter Pruning", arXiv:2207.03677), an
HR-NAS-style search space at digits scale, plus its structural surgery.

Search space: every searchable block holds parallel inverted-residual branches, one per kernel size k:
``1x1 expand -> BN -> ReLU -> depthwise kxk -> BN_dw -> ReLU -> 1x1 project``; the branch outputs are
summed with a block bias (and the input, when the block keeps shape). A branch's hidden channel j is
one searchable unit; its importance is ``|gamma_j|`` of ``BN_dw``. Removing the dead channels of a
branch shrinks its width, removing all of them removes the branch (= choosing the kernel sizes).
The subnet after removal IS the supernet's weights (weight sharing): a removed channel whose
``gamma_j = 0`` outputs the constant ``relu(beta_j)``, which is folded into the block bias, so the
block's output is unchanged (:func:`remove_channels`).

Unstructured masks live in the layers (:class:`MaskedConv2d` / :class:`MaskedLinear`, buffer
``weight_mask``, multiplied into the weight in forward), so pruned weights keep their values and come
back unchanged when the mask is reset (iterative reactivation). :func:`get_mask` / :func:`set_mask`
exchange them as a ``honed.compress.masks.Mask``; :func:`export_plain` gives a plain-layer copy with
the pruned weights zeroed (for cost columns and deployment).
"""
import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from honed.compress.masks import Mask, check_mask
from honed.core.errors import InputError
from honed.core.loop import model_device


class MaskedConv2d(nn.Conv2d):
    """SuperTickets (arXiv:2207.03677): ``nn.Conv2d`` computing with ``weight * weight_mask``; the
    float buffer ``weight_mask`` (same shape as ``weight``, 0/1) gates both output and gradient."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", torch.ones_like(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)


class MaskedLinear(nn.Linear):
    """SuperTickets (arXiv:2207.03677): ``nn.Linear`` computing with ``weight * weight_mask``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", torch.ones_like(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_mask, self.bias)


MASKED_LAYERS = (MaskedConv2d, MaskedLinear)


class Branch(nn.Module):
    """One kernel-size choice of a block (arXiv:2207.03677 / HR-NAS): expand 1x1 -> BN -> ReLU ->
    depthwise kxk (stride) -> BN_dw -> ReLU -> project 1x1 (no bias). (N, C_in, H, W) ->
    (N, C_out, H', W') with H' = (H - 1) // stride + 1."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.expand = MaskedConv2d(in_channels, hidden, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(hidden)
        self.depthwise = MaskedConv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.bn_dw = nn.BatchNorm2d(hidden)
        self.project = MaskedConv2d(hidden, out_channels, 1, bias=False)

    @property
    def hidden(self) -> int:
        return self.bn_dw.num_features

    def hidden_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn_dw(self.depthwise(F.relu(self.bn_expand(self.expand(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.hidden_features(x))


class ChoiceBlock(nn.Module):
    """A searchable block (arXiv:2207.03677): the sum of its branches (``branches["k3"]``, ...) plus a
    per-channel ``bias`` (the fold target of removed channels), plus the input when ``stride == 1``
    and the widths match. ``in_size`` is the spatial size it was built for (for MACs weights)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, kernels: Iterable[int],
                 stride: int, in_size: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.in_size, self.out_size = in_size, (in_size - 1) // stride + 1
        self.residual = stride == 1 and in_channels == out_channels
        self.branches = nn.ModuleDict({f"k{k}": Branch(in_channels, hidden, out_channels, k, stride)
                                       for k in kernels})
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = (x.shape[2] - 1) // self.stride + 1, (x.shape[3] - 1) // self.stride + 1
        out = self.bias.view(1, -1, 1, 1).expand(x.shape[0], -1, h, w)
        for branch in self.branches.values():
            out = out + branch(x)
        return out + x if self.residual else out

    def channel_macs(self, branch: Branch) -> int:
        """MACs of ONE hidden channel of ``branch`` per image: expand (C_in at the input size),
        depthwise (k^2 at the output size) and project (C_out at the output size)."""
        return (self.in_channels * self.in_size ** 2 + branch.kernel ** 2 * self.out_size ** 2
                + self.out_channels * self.out_size ** 2)


class SuperNet(nn.Module):
    """SuperTickets' supernet at digits scale (arXiv:2207.03677, card 03): stem conv 3x3 -> BN -> ReLU,
    searchable :class:`ChoiceBlock` s (``block_channels``/``strides``, ``hidden`` channels per branch,
    one branch per kernel in ``kernels``), global average pool, linear head. ``channels_last`` stores
    conv weights and activations channels-last (about 2x faster depthwise convs on CPU).

    Input (N, in_channels, image_size, image_size) floats in [0, 1]; output logits (N, num_classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 16,
                 stem_channels: int = 16, block_channels: tuple[int, ...] = (16, 32, 32),
                 strides: tuple[int, ...] = (1, 2, 1), hidden: int = 24, kernels: tuple[int, ...] = (3, 5),
                 channels_last: bool = False, device: str | torch.device | None = None) -> None:
        super().__init__()
        if len(block_channels) != len(strides) or not block_channels:
            raise InputError(f"block_channels {block_channels} and strides {strides} must be non-empty and "
                             "of equal length")
        if min(in_channels, num_classes, image_size, stem_channels, hidden, *block_channels, *strides) < 1:
            raise InputError("every width, size and stride of the supernet must be >= 1")
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels) or len(set(kernels)) != len(kernels):
            raise InputError(f"kernels must be distinct odd sizes >= 1, got {kernels}")
        self.in_channels, self.channels_last = in_channels, channels_last
        self.stem = nn.Sequential(MaskedConv2d(in_channels, stem_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU())
        blocks, width, size = [], stem_channels, image_size
        for out, stride in zip(block_channels, strides):
            blocks.append(ChoiceBlock(width, out, hidden, kernels, stride, size))
            width, size = out, blocks[-1].out_size
        self.blocks = nn.ModuleList(blocks)
        self.head = MaskedLinear(width, num_classes)
        self.to(device=device, memory_format=torch.channels_last if channels_last else torch.preserve_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"SuperNet expects input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.channels_last:
            x = x.to(memory_format=torch.channels_last)
        out = self.stem(x)
        for block in self.blocks:
            out = block(out)
        return self.head(out.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- search bookkeeping

def branches(model: SuperNet) -> dict[str, tuple[ChoiceBlock, Branch]]:
    """``{"blocks.0.branches.k3": (block, branch), ...}`` for every live branch of ``model``."""
    return {f"blocks.{i}.branches.{key}": (block, branch)
            for i, block in enumerate(model.blocks) for key, branch in block.branches.items()}


def channel_counts(model: SuperNet) -> dict[str, int]:
    """Live hidden channels per branch name (0 for none: removed branches are absent)."""
    return {name: branch.hidden for name, (_, branch) in branches(model).items()}


def penalty_weights(model: SuperNet) -> dict[str, float]:
    """Resource-aware L1 weights (arXiv:2207.03677 / HR-NAS): for branch b, its MACs per hidden
    channel divided by the channel-weighted mean of that quantity over all live branches, so the
    weights' channel-weighted mean is 1 and costly kernels are penalised more."""
    live = branches(model)
    per_channel = {name: block.channel_macs(branch) for name, (block, branch) in live.items()}
    channels = {name: branch.hidden for name, (_, branch) in live.items()}
    total = sum(channels.values())
    if total == 0:
        return {}
    mean = sum(per_channel[n] * channels[n] for n in live) / total
    return {name: per_channel[name] / mean for name in live}


def nas_penalty(model: SuperNet, weights: dict[str, float]) -> torch.Tensor:
    """``sum_b weights[b] * sum_j |gamma_j|`` over the BN_dw scales of the live branches (scalar)."""
    terms = [weights[name] * branch.bn_dw.weight.abs().sum() for name, (_, branch) in branches(model).items()]
    if not terms:
        return torch.zeros((), device=model_device(model))
    return torch.stack(terms).sum()


def alive_channels(model: SuperNet, threshold: float = 1e-3) -> dict[str, torch.Tensor]:
    """Per branch, the sorted indices of hidden channels with ``|gamma_j| > threshold`` (BN_dw)."""
    if not threshold >= 0:
        raise InputError(f"shrink threshold must be >= 0, got {threshold}")
    return {name: torch.nonzero(branch.bn_dw.weight.detach().abs() > threshold).flatten().cpu()
            for name, (_, branch) in branches(model).items()}


def removed_macs(model: SuperNet, keep: dict[str, torch.Tensor]) -> int:
    """MACs per image the removal ``keep`` would save (by :meth:`ChoiceBlock.channel_macs`)."""
    live = branches(model)
    return sum(live[name][0].channel_macs(live[name][1]) * (live[name][1].hidden - len(index))
               for name, index in keep.items() if name in live)


# ----------------------------------------------------------------------------- surgery

def _slice_(module: nn.Module, attr: str, index: torch.Tensor, dim: int,
            optimizer: torch.optim.Optimizer | None) -> None:
    """Keep ``index`` along ``dim`` of ``module.<attr>`` (a parameter or buffer). A parameter is
    replaced by a new one (autograd caches shapes per tensor) in the module AND in ``optimizer``'s
    param groups, with its per-parameter state tensors of the old shape sliced alike."""
    old = getattr(module, attr)
    index = index.to(old.device)
    new_tensor = old.detach().index_select(dim, index).clone()
    if old.dim() == 4 and not old.is_contiguous() and old.is_contiguous(memory_format=torch.channels_last):
        new_tensor = new_tensor.contiguous(memory_format=torch.channels_last)  # keep the layout
    if not isinstance(old, nn.Parameter):
        setattr(module, attr, new_tensor)
        return
    new = nn.Parameter(new_tensor, requires_grad=old.requires_grad)
    setattr(module, attr, new)
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {k: (v.index_select(dim, index).clone()
                                    if torch.is_tensor(v) and v.shape == old.shape else v)
                                for k, v in state.items()}


def _fold_dead_channels(block: ChoiceBlock, branch: Branch, dead: torch.Tensor) -> None:
    """Add ``W_proj[:, dead] @ relu(beta_dead)`` to the block bias: the constant a channel with
    gamma = 0 contributes through the (masked) projection."""
    if len(dead) == 0:
        return
    dead = dead.to(branch.bn_dw.bias.device)
    const = F.relu(branch.bn_dw.bias.detach()[dead])
    proj = (branch.project.weight * branch.project.weight_mask).detach()[:, dead, 0, 0]
    block.bias.data += proj @ const


def _shrink_branch(branch: Branch, index: torch.Tensor, optimizer) -> None:
    for conv in (branch.expand, branch.depthwise):
        for attr in ("weight", "weight_mask"):
            _slice_(conv, attr, index, 0, optimizer)
        conv.out_channels = len(index)
    branch.depthwise.in_channels = branch.depthwise.groups = len(index)
    for norm in (branch.bn_expand, branch.bn_dw):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _slice_(norm, attr, index, 0, optimizer)
        norm.num_features = len(index)
    for attr in ("weight", "weight_mask"):
        _slice_(branch.project, attr, index, 1, optimizer)
    branch.project.in_channels = len(index)


def drop_stale_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Remove from ``optimizer`` (param groups and state) every parameter ``model`` no longer has."""
    live = {id(p) for p in model.parameters()}
    for group in optimizer.param_groups:
        stale = [p for p in group["params"] if id(p) not in live]
        group["params"] = [p for p in group["params"] if id(p) in live]
        for p in stale:
            optimizer.state.pop(p, None)


@torch.no_grad()
def remove_channels(model: SuperNet, keep: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | None = None) -> SuperNet:
    """SuperTickets' network shrinking (arXiv:2207.03677): physically remove, in place, the hidden
    channels NOT listed in ``keep[branch name]`` (sorted distinct indices in [0, hidden)) - expand-conv
    output row, both BN entries, depthwise channel, project-conv input column, mask entries and the
    optimizer state - after folding their constant ``relu(beta_j)`` contribution into the block bias
    (exact when their BN_dw gamma is 0). An empty keep-set removes the branch. Returns ``model``."""
    live = branches(model)
    for name, index in keep.items():
        if name not in live:
            raise InputError(f"unknown branch '{name}'; branches: {', '.join(live) or 'none'}")
        index = torch.as_tensor(index, dtype=torch.long).flatten().cpu()
        block, branch = live[name]
        if len(index) and (index.min() < 0 or index.max() >= branch.hidden or len(index.unique()) != len(index)):
            raise InputError(f"keep-set of branch '{name}' must hold distinct indices in [0, {branch.hidden}), "
                             f"got {index.tolist()}")
        index = index.sort().values
        dead = torch.tensor([j for j in range(branch.hidden) if j not in set(index.tolist())], dtype=torch.long)
        _fold_dead_channels(block, branch, dead)
        if len(index) == 0:
            del block.branches[name.rsplit(".", 1)[1]]
        elif len(index) < branch.hidden:
            _shrink_branch(branch, index, optimizer)
    if optimizer is not None:
        drop_stale_parameters(optimizer, model)
    return model


def shrink(model: SuperNet, threshold: float = 1e-3, min_removed_macs: float = 0.0,
           optimizer: torch.optim.Optimizer | None = None, keep_blocks_connected: bool = True) -> int:
    """Remove every hidden channel with ``|gamma_j| <= threshold`` (BN_dw) when that saves more than
    ``min_removed_macs`` MACs per image (and at least one channel dies). With
    ``keep_blocks_connected`` a block without a residual path keeps its strongest channel (else the
    network's output would be constant). Returns the MACs per image removed (0 = nothing changed)."""
    keep = alive_channels(model, threshold)
    if keep_blocks_connected:
        live = branches(model)
        for i, block in enumerate(model.blocks):
            names = [n for n in keep if n.startswith(f"blocks.{i}.")]
            if not block.residual and names and all(len(keep[n]) == 0 for n in names):
                best = max(names, key=lambda n: float(live[n][1].bn_dw.weight.detach().abs().max()))
                keep[best] = live[best][1].bn_dw.weight.detach().abs().argmax().view(1).cpu()
    saved = removed_macs(model, keep)
    if saved == 0 or saved <= min_removed_macs:
        return 0
    remove_channels(model, keep, optimizer)
    return saved


# ----------------------------------------------------------------------------- masks in the layers

def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{"<module>.weight": layer}`` for every :class:`MaskedConv2d` / :class:`MaskedLinear`."""
    return {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, MASKED_LAYERS)}


def get_mask(model: nn.Module) -> Mask:
    """The layers' masks as a bool :data:`honed.compress.masks.Mask` (True = kept)."""
    return {name: layer.weight_mask > 0.5 for name, layer in masked_layers(model).items()}


@torch.no_grad()
def set_mask(model: nn.Module, mask: Mask) -> None:
    """Load a bool Mask into the masked layers (layers absent from ``mask`` become dense). A name that
    is not a masked layer's weight raises InputError naming it. Weights are NOT changed."""
    check_mask(model, mask)
    layers = masked_layers(model)
    for name in mask:
        if name not in layers:
            raise InputError(f"mask names layer '{name}', which is not a masked layer of {type(model).__name__}")
    for name, layer in layers.items():
        keep = mask.get(name)
        layer.weight_mask.copy_(torch.ones_like(layer.weight) if keep is None else keep.to(layer.weight))


def reset_mask(model: nn.Module) -> None:
    """Iterative reactivation (arXiv:2207.03677): every mask back to 1; pruned weights return with the
    values they held when they were pruned (they were frozen while masked)."""
    for layer in masked_layers(model).values():
        layer.weight_mask.fill_(1.0)


@torch.no_grad()
def export_plain(model: nn.Module) -> nn.Module:
    """A deep copy with every masked layer replaced by a plain ``nn.Conv2d`` / ``nn.Linear`` holding
    ``weight * mask`` (pruned weights exactly 0): what cost columns and deployment should see."""
    out = copy.deepcopy(model)
    for name, layer in list(out.named_modules()):
        if not isinstance(layer, MASKED_LAYERS):
            continue
        if isinstance(layer, MaskedConv2d):
            plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                              layer.padding, layer.dilation, layer.groups, layer.bias is not None)
        else:
            plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
        plain = plain.to(layer.weight.device)
        plain.weight.copy_(layer.weight * layer.weight_mask)
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
        parent_name, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, attr, plain)
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, max_batches: int | None = None,
                   device: str | torch.device | None = None) -> nn.Module:
    """Re-estimate BatchNorm running statistics after structural or mask changes (card 03 pitfall):
    reset them and average over ``batches`` (iterable of (x, y)) in train mode without updating
    weights; batches go to ``device`` (default: the model's). Restores the model's train/eval mode and
    BN momenta. Returns ``model``."""
    device = model_device(model) if device is None else torch.device(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    try:
        for i, (x, _) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model(x.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return model
