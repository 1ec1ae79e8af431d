"""Pruning masks and unstructured magnitude / random pruning (The Lottery Ticket Hypothesis,
arXiv:1803.03635; open_lth semantics).

A :data:`Mask` is a plain ``dict[str, torch.BoolTensor]`` from parameter names (as in
``model.named_parameters()``) to a boolean tensor of the same shape: ``True`` = kept, ``False`` =
pruned. Layers absent from a mask are dense. By default the prunable tensors are the ``weight`` of
every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (biases and norm layers stay dense, as in open_lth).

Masks are not speed: a masked model runs exactly as fast as the dense one (see
:mod:`honed.compress.cost`).

Keep pruned weights at zero during training either

* with :class:`MaskCallback` in ``honed.core.loop.train(..., callbacks=[MaskCallback(mask)])``
  (masks the gradient before the optimizer step and re-applies the mask after it), or
* in your own loop: ``loss.backward(); mask_gradients(model, mask); opt.step(); apply_mask(model, mask)``,
  or without touching the loop at all: ``with masked_weights(model, mask): your_training(model)``
  (it hooks every optimizer step inside the block).
"""
import math
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from honed.core.errors import InputError
from honed.core.loop import Callback, TrainState
from honed.core.seed import draw_device

Mask = dict[str, torch.Tensor]
SCOPES = ("global", "layerwise")
PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def _check_names(model: nn.Module, names: Iterable[str], what: str) -> None:
    params = _parameters(model)
    for name in names:
        if name not in params:
            raise InputError(f"{what} names layer '{name}', which is not a parameter of "
                             f"{type(model).__name__} (parameters: {', '.join(params)})")


def prunable_weights(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """LTH (arXiv:1803.03635): ``{name: weight}`` of every Linear/Conv layer, minus ``ignore``.

    ``ignore`` holds parameter names (e.g. ``"4.weight"`` for the output layer of an
    ``nn.Sequential``); a name that is not a parameter of ``model`` raises InputError naming it.
    """
    ignore = tuple(ignore)
    _check_names(model, ignore, "ignore")
    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES):
            name = f"{module_name}.weight" if module_name else "weight"
            if name not in ignore:
                out[name] = module.weight
    return out


def ones_mask(model: nn.Module, ignore: Iterable[str] = ()) -> Mask:
    """A mask keeping every entry of the prunable weights of ``model`` (sparsity 0)."""
    return {k: torch.ones_like(v, dtype=torch.bool) for k, v in prunable_weights(model, ignore).items()}


def check_mask(model: nn.Module, mask: Mask) -> None:
    """Raise InputError naming the layer when a mask entry is not a parameter of ``model``, has the
    wrong shape, or is not a bool tensor."""
    params = _parameters(model)
    for name, keep in mask.items():
        if name not in params:
            raise InputError(f"mask names layer '{name}', which is not a parameter of {type(model).__name__}")
        if not torch.is_tensor(keep) or keep.dtype != torch.bool:
            raise InputError(f"mask of layer '{name}' must be a bool tensor, got "
                             f"{getattr(keep, 'dtype', type(keep).__name__)}")
        if keep.shape != params[name].shape:
            raise InputError(f"mask of layer '{name}' has shape {tuple(keep.shape)}, "
                             f"the parameter has {tuple(params[name].shape)}")


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> nn.Module:
    """LTH (arXiv:1803.03635): zero the pruned entries of ``model``'s parameters in place; returns
    ``model``. Call it after every optimizer step in your own loop (or use :class:`MaskCallback`)."""
    check_mask(model, mask)
    params = _parameters(model)
    for name, keep in mask.items():
        params[name].mul_(keep.to(params[name].device, params[name].dtype))
    return model


@torch.no_grad()
def mask_gradients(model: nn.Module, mask: Mask) -> None:
    """Zero the gradient at pruned entries (so momentum/Adam moments never move them)."""
    params = _parameters(model)
    for name, keep in mask.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(keep.to(grad.device, grad.dtype))


