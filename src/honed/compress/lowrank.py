"""Low-rank approximation (LRA) of conv and linear layers by uncentred PCA of their filters, with the
layers physically replaced so the model really holds fewer parameters and runs fewer MACs (the LRA
step of Force Regularization, Wen et al., "Coordinating Filters for Faster Deep Neural Networks",
arXiv:1703.09746; the reference code's ``lra_type pca``).

A layer's weight is viewed as W in R^{N x D}: N filters (output channels / rows), D = C*kh*kw (or
in_features). PCA here is the eigen-decomposition of W W^T, i.e. the SVD W = U S V^T with energy
lambda_k = sigma_k^2 and NO mean subtraction (the card's pitfall: centring needs a bias path).
With the top-K eigenvectors U_K (N x K) and B_K = U_K^T W (K x D):

* ``Conv2d(C -> N, k)``  becomes ``Conv2d(C -> K, k, same stride/padding/dilation, weights B_K, no
  bias)`` then ``Conv2d(K -> N, 1x1, weights U_K, the original bias)`` (``Conv1d`` / ``Conv3d`` alike);
* ``Linear(D -> N)`` becomes ``Linear(D -> K, no bias)`` then ``Linear(K -> N, original bias)``.

MACs per output pixel go from N*D to K*D + N*K (:func:`lowrank_mac_ratio`). Fewer MACs and parameters
are not speed: one layer becomes two, and on a CPU the pair can be slower than the original. Measure
with :func:`decomposition_cost`, which reports latency beside size. Grouped (e.g. depthwise) convs
have no filter matrix to factor: they are skipped with a warning (or refused when named).
"""
import copy
import statistics
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from honed.core.errors import InputError, check_count
from honed.core.measure import count_macs, count_params, median_latency

ENERGY_TOLERANCE = 1e-6  # slack on cumulative ratios: float32 weights round them by ~1e-7


