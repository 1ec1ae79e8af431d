"""OPQ: one-shot pruning-quantization with unified channel-wise codebooks (OPQ: Compressing Deep Neural
Networks with One-shot Pruning-Quantization, Hu et al., AAAI 2021, arXiv:2205.11141).

From the pre-trained weights only, once: per-layer pruning ratios (Laplace model + Lagrange multiplier),
magnitude masks at the empirical per-layer quantile, per-layer bit-widths and quantisation steps, one
codebook per layer shared by all output channels (each channel only shifts it by its mean). Then the
masks, steps, bit-widths and channel means are frozen buffers and only the latent fp32 weights are
fine-tuned through a straight-through estimator.

Use it in your own code::

    plans = opq_plan(model, sparsity=0.9, avg_bits=3)   # one-shot, from the pre-trained weights
    attach_quantizers(model, plans)                      # forward now uses the compressed weights
    ... fine-tune with any optimizer / honed.core.loop.train ...
    layers, dense = export_compressed(model)             # codes + codebooks + dense small tensors
    write_packed("model.hpq", layers, dense)             # honed.compress.packed_format

Reconstructed (R) steps of the method card, each a named option keeping the card's default:
``prune_err`` ("relative": min sum_i D_i/(2 b_i^2) => p_i = 1 - exp(-sqrt(2 lambda N_i))), the bit
allocation (min sum_i Delta_i^2/12 s.t. the average bit budget => Delta_i^2 proportional to the kept
count n_i, integer bits by ceil then a greedy top-up of the leftover budget), ``quantizer`` ("unified":
channel-mean centring + one shared step), ``grid`` ("midtread": levels q*Delta, |q| <= 2^(k-1)-1).
"""
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from honed.compress.masks import check_sparsity, prunable_weights
from honed.compress.packed_format import CompressedLayer, check_bits, codebook_values
from honed.core.errors import InputError

PRUNE_ERRORS = ("relative", "absolute", "total", "uniform")
QUANTIZERS = ("unified", "layerwise", "channelwise")
GRIDS = ("midtread", "midrise")


def _choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _check_weight(w: torch.Tensor, name: str = "weight") -> torch.Tensor:
    if not torch.is_tensor(w) or not torch.is_floating_point(w) or w.numel() == 0:
        raise InputError(f"{name} must be a non-empty float tensor")
    if not torch.isfinite(w).all():
        raise InputError(f"{name} contains NaN or inf")
    return w.detach()


# ----------------------------------------------------------------------------- Laplace model

def laplace_fit(w: torch.Tensor) -> tuple[float, float]:
    """OPQ (arXiv:2205.11141) step 1: maximum-likelihood Laplace fit of a weight tensor (any shape):
    ``mu = median(w)``, ``b = mean|w - mu|``. Returns (mu, b)."""
    w = _check_weight(w).to(torch.float64).reshape(-1)
    mu = float(w.median())
    return mu, float((w - mu).abs().mean())


def laplace_pruning_error(t: float, b: float) -> float:
    """OPQ step 2: ``D(t) = int_{|w|<t} w^2 f(w) dw = 2b^2 - exp(-t/b) (t^2 + 2bt + 2b^2)`` for a
    zero-mean Laplace(b) weight pruned below threshold t >= 0 (per weight, squared error)."""
    return 2 * b * b - math.exp(-t / b) * (t * t + 2 * b * t + 2 * b * b)


def laplace_pruned_fraction(t: float, b: float) -> float:
    """OPQ step 2: fraction of a zero-mean Laplace(b) below |w| < t: ``1 - exp(-t/b)``."""
    return 1.0 - math.exp(-t / b)


def _ratios_for(lam: float, sizes: Sequence[int], scales: Sequence[float], prune_err: str) -> list[float]:
    if prune_err == "relative":  # t_i = b_i sqrt(2 lam N_i)
        return [1.0 - math.exp(-math.sqrt(2 * lam * n)) for n in sizes]
    return [1.0 - math.exp(-math.sqrt(lam * n) / max(b, 1e-30)) for n, b in zip(sizes, scales)]