class MaskCallback(Callback):
    """LTH (arXiv:1803.03635): a ``honed.core.loop`` callback keeping pruned weights at zero.

    Applies the mask at the start of training, masks gradients before each optimizer step and
    re-applies the mask after it (weight decay or a momentum buffer filled before pruning cannot
    revive a pruned weight).
    """

    def __init__(self, mask: Mask) -> None:
        self.mask = mask
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []

    def on_train_start(self, state: TrainState) -> None:
        apply_mask(state.model, self.mask)
        params = _parameters(state.model)
        self._pairs = [(params[k], v.to(params[k].device, params[k].dtype)) for k, v in self.mask.items()]

    @torch.no_grad()
    def before_step(self, state: TrainState) -> None:
        for param, keep in self._pairs:
            if param.grad is not None:
                param.grad.mul_(keep)

    @torch.no_grad()
    def after_step(self, state: TrainState) -> None:
        for param, keep in self._pairs:
            param.mul_(keep)


@contextmanager
def masked_weights(model: nn.Module, mask: Mask) -> Iterator[nn.Module]:
    """LTH (arXiv:1803.03635) masking for any training loop: inside the block, around every
    ``step()`` of any ``torch.optim.Optimizer``, the gradients of pruned entries are zeroed before the
    step and the pruned entries after it (what :class:`MaskCallback` does in honed's loop), so no
    weight decay or momentum revives them. Parameters keep their objects, names and order; on exit
    the mask is applied once more."""
    apply_mask(model, mask)
    params = _parameters(model)
    pairs = [(params[k], v.to(params[k].device)) for k, v in mask.items()]

    @torch.no_grad()
    def mask_grads(optimizer, args, kwargs) -> None:
        for param, keep in pairs:
            if param.grad is not None:
                param.grad.mul_(keep.to(param.grad.dtype))

    @torch.no_grad()
    def mask_weights(optimizer, args, kwargs) -> None:
        for param, keep in pairs:
            param.mul_(keep.to(param.dtype))

    handles = [register_optimizer_step_pre_hook(mask_grads), register_optimizer_step_post_hook(mask_weights)]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        apply_mask(model, mask)


def pruned_entries_are_zero(model: nn.Module, mask: Mask) -> bool:
    """True when every entry ``mask`` prunes is exactly 0 in ``model``."""
    params = _parameters(model)
    return all(bool((params[k].detach()[~v.to(params[k].device)] == 0).all()) for k, v in mask.items())


def count_kept(mask: Mask) -> int:
    """Number of weights a mask keeps (True entries) over all its tensors."""
    return int(sum(int(v.sum()) for v in mask.values()))


def count_total(mask: Mask) -> int:
    """Number of weights a mask covers over all its tensors."""
    return int(sum(v.numel() for v in mask.values()))


def sparsity(mask: Mask) -> float:
    """Fraction of pruned entries over all tensors of ``mask`` (0 for an empty mask)."""
    total = count_total(mask)
    return 0.0 if total == 0 else 1.0 - count_kept(mask) / total


def density(mask: Mask) -> float:
    """Fraction of kept entries, ``1 - sparsity(mask)``."""
    return 1.0 - sparsity(mask)


def is_nested(inner: Mask, outer: Mask) -> bool:
    """True when every entry kept by ``inner`` is kept by ``outer`` (``inner`` ⊆ ``outer``)."""
    if set(inner) != set(outer):
        return False
    return all(bool((inner[k] & ~outer[k]).sum() == 0) for k in inner)


def check_sparsity(value: float) -> float:
    """Return ``value`` as float or raise InputError unless it is a number in [0, 1)."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise InputError(f"sparsity must be a number in [0, 1), got {value!r}") from None
    if math.isnan(s) or not 0.0 <= s < 1.0:
        raise InputError(f"sparsity must lie in [0, 1), got {value!r}")
    return s


def _keep_top(scores: torch.Tensor, current: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool tensor keeping the ``n_keep`` highest scores among entries ``current`` keeps.
    Ties break by position (stable sort), so the count is exact."""
    flat = scores.flatten().to(torch.float64).masked_fill(~current.flatten(), -math.inf)
    order = torch.sort(flat, descending=True, stable=True).indices[:n_keep]
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[order] = True
    return keep.view_as(current)


