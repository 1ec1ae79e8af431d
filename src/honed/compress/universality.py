"""IMP as a renormalisation-group flow: states of the flow, its linearised operator by exact dynamic
mode decomposition (DMD), and spectral distances between flows (method card 26, "ticket
universality"; the RG view of IMP after Redman et al., "Universality of winning tickets: a
renormalization group perspective", arXiv:2110.03210).

Each IMP level k gives a state s_k (k = 0..K). The RG map R: s_k -> s_{k+1} is linearised by exact
DMD on the snapshot pairs ([s_0..s_{K-1}], [s_1..s_K]); flows whose DMD eigenvalues are close are
predicted to share tickets. Everything below the flow itself is our reconstruction (R) of the paper's
analysis, each choice a named option keeping the card's default:

* ``representation`` (R): ``"full"`` - the vector of all pruned-layer weights with zeros at pruned
  positions (same init => aligned coordinates; card 2a), or ``"quantiles"`` - per layer ``Q``
  quantiles of |w| over surviving weights plus the layer density (permutation-invariant; card 2b);
* ``centre`` (R): subtract the fixed-point estimate s_K (``"last"``) or nothing (``"none"``);
* ``energy`` / ``max_rank`` (R): SVD truncation at 99% energy and rank <= K-1;
* ``distance`` (R): ``"sorted-modulus"`` (mean |l_a - l_b| after sorting each spectrum by modulus,
  zero-padded to equal length) or ``"wasserstein"`` (W1 between the equal-weight eigenvalue point
  clouds in the complex plane, zero-padded, by optimal assignment).
"""
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from honed.compress.masks import Mask
from honed.core.errors import InputError

REPRESENTATIONS = ("full", "quantiles")
CENTRES = ("last", "none")
DISTANCES = ("sorted-modulus", "wasserstein")


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def full_state(weights: dict[str, torch.Tensor], mask: Mask) -> torch.Tensor:
    """Card 2a: the masked weights of the layers of ``mask`` (in its key order), flattened to one
    float64 vector of length sum(numel), on the CPU whatever the weights' device (the flow analysis
    below is a small float64 / NumPy computation over stored levels)."""
    missing = [k for k in mask if k not in weights]
    if missing:
        raise InputError(f"weights have no layer '{missing[0]}' named by the mask")
    return torch.cat([(weights[k].detach().double() * mask[k].to(weights[k].device)).flatten().cpu()
                      for k in mask])


def quantile_state(weights: dict[str, torch.Tensor], mask: Mask, num_quantiles: int = 32) -> torch.Tensor:
    """Card 2b: per layer of ``mask``, ``num_quantiles`` quantiles (levels 0..1 evenly spaced) of |w|
    over the surviving entries, then the layer density; float64 vector of length
    ``len(mask) * (num_quantiles + 1)``, on the CPU like :func:`full_state`. A layer with no survivor
    contributes zeros. Invariant to permuting hidden units (it only sees the multiset of surviving
    magnitudes)."""
    if not isinstance(num_quantiles, int) or num_quantiles < 2:
        raise InputError(f"num_quantiles must be an integer >= 2, got {num_quantiles!r}")
    levels = torch.linspace(0, 1, num_quantiles, dtype=torch.float64)
    parts = []
    for name, keep in mask.items():
        if name not in weights:
            raise InputError(f"weights have no layer '{name}' named by the mask")
        alive = weights[name].detach().double().cpu()[keep.cpu()].abs()
        q = torch.quantile(alive, levels) if alive.numel() else torch.zeros(num_quantiles, dtype=torch.float64)
        parts += [q, torch.tensor([alive.numel() / keep.numel()], dtype=torch.float64)]
    return torch.cat(parts)


def flow_states(weights: Sequence[dict[str, torch.Tensor]], masks: Sequence[Mask],
                representation: str = "full", num_quantiles: int = 32) -> torch.Tensor:
    """The IMP flow as a (K+1, D) float64 tensor, row k = state of level k (``weights[k]`` under
    ``masks[k]``), in the chosen ``representation`` (R, see module docstring)."""
    _check_choice(representation, REPRESENTATIONS, "representation")
    if len(weights) != len(masks) or len(weights) < 2:
        raise InputError(f"need matching weights and masks for >= 2 levels, got {len(weights)} and {len(masks)}")
    if representation == "full":
        return torch.stack([full_state(w, m) for w, m in zip(weights, masks)])
    return torch.stack([quantile_state(w, m, num_quantiles) for w, m in zip(weights, masks)])


