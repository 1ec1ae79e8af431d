"""Inference export of pruned and decomposed networks: the same function in a form that runs faster
(issue 15, for the exports of GDP, Guo et al., arXiv:2109.02220, and of Force Regularization's
low-rank approximation, Wen et al., arXiv:1703.09746). Nothing here changes what was pruned: the same
channels, the same ranks, outputs equal up to float rounding (tests pin it).

* :func:`fold_batchnorm`: every BatchNorm that directly follows a conv or Linear (and is its only
  reader) folded into that layer's weight and bias, with torch.fx's ``fuse`` (traces the model; the
  result is a ``torch.fx.GraphModule`` in eval mode). Inference only: the running statistics are
  frozen into the weights.
* :func:`merge_lowrank_pair` and :func:`keep_faster_form`: a decomposed layer (the two-layer factors
  of :func:`honed.compress.lowrank.decompose_model`) stored as its rank-K product, one dense layer of
  the original shape, where the measured rule says the pair is slower. The product has rank K: what
  was pruned (the rank) is unchanged, only the MACs saving of that layer is given back.
"""
import copy
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse as fx_fuse

from honed.compress.lowrank import CONVS
from honed.core.benchmark import paired_ratio
from honed.core.errors import InputError, check_count
from honed.core.measure import CLOCKS, interleaved_times, repeated_forwards
from honed.core.modes import eval_mode

__all__ = ["LayerForm", "fold_batchnorm", "is_lowrank_pair", "keep_faster_form", "merge_lowrank_pair"]


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A copy of ``model`` (any torch.fx-traceable module) with each BatchNorm that directly follows a
    conv / Linear, and is its only reader, folded into it: w' = w * gamma / sqrt(var + eps), b' =
    (b - mean) * gamma / sqrt(var + eps) + beta. Returned in eval mode; ``model`` is left as it was.
    Its outputs equal ``model``'s in eval mode up to float rounding."""
    if not isinstance(model, nn.Module):
        raise InputError(f"fold_batchnorm needs an nn.Module, got {type(model).__name__}")
    try:
        traced = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as err:  # fx raises many types; one clear line instead
        raise InputError(f"fold_batchnorm traces the model with torch.fx, which failed on "
                         f"{type(model).__name__}: {type(err).__name__}: {err}") from None
    return fx_fuse(traced, inplace=True, no_trace=True).eval()


def is_lowrank_pair(module: nn.Module) -> bool:
    """True for the Sequential(first, second) that :func:`honed.compress.lowrank.decompose_conv` /
    ``decompose_linear`` build: two convs of one type, the second 1x1 without groups, or two Linears."""
    if not isinstance(module, nn.Sequential) or len(module) != 2:
        return False
    first, second = module
    if isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
        return first.out_features == second.in_features and first.bias is None
    return (isinstance(first, CONVS) and type(first) is type(second) and first.groups == second.groups == 1
            and first.bias is None and first.out_channels == second.in_channels
            and all(k == 1 for k in second.kernel_size) and all(s == 1 for s in second.stride)
            and all(p == 0 for p in second.padding))


@torch.no_grad()
def merge_lowrank_pair(pair: nn.Sequential) -> nn.Module:
    """The single layer computing what ``pair`` (see :func:`is_lowrank_pair`) computes: weight =
    basis (N, K) @ coefficients (K, D) reshaped like the original filters, the second layer's bias.
    Its weight has rank <= K; outputs equal the pair's up to float rounding."""
    if not is_lowrank_pair(pair):
        raise InputError(f"merge_lowrank_pair needs a low-rank pair from honed.compress.lowrank, got "
                         f"{type(pair).__name__}")
    first, second = pair
    basis = second.weight.reshape(second.weight.shape[0], -1).double()
    product = (basis @ first.weight.reshape(first.weight.shape[0], -1).double()).to(first.weight.dtype)
    if isinstance(first, nn.Linear):
        merged = nn.Linear(first.in_features, second.out_features, bias=second.bias is not None,
                           device=first.weight.device, dtype=first.weight.dtype)
    else:
        merged = type(first)(first.in_channels, second.out_channels, first.kernel_size, first.stride, first.padding,
                             first.dilation, bias=second.bias is not None, padding_mode=first.padding_mode,
                             device=first.weight.device, dtype=first.weight.dtype)
    merged.weight.copy_(product.reshape(merged.weight.shape))
    if second.bias is not None:
        merged.bias.copy_(second.bias)
    merged.train(pair.training)
    return merged


@dataclass(frozen=True)
class LayerForm:
    """The measured choice for one decomposed layer: its rank, the median over interleaved rounds of
    time(pair) / time(product) on the layer's own input (quartiles beside it), and the form kept."""

    name: str
    rank: int
    pair_over_product: float
    q25: float
    q75: float
    form: str  # "factored" (the pair) or "product" (one dense layer of rank <= rank)


def _layer_inputs(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_pre_hook(lambda _m, inp, n=n: seen.setdefault(n, inp[0].detach()))
               for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def keep_faster_form(model: nn.Module, example: torch.Tensor, rounds: int = 15, repeats: int = 5,
                     clock: str = "cpu", inplace: bool = False) -> tuple[nn.Module, list[LayerForm]]:
    """For every low-rank pair in ``model`` (a decomposed model), time the pair and its rank-K product
    (:func:`merge_lowrank_pair`) on the input the pair receives when ``model`` runs ``example`` (the
    batch the model will serve), ``repeats`` calls per round, in ``rounds`` interleaved rounds, and
    store the layer as the product when the median per-round ratio time(pair) / time(product) exceeds 1
    (the stated rule), on ``clock`` ("cpu": process CPU time, blind to other processes; or "wall").
    Returns (the model - a copy unless ``inplace`` - and one :class:`LayerForm` per
    pair). Outputs are unchanged up to float rounding; ranks are unchanged."""
    if not torch.is_tensor(example) or example.dim() < 1 or len(example) == 0:
        raise InputError("example must be a non-empty input batch tensor")
    rounds, repeats = check_count(rounds, "rounds"), check_count(repeats, "repeats")
    if clock not in CLOCKS:
        raise InputError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    target = model if inplace else copy.deepcopy(model)
    pairs = [n for n, m in target.named_modules() if is_lowrank_pair(m)]
    inputs = _layer_inputs(target, pairs, example)
    forms = []
    for name in pairs:
        pair = target.get_submodule(name)
        product = merge_lowrank_pair(pair)
        x = inputs[name]
        with eval_mode(pair, product):
            times = interleaved_times({"pair": repeated_forwards(pair, x, repeats),
                                       "product": repeated_forwards(product, x, repeats)}, rounds)
        ratio = paired_ratio(times["pair"][clock], times["product"][clock])
        form = "product" if ratio["median"] > 1 else "factored"
        if form == "product":
            parent_name, _, child = name.rpartition(".")
            setattr(target.get_submodule(parent_name) if parent_name else target, child, product)
        forms.append(LayerForm(name, pair[0].weight.shape[0], ratio["median"], ratio["q25"], ratio["q75"], form))
    return target, forms