def prune_by_score(scores: dict[str, torch.Tensor], target_sparsity: float, scope: str = "global",
                   current: Mask | None = None) -> Mask:
    """Keep the highest-scoring entries so the mask reaches ``target_sparsity`` over the tensors of
    ``scores`` (entries ``current`` already pruned stay pruned).

    ``global``: one ranking over all tensors, ``round(s * total)`` entries pruned in all.
    ``layerwise``: each tensor pruned to ``round(s * numel)``. Raises InputError when ``current``
    is already sparser than the target (a mask can only shrink).
    """
    s = check_sparsity(target_sparsity)
    if not scores:
        raise InputError("nothing to prune: the model has no Linear/Conv weight outside ignore")
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    current = current or {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}
    for name in scores:
        if name not in current:
            raise InputError(f"current mask has no entry for layer '{name}'")
    if scope == "layerwise":
        out = {}
        for name, score in scores.items():
            n_keep = score.numel() - round(s * score.numel())
            if n_keep > int(current[name].sum()):
                raise InputError(f"layer '{name}' is already sparser than the target sparsity {s}")
            out[name] = _keep_top(score, current[name].to(score.device), n_keep)
        return out
    names = list(scores)
    total = sum(scores[k].numel() for k in names)
    n_keep = total - round(s * total)
    if n_keep > sum(int(current[k].sum()) for k in names):
        raise InputError(f"the current mask is already sparser than the target sparsity {s}")
    flat_keep = _keep_top(torch.cat([scores[k].flatten().to(torch.float64) for k in names]),
                          torch.cat([current[k].flatten().to(scores[k].device) for k in names]), n_keep)
    return {k: part.view_as(scores[k]) for k, part in
            zip(names, flat_keep.split([scores[k].numel() for k in names]))}


def _targets(model: nn.Module, current: Mask | None, ignore: Iterable[str]) -> dict[str, nn.Parameter]:
    ignore = tuple(ignore)
    if current is None:
        return prunable_weights(model, ignore)
    check_mask(model, current)
    _check_names(model, ignore, "ignore")
    params = _parameters(model)
    return {k: params[k] for k in current if k not in ignore}


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global",
                    current: Mask | None = None, ignore: Iterable[str] = ()) -> Mask:
    """LTH (arXiv:1803.03635): prune the smallest-|w| weights so the returned mask has exactly
    ``sparsity`` (in [0, 1), up to rounding to a whole count) over the layers it prunes.

    Layers: the prunable weights of ``model`` (Linear/Conv ``weight``), or the keys of ``current``
    when given, minus ``ignore`` (ignored layers are absent from the mask, i.e. dense; with
    ``current`` they are copied unchanged). Entries ``current`` pruned stay pruned, so masks of
    successive calls are nested. ``scope`` is ``"global"`` (one ranking over all layers, open_lth's
    sparse_global) or ``"layerwise"`` (each layer to the same sparsity).
    """
    targets = _targets(model, current, ignore)
    for name, weight in targets.items():
        if not bool(torch.isfinite(weight).all()):
            raise InputError(f"weights of layer '{name}' contain NaN or inf: magnitude pruning needs finite weights")
    scores = {k: p.detach().abs() for k, p in targets.items()}
    cur = None if current is None else {k: current[k] for k in targets}
    out = prune_by_score(scores, sparsity, scope, cur)
    return {**(current or {}), **out}


def random_prune(model: nn.Module, sparsity: float, scope: str = "global", current: Mask | None = None,
                 ignore: Iterable[str] = (), generator: torch.Generator | None = None) -> Mask:
    """LTH random-pruning control (arXiv:1803.03635): like :func:`magnitude_prune` with uniformly
    random scores instead of |w| (seed it with ``generator``)."""
    targets = _targets(model, current, ignore)
    scores = {k: torch.rand(p.shape, generator=generator, device=draw_device(generator, p.device)).to(p.device)
              for k, p in targets.items()}
    cur = None if current is None else {k: current[k] for k in targets}
    out = prune_by_score(scores, sparsity, scope, cur)
    return {**(current or {}), **out}


def _permutation(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A random permutation of range(n) on ``device``, drawn on the generator's device."""
    return torch.randperm(n, generator=generator, device=draw_device(generator, device)).to(device)


def shuffle_mask(mask: Mask, generator: torch.Generator | None = None, scope: str = "layerwise") -> Mask:
    """open_lth's randomly_prune control: permute the kept positions at random, keeping each layer's
    density (``layerwise``) or only the total density (``global``)."""
    if scope == "layerwise":
        return {k: v.flatten()[_permutation(v.numel(), generator, v.device)].view_as(v) for k, v in mask.items()}
    if scope != "global":
        raise InputError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    flat = torch.cat([v.flatten() for v in mask.values()])
    flat = flat[_permutation(flat.numel(), generator, flat.device)]
    return {k: part.view_as(mask[k]) for k, part in zip(mask, flat.split([v.numel() for v in mask.values()]))}