def filter_matrix(weight: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """A weight of shape (N, ...) with >= 2 axes as the float64 matrix W (N, D), one filter per row."""
    if not torch.is_tensor(weight) or weight.dim() < 2:
        raise InputError(f"{name}: low-rank approximation needs a weight with >= 2 axes, "
                         f"got shape {tuple(getattr(weight, 'shape', ()))}")
    matrix = weight.detach().reshape(weight.shape[0], -1).double()
    if not torch.isfinite(matrix).all():
        raise InputError(f"{name} contains NaN or infinite entries")
    return matrix


def pca_energy(weight: torch.Tensor) -> torch.Tensor:
    """Force Regularization (arXiv:1703.09746): energies lambda_k = sigma_k^2 of the uncentred PCA of
    the filters of ``weight`` (N, ...), descending, shape (min(N, D),), float64."""
    return torch.linalg.svdvals(filter_matrix(weight)).pow(2)


def check_energy(energy: float, name: str = "energy") -> float:
    """Return ``energy`` or raise InputError unless 0 < energy <= 1."""
    if not isinstance(energy, (int, float)) or not 0 < float(energy) <= 1:
        raise InputError(f"{name} must be a ratio in (0, 1], got {energy!r}")
    return float(energy)


def rank_for_energy(energies: torch.Tensor, energy: float) -> int:
    """Smallest K with sum_{k<=K} lambda_k / sum lambda >= ``energy`` (up to ENERGY_TOLERANCE), for
    descending ``energies``. ``energy=1`` keeps every component (exact reconstruction); an all-zero
    weight has rank 1 (a layer keeps at least one basis filter)."""
    energy = check_energy(energy)
    total = float(energies.sum())
    if energy == 1.0:
        return len(energies)
    if total <= 0:
        return 1
    ratios = torch.cumsum(energies.double(), 0) / total
    meets = torch.nonzero(ratios >= energy - ENERGY_TOLERANCE).flatten()
    return int(meets[0]) + 1 if len(meets) else len(energies)


def select_rank(weight: torch.Tensor, energy: float = 0.95) -> int:
    """Force Regularization (arXiv:1703.09746), ``--rankratio``: the smallest K whose top-K PCA
    energies (sigma^2, uncentred) hold at least ``energy`` in (0, 1] of the total, for a weight of
    shape (N, ...) with >= 2 axes. 1 <= K <= min(N, D)."""
    return rank_for_energy(pca_energy(weight), energy)


def energy_in_top(weight: torch.Tensor, k: int) -> float:
    """Fraction of the PCA energy of ``weight`` (N, ...) held by its top ``k`` components, in [0, 1]
    (a measure of how concentrated the filters are: 1 means rank <= k)."""
    energies = pca_energy(weight)
    total = float(energies.sum())
    return float(energies[:k].sum()) / total if total > 0 else 1.0


def pca_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Force Regularization (arXiv:1703.09746): W (N, D) ~= basis @ coefficients with basis = U_K
    (N, K), the top-K eigenvectors of W W^T, and coefficients = U_K^T W (K, D). Float64."""
    matrix = filter_matrix(weight)
    if not 1 <= rank <= min(matrix.shape):
        raise InputError(f"rank must lie in [1, {min(matrix.shape)}] for a weight of shape "
                         f"{tuple(weight.shape)}, got {rank}")
    u, _, _ = torch.linalg.svd(matrix, full_matrices=False)
    basis = u[:, :rank]
    return basis, basis.T @ matrix


def lowrank_mac_ratio(filters: int, depth: int, rank: int) -> float:
    """MACs of the decomposed layer over the original per output pixel: (K*D + N*K) / (N*D)."""
    return (rank * depth + filters * rank) / (filters * depth)


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _unsupported(name: str, module: nn.Module, why: str = "") -> InputError:
    return InputError(f"low-rank decomposition cannot handle layer '{name}' ({type(module).__name__}{why}); "
                      "supported: nn.Conv1d/2d/3d with groups=1 and nn.Linear")


def _supported(module: nn.Module) -> bool:
    return (isinstance(module, CONVS) and module.groups == 1) or isinstance(module, nn.Linear)


def decompose_conv(conv: nn.Conv2d, rank: int, name: str = "conv") -> nn.Sequential:
    """Force Regularization (arXiv:1703.09746), step 6: ``conv`` (C -> N, kh x kw, groups=1) as
    Sequential(Conv2d(C -> rank, same kernel/stride/padding/dilation/padding_mode, no bias),
    Conv2d(rank -> N, 1x1, the original bias)) built from the PCA factors; input (B, C, H, W).
    An ``nn.Conv1d`` / ``nn.Conv3d`` becomes the same pair of its own type."""
    if not isinstance(conv, CONVS) or conv.groups != 1:
        raise _unsupported(name, conv, f", groups={getattr(conv, 'groups', '?')}")
    basis, coefficients = pca_factors(conv.weight, rank)
    weight, kind = conv.weight, type(conv)
    first = kind(conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                 bias=False, padding_mode=conv.padding_mode, device=weight.device, dtype=weight.dtype)
    second = kind(rank, conv.out_channels, 1, bias=conv.bias is not None, device=weight.device,
                  dtype=weight.dtype)
    with torch.no_grad():
        first.weight.copy_(coefficients.reshape(rank, *weight.shape[1:]))
        second.weight.copy_(basis.reshape(conv.out_channels, rank, *[1] * (weight.dim() - 2)))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def decompose_linear(linear: nn.Linear, rank: int, name: str = "linear") -> nn.Sequential:
    """Force Regularization (arXiv:1703.09746), step 6 for FC layers: ``linear`` (D -> N) as
    Sequential(Linear(D -> rank, no bias), Linear(rank -> N, the original bias)); input (B, D)."""
    if not isinstance(linear, nn.Linear):
        raise _unsupported(name, linear)
    basis, coefficients = pca_factors(linear.weight, rank)
    weight = linear.weight
    first = nn.Linear(linear.in_features, rank, bias=False, device=weight.device, dtype=weight.dtype)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        first.weight.copy_(coefficients)
        second.weight.copy_(basis)
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second)


@dataclass(frozen=True)
class LayerRank:
    """The LRA decision for one layer: N filters of depth D, chosen rank K, whether it was replaced
    (``decomposed``; False when K*(D+N) >= N*D, i.e. no MACs saved) and the energy the K components hold."""

    name: str
    filters: int
    depth: int
    rank: int
    decomposed: bool
    energy_kept: float

    @property
    def mac_ratio(self) -> float:
        return lowrank_mac_ratio(self.filters, self.depth, self.rank) if self.decomposed else 1.0


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise InputError(f"layer '{name}' not found in {type(model).__name__}; layers with weights: "
                         f"{', '.join(n for n, m in modules.items() if _supported(m))}")
    return modules[name]


def default_layers(model: nn.Module) -> list[str]:
    """Every Conv1d/2d/3d with groups=1 and every Linear of ``model``, by qualified name. Grouped convs
    (depthwise included) and transposed convs are left out with a warning naming them."""
    skipped = [f"{n} ({type(m).__name__}, groups={m.groups})" for n, m in model.named_modules()
               if isinstance(m, nn.modules.conv._ConvNd) and not _supported(m)]
    if skipped:
        warnings.warn(f"low-rank decomposition leaves {len(skipped)} layer(s) as they are (grouped or "
                      f"transposed convs have no filter matrix to factor): {', '.join(skipped)}", stacklevel=3)
    return [n for n, m in model.named_modules() if _supported(m)]


def _fixed_rank(ranks: dict[str, int], name: str, limit: int) -> int:
    rank = ranks[name]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"ranks['{name}'] must be an integer >= 1 (a layer keeps at least one basis "
                         f"filter), got {rank!r}")
    return min(rank, limit)


def plan_ranks(model: nn.Module, energy: float = 0.95, layers: list[str] | tuple[str, ...] | None = None,
               ranks: dict[str, int] | None = None, only_if_cheaper: bool = True) -> list[LayerRank]:
    """Force Regularization (arXiv:1703.09746), step 5: the PCA rank of each layer of ``layers``
    (default: :func:`default_layers`) at ``energy`` in (0, 1], or the fixed ``ranks[name]`` when given
    (an integer >= 1, capped at min(N, D); a key naming no planned layer is refused). With
    ``only_if_cheaper`` a layer whose factors would not save MACs is kept."""
    check_energy(energy)
    names = default_layers(model) if layers is None else list(layers)
    stray = sorted(set(ranks or {}) - set(names))
    if stray:
        raise InputError(f"ranks name layers that are not decomposed here: {stray}; planned layers: {names}")
    plan = []
    for name in names:
        module = _module(model, name)
        if not _supported(module):
            raise _unsupported(name, module, f", groups={module.groups}" if isinstance(module, CONVS) else "")
        energies = pca_energy(module.weight)
        n, d = module.weight.shape[0], module.weight[0].numel()
        rank = rank_for_energy(energies, energy) if ranks is None or name not in ranks \
            else _fixed_rank(ranks, name, len(energies))
        cheaper = rank * (n + d) < n * d
        kept = float(energies[:rank].sum() / energies.sum()) if float(energies.sum()) > 0 else 1.0
        plan.append(LayerRank(name, n, d, rank, cheaper or not only_if_cheaper, kept))
    return plan


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def decompose_model(model: nn.Module, energy: float = 0.95, layers: list[str] | tuple[str, ...] | None = None,
                    ranks: dict[str, int] | None = None, only_if_cheaper: bool = True,
                    inplace: bool = False) -> tuple[nn.Module, list[LayerRank]]:
    """Force Regularization (arXiv:1703.09746), steps 5-6: replace each layer of :func:`plan_ranks`
    by its two-layer PCA factorisation (:func:`decompose_conv` / :func:`decompose_linear`).

    Returns (the decomposed model - a deep copy unless ``inplace`` - and the per-layer plan). The
    model keeps its input/output shapes; at ``energy=1.0`` its outputs equal the original's up to
    float rounding. Unsupported layers or ``energy`` outside (0, 1] raise InputError naming them.
    Fewer MACs need not run faster: check with :func:`decomposition_cost`.
    """
    plan = plan_ranks(model, energy, layers, ranks, only_if_cheaper)
    target = model if inplace else copy.deepcopy(model)
    for layer in plan:
        if not layer.decomposed:
            continue
        module = target.get_submodule(layer.name)
        build = decompose_conv if isinstance(module, CONVS) else decompose_linear
        _set_module(target, layer.name, build(module, layer.rank, layer.name))
    return target, plan


def decomposition_cost(original: nn.Module, decomposed: nn.Module, example: torch.Tensor,
                       rounds: int = 5, repeats: int = 10) -> dict[str, float]:
    """Size AND speed of a low-rank decomposition side by side (Force Regularization, arXiv:1703.09746,
    claims faster networks; fewer MACs do not guarantee that). ``example``: one input batch for both
    models. Returns params, MACs (one forward of ``example``) and median wall latency in ms of each
    model, timed in ``rounds`` interleaved rounds of ``repeats`` runs, plus ``speedup`` (median of the
    per-round latency ratios original / decomposed; < 1 means the decomposed model is slower here).
    Both models are measured in eval mode and every submodule's train/eval flag is restored."""
    from honed.core.modes import eval_mode

    if not torch.is_tensor(example) or example.dim() < 1 or len(example) == 0:
        raise InputError("example must be a non-empty input batch tensor")
    rounds, repeats = check_count(rounds, "rounds"), check_count(repeats, "repeats")
    with eval_mode(original), eval_mode(decomposed):
        out = {"params_original": float(count_params(original)),
               "params_decomposed": float(count_params(decomposed)),
               "macs_original": float(count_macs(original, example)),
               "macs_decomposed": float(count_macs(decomposed, example))}
        times: dict[str, list[float]] = {"original": [], "decomposed": []}
        for _ in range(rounds):
            for key, model in (("original", original), ("decomposed", decomposed)):
                times[key].append(median_latency(model, example, repeats=repeats, warmup=2))
    out["latency_ms_original"] = 1e3 * statistics.median(times["original"])
    out["latency_ms_decomposed"] = 1e3 * statistics.median(times["decomposed"])
    out["speedup"] = statistics.median(a / b for a, b in zip(times["original"], times["decomposed"]))
    return out