@dataclass
class DMDResult:
    """Exact DMD of snapshot pairs: ``eigenvalues`` (rank,) complex128 and ``modes`` (D, rank)
    complex128 of the reduced operator ``A_tilde`` (rank, rank); ``singular_values`` of X."""

    eigenvalues: torch.Tensor
    modes: torch.Tensor
    reduced_operator: torch.Tensor
    singular_values: torch.Tensor
    rank: int


def exact_dmd(x: torch.Tensor, y: torch.Tensor, energy: float = 0.99, max_rank: int | None = None,
              rank: int | None = None, rtol: float = 1e-10) -> DMDResult:
    """Exact DMD (Tu et al. 2014, arXiv:1312.0041) of snapshot matrices ``x``, ``y`` (D, K): columns
    are states, ``y[:, j] = R(x[:, j])``.

    X = U S V^T truncated to rank r: ``rank`` if given, else the smallest r holding ``energy`` of
    sum(S^2), capped at ``max_rank`` (None: no cap); singular values below ``rtol * S_max`` are always
    dropped. A_tilde = U_r^T Y V_r S_r^-1, eigenvalues of A_tilde, modes Y V_r S_r^-1 W.
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise InputError(f"x and y must be (D, K) matrices of one shape, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if not 0 < energy <= 1:
        raise InputError(f"energy must lie in (0, 1], got {energy}")
    x, y = x.double(), y.double()
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise InputError("snapshots contain NaN or infinite values")
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    usable = int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    if usable == 0:
        raise InputError("snapshot matrix x is zero; the flow has no dynamics to decompose")
    if rank is None:
        share = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
        rank = int((share < energy - 1e-12).sum()) + 1
        rank = min(rank, max_rank) if max_rank is not None else rank
    rank = max(1, min(rank, usable))
    u_r, s_r, v_r = u[:, :rank], s[:rank], vh[:rank].T
    y_v_sinv = y @ v_r / s_r
    reduced = u_r.T @ y_v_sinv
    eigenvalues, w = torch.linalg.eig(reduced)
    modes = y_v_sinv.to(torch.complex128) @ w
    return DMDResult(eigenvalues, modes, reduced, s, rank)


def flow_spectrum(states: torch.Tensor, centre: str = "last", energy: float = 0.99,
                  max_rank: int | None = -1) -> DMDResult:
    """Card step 3 (R): DMD of the flow ``states`` (K+1, D) with S = [s_0..s_{K-1}],
    S' = [s_1..s_K] as columns, after subtracting s_K (``centre="last"``) or not. ``max_rank=-1``
    means K-1 (the card's cap); None means no cap."""
    _check_choice(centre, CENTRES, "centre")
    if states.dim() != 2 or len(states) < 3:
        raise InputError(f"states must be (K+1, D) with K >= 2 levels, got {tuple(states.shape)}")
    states = states.double()
    if centre == "last":
        states = states - states[-1]
    k = len(states) - 1
    cap = k - 1 if max_rank == -1 else max_rank
    return exact_dmd(states[:-1].T, states[1:].T, energy=energy, max_rank=cap)


def _padded(a: torch.Tensor, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.complex128)
    out[:len(a)] = a.detach().cpu().numpy().astype(np.complex128)
    return out


def _sorted_by_modulus(values: np.ndarray) -> np.ndarray:
    order = np.lexsort((-values.imag, -values.real, -np.round(np.abs(values), 12)))
    return values[order]


def spectral_distance(a: torch.Tensor, b: torch.Tensor, method: str = "sorted-modulus") -> float:
    """Card step 4 (R): distance between two eigenvalue sets (1-D complex or real tensors).

    Both are zero-padded to equal length (a missing eigenvalue = a fully irrelevant direction).
    ``sorted-modulus``: mean |a_i - b_i| after sorting each by decreasing modulus;
    ``wasserstein``: W1 between the equal-weight point clouds in C (optimal assignment, mean cost).
    Symmetric, >= 0 and 0 for identical spectra.
    """
    _check_choice(method, DISTANCES, "distance")
    n = max(len(a), len(b))
    if n == 0:
        return 0.0
    pa, pb = _padded(a, n), _padded(b, n)
    if method == "sorted-modulus":
        return float(np.mean(np.abs(_sorted_by_modulus(pa) - _sorted_by_modulus(pb))))
    from scipy.optimize import linear_sum_assignment

    cost = np.abs(pa[:, None] - pb[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length sequences; NaN for fewer than 3 pairs or a
    constant sequence (nothing to rank)."""
    if len(x) != len(y):
        raise InputError(f"x and y must have one length, got {len(x)} and {len(y)}")
    if len(x) < 3 or np.ptp(np.asarray(x, float)) == 0 or np.ptp(np.asarray(y, float)) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)