def _global_ratios(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """One global threshold on |w - mu_i| (what the N_i-weighted objective reduces to)."""
    dev = [(w.reshape(-1).double() - laplace_fit(w)[0]).abs() for w in weights]
    flat = torch.cat(dev)
    n_prune = round(sparsity * flat.numel())
    pruned = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    pruned[torch.sort(flat, stable=True).indices[:n_prune]] = True
    return [float(p.sum()) / p.numel() for p in pruned.split([d.numel() for d in dev])]


def allocate_sparsity(weights: Sequence[torch.Tensor], sparsity: float,
                      prune_err: str = "relative") -> list[float]:
    """OPQ (arXiv:2205.11141) step 3 (R): per-layer pruning ratios p_i with sum_i N_i p_i = P sum_i N_i.

    weights: the L layers' weight tensors (any shapes); sparsity P in [0, 1). ``prune_err``:
    "relative" (card default) minimises sum_i D_i(t_i)/(2 b_i^2) => p_i = 1 - exp(-sqrt(2 lam N_i)),
    so bigger layers are pruned harder; "absolute" minimises sum_i D_i => t_i^2 = lam N_i;
    "total" minimises sum_i N_i D_i => one global threshold (global magnitude pruning, computed on
    the empirical |w - mu_i|); "uniform" gives every layer p_i = P (baseline). lam by bisection.
    """
    p = check_sparsity(sparsity)
    _choice(prune_err, PRUNE_ERRORS, "prune_err")
    weights = [_check_weight(w, f"weights[{i}]") for i, w in enumerate(weights)]
    if not weights:
        raise InputError("allocate_sparsity needs at least one weight tensor")
    if prune_err == "uniform" or p == 0.0:
        return [p] * len(weights)
    if prune_err == "total":
        return _global_ratios(weights, p)
    sizes = [w.numel() for w in weights]
    scales = [laplace_fit(w)[1] for w in weights]
    target = p * sum(sizes)

    def pruned(log_lam: float) -> float:
        return sum(n * r for n, r in zip(sizes, _ratios_for(math.exp(log_lam), sizes, scales, prune_err)))

    lo, hi = -80.0, 0.0
    while pruned(hi) < target:
        hi += 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if pruned(mid) < target else (lo, mid)
    return _ratios_for(math.exp(hi), sizes, scales, prune_err)


def magnitude_masks(weights: Sequence[torch.Tensor], ratios: Sequence[float]) -> list[torch.Tensor]:
    """OPQ step 3: masks ``M_i = 1{|W_i - mu_i| >= t_i}`` with t_i the EMPIRICAL quantile at ratio
    p_i (not the Laplace cdf). Pruned counts round p_i N_i by largest remainder so their total is
    round(sum_i p_i N_i) and each layer is within 1 weight of p_i N_i. Returns bool tensors."""
    if len(weights) != len(ratios):
        raise InputError(f"{len(weights)} weights but {len(ratios)} ratios")
    ideal = [check_sparsity(r) * w.numel() for w, r in zip(weights, ratios)]
    counts = [math.floor(x) for x in ideal]
    order = sorted(range(len(ideal)), key=lambda i: counts[i] - ideal[i])
    for i in order[:round(sum(ideal)) - sum(counts)]:
        counts[i] += 1
    masks = []
    for w, n_prune in zip(weights, counts):
        dev = (w.detach().reshape(-1).double() - laplace_fit(w)[0]).abs()
        keep = torch.ones(dev.numel(), dtype=torch.bool, device=w.device)
        keep[torch.sort(dev, stable=True).indices[:n_prune]] = False
        masks.append(keep.view_as(w))
    return masks


# ----------------------------------------------------------------------------- quantisation

def grid_levels(bits: int, grid: str = "midtread") -> tuple[float, float, float]:
    """(lowest level, highest level, zero) of a k-bit grid: "midtread" q in [-(2^(k-1)-1), 2^(k-1)-1]
    (card step 5, needs k >= 2); "midrise" q + 1/2 for q in [-2^(k-1), 2^(k-1)-1]. code = level + zero."""
    bits = check_bits(bits)
    if _choice(grid, GRIDS, "grid") == "midtread":
        if bits < 2:
            raise InputError("the midtread grid needs bits >= 2 (1 bit leaves only the centre level)")
        top = float(2 ** (bits - 1) - 1)
        return -top, top, top
    top = 2 ** (bits - 1) - 0.5
    return -top, top, top


def quantizer_centres(w: torch.Tensor, mask: torch.Tensor, quantizer: str) -> torch.Tensor:
    """Per-channel offsets m_c: the mean of the kept weights of output channel c ("unified", card
    step 5; 0 for an empty channel), or a single 0 ("layerwise"/"channelwise"). float32 (C,) or (1,)."""
    if _choice(quantizer, QUANTIZERS, "quantizer") != "unified":
        return torch.zeros(1, dtype=torch.float32, device=w.device)
    w2, m2 = w.detach().reshape(w.shape[0], -1).double(), mask.reshape(w.shape[0], -1)
    mean = (w2 * m2).sum(1) / m2.sum(1).clamp(min=1)
    return mean.float()


def quantizer_range(w: torch.Tensor, mask: torch.Tensor, offset: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Clip range c = max |kept w - m_c| over the layer (1,) or per output channel (C,)."""
    dev = (w.detach().reshape(w.shape[0], -1) - offset.reshape(-1, 1)).abs() * mask.reshape(w.shape[0], -1)
    per = dev.max(1).values
    return per if per_channel else per.max().reshape(1)


def range_step(c: torch.Tensor, bits: int, grid: str) -> torch.Tensor:
    """Smallest step whose k-bit grid reaches c: c / top level (1.0 where c == 0)."""
    top = grid_levels(bits, grid)[1]
    return torch.where(c > 0, c / top, torch.ones_like(c)).float()


def allocate_bits(ranges: Sequence[float], kept: Sequence[int], avg_bits: float | None = None,
                  fixed_bits: int | None = None, min_bits: int = 2, max_bits: int = 8) -> list[int]:
    """OPQ (arXiv:2205.11141) step 4 (R): per-layer bit-widths k_i for kept counts n_i and ranges c_i.

    ``fixed_bits=k``: every layer k. ``avg_bits=B``: minimise sum_i Delta_i^2/12 subject to
    sum_i n_i k_i <= B sum_i n_i; stationarity gives Delta_i^2 = 6 lam n_i / ln 2 and
    k_i = ceil(log2(2 c_i / Delta_i + 1)) clipped to [min_bits, max_bits]; lam is the smallest
    meeting the budget (bisection), then leftover budget buys single bits where they cut the
    objective most. Layers with n_i = 0 get min_bits and cost nothing.
    """
    check_bits(min_bits, "min_bits"), check_bits(max_bits, "max_bits")
    if min_bits > max_bits:
        raise InputError(f"min_bits {min_bits} exceeds max_bits {max_bits}")
    if (avg_bits is None) == (fixed_bits is None):
        raise InputError("give exactly one of avg_bits and fixed_bits")
    if fixed_bits is not None:
        return [check_bits(fixed_bits, "fixed_bits")] * len(kept)
    if not isinstance(avg_bits, (int, float)) or math.isnan(avg_bits) or not min_bits <= avg_bits <= max_bits:
        raise InputError(f"avg_bits must lie in [min_bits, max_bits] = [{min_bits}, {max_bits}], got {avg_bits!r}")
    budget = avg_bits * sum(kept)

    def bits_at(log_lam: float) -> list[int]:
        out = []
        for c, n in zip(ranges, kept):
            delta = math.sqrt(6 * math.exp(log_lam) * max(n, 1) / math.log(2))
            k = math.ceil(math.log2(2 * c / delta + 1)) if c > 0 and n > 0 else min_bits
            out.append(min(max(k, min_bits), max_bits))
        return out

    lo, hi = -120.0, 120.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if sum(n * k for n, k in zip(kept, bits_at(mid))) <= budget else (mid, hi)
    return _top_up(bits_at(hi), ranges, kept, budget, max_bits)


def _top_up(bits: list[int], ranges: Sequence[float], kept: Sequence[int], budget: float, max_bits: int) -> list[int]:
    """Spend the budget left after integer rounding, one bit at a time, on the layer whose step error
    (c/(2^(k-1)))^2/12 drops most per stored bit."""
    bits = list(bits)
    while True:
        spent = sum(n * k for n, k in zip(kept, bits))
        gains = [((c / 2 ** (k - 1)) ** 2 - (c / 2 ** k) ** 2) / n if 0 < n <= budget - spent and k < max_bits
                 else -1.0 for c, n, k in zip(ranges, kept, bits)]
        best = max(range(len(bits)), key=lambda i: gains[i], default=None)
        if best is None or gains[best] <= 0:
            return bits
        bits[best] += 1


@dataclass
class LayerPlan:
    """One layer's frozen compression (OPQ, arXiv:2205.11141): mask (bool, weight shape), bits k,
    grid, offset m (float32 (C,) or (1,)), step Delta (float32 (1,) for a shared codebook, (C,) for
    the classic per-channel quantiser) and the allocated pruning ratio."""

    mask: torch.Tensor
    bits: int
    grid: str
    offset: torch.Tensor
    step: torch.Tensor
    ratio: float

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.mask.float().mean())


def plan_layers(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], avg_bits: float | None = None,
                fixed_bits: int | None = None, quantizer: str = "unified", grid: str = "midtread",
                min_bits: int = 2, max_bits: int = 8) -> dict[str, LayerPlan]:
    """OPQ steps 4-5: bit-widths, offsets and steps for given weights and masks (same keys)."""
    _choice(quantizer, QUANTIZERS, "quantizer"), _choice(grid, GRIDS, "grid")
    if grid == "midtread" and min(min_bits, fixed_bits or min_bits) < 2:
        raise InputError("the midtread grid needs bits >= 2")
    offsets = {k: quantizer_centres(w, masks[k], quantizer) for k, w in weights.items()}
    ranges = [float(quantizer_range(w, masks[k], offsets[k], False)) for k, w in weights.items()]
    kept = [int(masks[k].sum()) for k in weights]
    bits = allocate_bits(ranges, kept, avg_bits, fixed_bits, min_bits, max_bits)
    plans = {}
    for (name, w), k, n in zip(weights.items(), bits, kept):
        c = quantizer_range(w, masks[name], offsets[name], quantizer == "channelwise")
        plans[name] = LayerPlan(masks[name].clone(), k, grid, offsets[name], range_step(c, k, grid),
                                1.0 - n / w.numel())
    return plans


def opq_plan(model: nn.Module, sparsity: float, avg_bits: float | None = None, fixed_bits: int | None = None,
             prune_err: str = "relative", quantizer: str = "unified", grid: str = "midtread",
             min_bits: int = 2, max_bits: int = 8) -> dict[str, LayerPlan]:
    """OPQ (arXiv:2205.11141): the one-shot plan of every Linear/Conv weight of ``model`` (keys are
    parameter names), from its current (pre-trained) weights: ratios (:func:`allocate_sparsity`),
    empirical-quantile masks, bits (:func:`allocate_bits`), offsets and steps."""
    weights = {k: _check_weight(p, k) for k, p in prunable_weights(model).items()}
    ratios = allocate_sparsity(list(weights.values()), sparsity, prune_err)
    masks = dict(zip(weights, magnitude_masks(list(weights.values()), ratios)))
    plans = plan_layers(weights, masks, avg_bits, fixed_bits, quantizer, grid, min_bits, max_bits)
    for plan, ratio in zip(plans.values(), ratios):
        plan.ratio = ratio
    return plans


# ----------------------------------------------------------------------------- fine-tuning

class _MaskedSTE(torch.autograd.Function):
    """Forward: the codebook weights of w; backward: dW_hat/dW = M (straight-through, pruned get 0)."""

    @staticmethod
    def forward(ctx, w, quantizer):  # type: ignore[override]
        ctx.save_for_backward(quantizer.mask)
        return codebook_values(quantizer.levels(w), quantizer.mask, quantizer.offset, quantizer.step).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None


class FixedCodebookWeight(nn.Module):
    """OPQ (arXiv:2205.11141) step 6: a ``torch.nn.utils.parametrize`` parametrisation mapping the
    latent weight W (C, ...) to ``M * (m_c + Delta * clip(round((W - m_c)/Delta), q_lo, q_hi))``
    (midrise: floor + 1/2). M, m, Delta, k are buffers/ints, never updated; gradient = M * upstream."""

    def __init__(self, plan: LayerPlan) -> None:
        super().__init__()
        self.bits, self.grid = plan.bits, plan.grid
        self.lo, self.hi, self.zero = grid_levels(plan.bits, plan.grid)
        self.register_buffer("mask", plan.mask.clone())
        self.register_buffer("offset", plan.offset.detach().float().clone())
        self.register_buffer("step", plan.step.detach().float().clone())

    def levels(self, w: torch.Tensor) -> torch.Tensor:
        """Codebook level of every entry of ``w`` (float32, same shape; pruned entries too)."""
        ndim = w.dim()
        scaled = (w.detach().float() - self.offset.reshape(-1, *[1] * (ndim - 1))) / self.step.reshape(-1, *[1] * (ndim - 1))
        level = torch.round(scaled) if self.grid == "midtread" else torch.floor(scaled) + 0.5
        return level.clamp(self.lo, self.hi)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _MaskedSTE.apply(w, self)

    def compressed(self, w: torch.Tensor) -> CompressedLayer:
        """Codes of the kept entries of ``w`` plus this codebook, for :mod:`packed_format`."""
        codes = (self.levels(w)[self.mask] + self.zero).round().long()
        return CompressedLayer(tuple(w.shape), self.mask.cpu(), codes.cpu(), self.bits, self.zero,
                               self.offset.cpu(), self.step.cpu())


def _module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model


def attach_quantizers(model: nn.Module, plans: dict[str, LayerPlan]) -> nn.Module:
    """Register a :class:`FixedCodebookWeight` on each planned weight (keys ``"<module>.weight"``);
    returns ``model``. Train it as usual: only the latent weights (and other parameters) change.
    Every plan is checked before anything is attached; a weight that already carries an OPQ
    quantiser is refused (call :func:`bake` first to compress a compressed model again)."""
    if not isinstance(plans, dict) or not plans:
        raise InputError("plans must be a non-empty dict from opq_plan(model, ...)")
    attached = quantized_layers(model)
    modules = {}
    for name, plan in plans.items():
        module = _module_of(model, name) if _has_module(model, name) else None
        if not name.endswith("weight") or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise InputError(f"plan names '{name}', which is not a module weight of {type(model).__name__}")
        if name in attached:
            raise InputError(f"'{name}' already carries an OPQ quantiser: attach_quantizers was called twice; "
                             "call bake(model) first to quantise the compressed weights again")
        if isinstance(plan, LayerPlan) and (not torch.is_tensor(plan.mask) or plan.mask.dtype != torch.bool):
            raise InputError(f"plan of '{name}' needs a bool mask, got {getattr(plan.mask, 'dtype', type(plan.mask))}")
        if not isinstance(plan, LayerPlan) or tuple(plan.mask.shape) != tuple(module.weight.shape):
            shape = tuple(plan.mask.shape) if isinstance(plan, LayerPlan) else type(plan).__name__
            raise InputError(f"plan of '{name}' has shape {shape}, the weight {tuple(module.weight.shape)}")
        modules[name] = module
    for name, plan in plans.items():
        module = modules[name]
        device = module.weight.device
        plan = LayerPlan(plan.mask.to(device), plan.bits, plan.grid, plan.offset.to(device), plan.step.to(device), plan.ratio)
        parametrize.register_parametrization(module, "weight", FixedCodebookWeight(plan))
    return model


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        _module_of(model, name)
    except AttributeError:
        return False
    return True


def quantized_layers(model: nn.Module) -> dict[str, tuple[nn.Module, FixedCodebookWeight]]:
    """{"<module>.weight": (module, its FixedCodebookWeight)} for every attached quantiser."""
    out = {}
    for mname, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, FixedCodebookWeight):
                    out[f"{mname}.weight" if mname else "weight"] = (module, p)
    return out


@torch.no_grad()
def export_compressed(model: nn.Module) -> tuple[dict[str, CompressedLayer], dict[str, torch.Tensor]]:
    """(compressed layers, dense tensors) of a model with attached quantisers, keyed like the plain
    model's state dict; write them with ``honed.compress.packed_format.write_packed``."""
    layers = {name: q.compressed(module.parametrizations.weight.original)
              for name, (module, q) in quantized_layers(model).items()}
    dense = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if ".parametrizations." not in k and not k.startswith("parametrizations.") and k not in layers}
    return layers, dense


def bake(model: nn.Module) -> nn.Module:
    """Replace every attached quantiser by its compressed weight (a plain model again); returns it."""
    for module, _ in quantized_layers(model).values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def compression_rate_estimate(layers: dict[str, CompressedLayer], with_index: bool = True) -> float:
    """OPQ card step 7: 32 sum_i N_i / sum_i (n_i k_i [+ index bits]) over the compressed weights only
    (no codebooks, no dense tensors); the index is the relative index of :mod:`packed_format`."""
    from honed.compress.packed_format import encode_positions

    dense_bits = 32 * sum(math.prod(layer.shape) for layer in layers.values())
    bits = 0
    for layer in layers.values():
        bits += layer.codes.numel() * layer.bits
        if with_index:
            codes, gap_bits = encode_positions(layer.mask)
            bits += len(codes) * gap_bits
    return dense_bits / max(bits, 1)
