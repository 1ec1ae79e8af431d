"""HyperLISTA: LISTA with momentum and instance-adaptive thresholds, momentum and support selection,
tuned by three scalars (Chen, Liu, Wang, Yin, "Hyperparameter Tuning is All You Need for LISTA",
NeurIPS 2021, arXiv:2110.15900), beside the unrolled baselines it is measured against.

Problem: ``y = A x* + noise`` with ``A`` of shape (m, n), unit-norm columns, ``x*`` sparse. Every solver
is an ``nn.Module`` taking ``y`` of shape (B, m) and returning ``x_hat`` of shape (B, n);
``solver(y, return_iterates=True)`` also returns the K per-layer iterates (for NMSE-per-layer curves).

* :func:`analytic_weight` - ALISTA's analytic W = argmin ||W^T A||_F s.t. w_i^T a_i = 1 (closed form).
* :func:`support_selection_shrink` - eta_ss: the top ceil(p n) magnitudes of each row that are >= theta
  pass unchanged, the rest are soft-thresholded.
* :class:`ISTA`, :class:`FISTA` - classical solvers unrolled for K iterations (tau = 0.1).
* :class:`ALISTA` - analytic W, trainable per-layer step size and threshold, support-selection schedule.
* :class:`HyperLISTA` - analytic W, step 1/L, and per sample and layer:
  ``beta = c_beta ||x^k||_0``, ``theta = c_theta gamma ||A^+ (A x^k - y)||_1``,
  ``p = clip(c_p log(||A^+ y||_1 / ||A^+ (A x^k - y)||_1), 0, 1)``.
* :func:`grid_search_hyperlista` - picks (c_theta, c_beta, c_p) minimising sum ||x^K - x*||^2 on a batch.

One deviation from the reference code, on purpose: eta_ss bypasses the top ``ceil(p n)`` entries (so p = 0
is exactly soft-thresholding), where the reference's quantile at p = 0 still lets the row maximum bypass.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from honed.core.errors import InputError, check_count, check_number
from honed.core.seed import draw_device

EPS = 1e-12  # added to the l1 proxies so the log ratio for p stays finite when the residual vanishes


def _check_matrix(A: torch.Tensor) -> torch.Tensor:
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or min(A.shape) < 1:
        raise InputError(f"A must be a 2-D tensor (m, n), got {getattr(A, 'shape', type(A).__name__)}")
    if not torch.isfinite(A).all():
        raise InputError("A holds NaN or infinite entries")
    zero = torch.nonzero(A.norm(dim=0) == 0).flatten()
    if len(zero):
        raise InputError(f"column(s) {zero[:5].tolist()} of A are zero: every dictionary atom must be non-zero")
    return A


UNIT_TOLERANCE = 1e-3  # float32 rounding of a normalised column is ~1e-7; real misuse is far larger


def _check_unit_columns(A: torch.Tensor, solver: str) -> None:
    """InputError unless every column of A has l2 norm 1 (the problem HyperLISTA's thresholds assume)."""
    norms = A.double().norm(dim=0)
    worst = int((norms - 1).abs().argmax())
    if abs(float(norms[worst]) - 1) > UNIT_TOLERANCE:
        raise InputError(f"{solver} assumes unit-norm columns of A; column {worst} has norm {float(norms[worst]):.4g} "
                         "(normalise: A / A.norm(dim=0), and scale x by the same norms)")


def gaussian_sensing_matrix(m: int, n: int, generator: torch.Generator | None = None,
                            device: str | torch.device | None = None) -> torch.Tensor:
    """HyperLISTA (arXiv:2110.15900) dictionary: (m, n) entries N(0, 1/m), columns normalised to unit l2.
    Drawn on the generator's device (the CPU without one) and returned on ``device`` (default: there)."""
    check_count(m, "m"), check_count(n, "n")
    draw = draw_device(generator, "cpu")
    A = torch.randn(m, n, generator=generator, device=draw) / math.sqrt(m)
    return (A / A.norm(dim=0, keepdim=True)).to(draw if device is None else device)


def sample_sparse_signals(batch: int, n: int, p: float = 0.1, magnitude: str = "normal", scale: float = 1.0,
                          low: float = 0.5, high: float = 2.0, generator: torch.Generator | None = None,
                          device: str | torch.device | None = None) -> torch.Tensor:
    """HyperLISTA (arXiv:2110.15900) signals x* of shape (batch, n): Bernoulli(p) support times
    N(0, scale^2) (``magnitude="normal"``) or random sign times Uniform[low, high] (``"uniform"``).
    Drawn on the generator's device (the CPU without one) and returned on ``device`` (default: there)."""
    check_count(batch, "batch"), check_count(n, "n")
    draw = draw_device(generator, "cpu")
    if not 0.0 < p <= 1.0:
        raise InputError(f"p must lie in (0, 1], got {p}")
    support = torch.rand(batch, n, generator=generator, device=draw) < p
    if magnitude == "normal":
        values = check_number(scale, "scale", strict=True) * torch.randn(batch, n, generator=generator, device=draw)
    elif magnitude == "uniform":
        if not 0 <= low <= high:
            raise InputError(f"need 0 <= low <= high, got low={low}, high={high}")
        sign = torch.randint(0, 2, (batch, n), generator=generator, device=draw) * 2.0 - 1.0
        values = sign * (low + (high - low) * torch.rand(batch, n, generator=generator, device=draw))
    else:
        raise InputError(f"magnitude must be 'normal' or 'uniform', got {magnitude!r}")
    return (support * values).to(draw if device is None else device)


def measure(A: torch.Tensor, x: torch.Tensor, snr_db: float | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """HyperLISTA (arXiv:2110.15900) measurements y = x A^T (+ noise of std std(y) 10^(-snr/20) per row):
    x (B, n) -> y (B, m); ``snr_db=None`` is noiseless."""
    y = x @ A.T
    if snr_db is None:
        return y
    std = y.std(dim=1, keepdim=True) * 10 ** (-snr_db / 20)
    return y + std * torch.randn(y.shape, generator=generator, device=draw_device(generator, y.device)).to(y)


def analytic_weight(A: torch.Tensor) -> torch.Tensor:
    """ALISTA / HyperLISTA (arXiv:2110.15900) analytic weight W (m, n) = argmin ||W^T A||_F subject to
    w_i^T a_i = 1 for every column i. Closed form: w_i = G^-1 a_i / (a_i^T G^-1 a_i), G = A A^T
    (needs rank(A) = m). Computed in float64, returned in A's dtype and device."""
    A64 = _check_matrix(A).double()
    G = A64 @ A64.T
    try:
        solved = torch.linalg.solve(G, A64)
    except RuntimeError:
        raise InputError("A A^T is singular: the analytic weight needs A of full row rank") from None
    W = solved / (A64 * solved).sum(dim=0, keepdim=True)
    return W.to(A.dtype)


def coherence_objective(W: torch.Tensor, A: torch.Tensor) -> float:
    """HyperLISTA (arXiv:2110.15900) objective of the analytic weight: ||W^T A||_F for W, A of shape (m, n)."""
    return float((W.T @ A).norm())


def generalized_coherence(W: torch.Tensor, A: torch.Tensor) -> float:
    """HyperLISTA (arXiv:2110.15900) generalised coherence mu = max_{i != j} |w_i^T a_j| for (m, n) W, A."""
    gram = (W.T @ A).abs()
    return float(gram.fill_diagonal_(0).max())


def soft_threshold(z: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """ISTA / HyperLISTA (arXiv:2110.15900) soft-threshold sign(z) max(|z| - theta, 0); theta >= 0
    broadcasts against z (e.g. a float or a (B, 1) column)."""
    return z.sign() * torch.clamp(z.abs() - theta, min=0.0)


def _sort_rows(values: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending; on CPU through NumPy's vectorised sort (about 10x torch's here)."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(values.detach().numpy(), axis=1))
    return values.sort(dim=1).values


def support_selection_shrink(z: torch.Tensor, theta: torch.Tensor | float, p: torch.Tensor | float) -> torch.Tensor:
    """HyperLISTA / ALISTA (arXiv:2110.15900) support-selection shrinkage eta_ss on z of shape (B, n):
    per row, the ``ceil(p n)`` largest |z_i| (ties included) that are also >= theta pass unchanged, all
    other entries are soft-thresholded by theta. ``p`` in [0, 1] is a float or a (B,) / (B, 1) tensor;
    theta >= 0 is a float or a (B, 1) tensor. The selection carries no gradient; the kept values do."""
    if z.dim() != 2:
        raise InputError(f"z must have shape (B, n), got {tuple(z.shape)}")
    n = z.shape[1]
    p = torch.as_tensor(p, dtype=z.dtype, device=z.device).reshape(-1, 1)
    if p.shape[0] not in (1, z.shape[0]) or not ((p >= 0) & (p <= 1)).all():
        raise InputError(f"p must be one value or one per row, each in [0, 1], got shape {tuple(p.shape)}")
    with torch.no_grad():
        count = torch.ceil(p * n - 1e-4).clamp(0, n).long().expand(z.shape[0], 1)
        magnitude = z.abs()
        ascending = _sort_rows(magnitude)
        kth = ascending.gather(1, (n - count).clamp(max=n - 1))
        kth = torch.where(count > 0, kth, torch.full_like(kth, math.inf))
        bypass = (magnitude >= kth) & (magnitude >= theta)
    return torch.where(bypass, z, soft_threshold(z, theta))


def nmse_db(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """HyperLISTA (arXiv:2110.15900) NMSE in dB = 10 log10(sum ||x_hat - x||^2 / sum ||x||^2) over the
    batch (ratio of means, as the reference); x_hat, x of shape (B, n)."""
    return float(10 * torch.log10(((x_hat - x) ** 2).sum() / (x ** 2).sum()))


class UnrolledSolver(nn.Module):
    """HyperLISTA (arXiv:2110.15900) base of the unrolled solvers: holds A (m, n) and runs
    ``layers`` layers from x^0 = x^-1 = 0. Subclasses implement ``layer(k, x, x_prev, y, context)``."""

    def __init__(self, A: torch.Tensor, layers: int) -> None:
        super().__init__()
        _check_matrix(A)
        self.layers = check_count(layers, "layers")
        self.register_buffer("A", A.detach().clone())
        self.lipschitz = float(torch.linalg.matrix_norm(A.double(), ord=2) ** 2)  # ||A^T A||_2

    @property
    def n(self) -> int:
        return self.A.shape[1]

    def check_measurements(self, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[1] != self.A.shape[0]:
            raise InputError(f"y must have shape (B, {self.A.shape[0]}), got {getattr(y, 'shape', None)}")
        if not torch.isfinite(y).all():
            raise InputError("y holds NaN or infinite entries")
        return y.to(self.A.dtype)

    def prepare(self, y: torch.Tensor) -> object:
        return None

    def layer(self, k: int, x: torch.Tensor, x_prev: torch.Tensor, y: torch.Tensor, context: object) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, y: torch.Tensor, return_iterates: bool = False):
        y = self.check_measurements(y)
        x = x_prev = y.new_zeros(y.shape[0], self.n)
        context, iterates = self.prepare(y), []
        for k in range(self.layers):
            x, x_prev = self.layer(k, x, x_prev, y, context), x
            iterates.append(x)
        return (x, iterates) if return_iterates else x


class ISTA(UnrolledSolver):
    """ISTA for the LASSO (baseline of HyperLISTA, arXiv:2110.15900) unrolled for ``layers`` steps:
    x <- soft(x - (1/L) A^T (A x - y), tau / L). y (B, m) -> x_hat (B, n)."""

    def __init__(self, A: torch.Tensor, layers: int = 16, tau: float = 0.1) -> None:
        super().__init__(A, layers)
        self.tau = check_number(tau, "tau")

    def gradient_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        step = 1.0 / self.lipschitz
        return soft_threshold(x - step * (x @ self.A.T - y) @ self.A, self.tau * step)

    def layer(self, k, x, x_prev, y, context):
        return self.gradient_step(x, y)


class FISTA(ISTA):
    """FISTA (baseline of HyperLISTA, arXiv:2110.15900): ISTA's step taken at the Nesterov point
    x + ((t_k - 1) / t_{k+1}) (x - x_prev), t_0 = 1. y (B, m) -> x_hat (B, n)."""

    def prepare(self, y):
        t, weights = 1.0, []
        for _ in range(self.layers):
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            weights.append((t - 1) / t_next)
            t = t_next
        return weights

    def layer(self, k, x, x_prev, y, context):
        return self.gradient_step(x + context[k] * (x - x_prev), y)


class ALISTA(UnrolledSolver):
    """ALISTA (baseline of HyperLISTA, arXiv:2110.15900): analytic W, trainable per-layer step gamma^k
    (init 1/L) and threshold theta^k (init tau/L), support selection p^k = min(p_per_layer (k+1), p_max):
    x <- eta_ss(x - gamma^k W^T (A x - y); theta^k, p^k). y (B, m) -> x_hat (B, n). A must have
    unit-norm, non-zero columns (InputError otherwise)."""

    def __init__(self, A: torch.Tensor, layers: int = 16, W: torch.Tensor | None = None, tau: float = 0.1,
                 p_per_layer: float = 0.012, p_max: float = 0.13) -> None:
        super().__init__(A, layers)
        _check_unit_columns(A, "ALISTA")
        for name, value in (("p_per_layer", p_per_layer), ("p_max", p_max)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {value}")
        self.register_buffer("W", (analytic_weight(A) if W is None else W).detach().clone())
        self.p_schedule = [min(p_per_layer * (k + 1), p_max) for k in range(self.layers)]
        self.gamma = nn.Parameter(torch.full((self.layers,), 1.0 / self.lipschitz, dtype=A.dtype, device=A.device))
        self.theta = nn.Parameter(torch.full((self.layers,), check_number(tau, "tau") / self.lipschitz,
                                             dtype=A.dtype, device=A.device))

    def layer(self, k, x, x_prev, y, context):
        z = x - self.gamma[k] * (x @ self.A.T - y) @ self.W
        return support_selection_shrink(z, self.theta[k].clamp(min=0.0), self.p_schedule[k])


class HyperLISTA(UnrolledSolver):
    """HyperLISTA (arXiv:2110.15900): analytic W, step gamma = 1/L, momentum and instance-adaptive
    parameters from three constants. Per sample and layer k (r = A x^k - y, e = ||A^+ r||_1 + eps):
    beta = c_beta #{i: |x_i| > mag_ratio max|x|}; z = x - gamma W^T r + beta (x - x_prev);
    theta = c_theta gamma e; p = clip(c_p log((||A^+ y||_1 + eps) / e), 0, 1); x <- eta_ss(z; theta, p).
    y (B, m) -> x_hat (B, n). Nothing is trained: only (c_theta, c_beta, c_p) are tuned (see
    :func:`grid_search_hyperlista`); the practical model never sees x*. A must have unit-norm,
    non-zero columns (InputError otherwise)."""

    def __init__(self, A: torch.Tensor, layers: int = 16, c_theta: float = 5e-3, c_beta: float = 5e-3,
                 c_p: float = 0.5, W: torch.Tensor | None = None, mag_ratio: float = 0.0,
                 support_selection: bool = True) -> None:
        super().__init__(A, layers)
        _check_unit_columns(A, "HyperLISTA")
        self.c_theta, self.c_beta, self.c_p = (check_number(c_theta, "c_theta"), check_number(c_beta, "c_beta"),
                                               check_number(c_p, "c_p"))
        if not 0.0 <= mag_ratio < 1.0:
            raise InputError(f"mag_ratio must lie in [0, 1), got {mag_ratio}")
        self.mag_ratio, self.support_selection = mag_ratio, support_selection
        self.register_buffer("W", (analytic_weight(A) if W is None else W).detach().clone())
        self.register_buffer("A_pinv_t", torch.linalg.pinv(A.double()).T.to(A.dtype))  # (m, n)
        self.gamma = 1.0 / self.lipschitz
        self.constants: tuple | None = None  # per-row (B, 1) overrides, used by the grid search

    def prepare(self, y):
        l1_pinv_y = (y @ self.A_pinv_t).abs().sum(dim=1, keepdim=True) + EPS
        c = self.constants or (self.c_theta, self.c_beta, self.c_p)
        return l1_pinv_y, c

    def layer(self, k, x, x_prev, y, context):
        l1_pinv_y, (c_theta, c_beta, c_p) = context
        residual = x @ self.A.T - y
        error_proxy = (residual @ self.A_pinv_t).abs().sum(dim=1, keepdim=True) + EPS
        magnitude = x.abs()
        support = (magnitude > self.mag_ratio * magnitude.amax(dim=1, keepdim=True)).sum(dim=1, keepdim=True)
        beta = c_beta * support.to(x.dtype)
        z = x - self.gamma * residual @ self.W + beta * (x - x_prev)
        theta = c_theta * self.gamma * error_proxy
        if not self.support_selection:
            return soft_threshold(z, theta)
        with torch.no_grad():
            p = torch.clamp(c_p * torch.log(l1_pinv_y / error_proxy), 0.0, 1.0)
        return support_selection_shrink(z, theta, p)


@dataclass
class GridSearchResult:
    """HyperLISTA (arXiv:2110.15900) grid search outcome: the chosen constants and the loss table
    (sum ||x^K - x*||^2) of shape (len(c_theta), len(c_beta), len(c_p))."""

    c_theta: float
    c_beta: float
    c_p: float
    loss: torch.Tensor
    grid: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]


@torch.no_grad()
def grid_search_hyperlista(model: HyperLISTA, y: torch.Tensor, x: torch.Tensor, c_theta_grid, c_beta_grid,
                           c_p_grid) -> GridSearchResult:
    """HyperLISTA (arXiv:2110.15900) tuning: evaluate sum ||x^K - x*||^2 on one batch (y (B, m), x (B, n))
    for every (c_theta, c_beta, c_p) of the grids (vectorised over (c_theta, c_beta), one pass per c_p),
    set the model's constants to the minimiser (first one on ties) and return it with the table."""
    y = model.check_measurements(y)
    if x.shape != (y.shape[0], model.n):
        raise InputError(f"x must have shape ({y.shape[0]}, {model.n}), got {tuple(x.shape)}")
    grids = tuple(tuple(float(check_number(v, "grid value")) for v in g) for g in (c_theta_grid, c_beta_grid, c_p_grid))
    if not all(grids):
        raise InputError("every grid must hold at least one value")
    thetas, betas = torch.meshgrid(torch.tensor(grids[0]), torch.tensor(grids[1]), indexing="ij")
    pairs, batch = thetas.numel(), y.shape[0]
    col = lambda v: v.reshape(-1, 1).repeat_interleave(batch, 0).to(y)  # noqa: E731
    c_theta, c_beta = col(thetas), col(betas)
    loss = torch.empty(len(grids[0]), len(grids[1]), len(grids[2]), dtype=torch.float64, device=y.device)
    y_rep, x_rep = y.repeat(pairs, 1), x.to(y).repeat(pairs, 1)
    try:
        for j, c_p in enumerate(grids[2]):
            model.constants = (c_theta, c_beta, torch.full_like(c_theta, c_p))
            err = ((model(y_rep) - x_rep) ** 2).sum(dim=1).reshape(pairs, batch).sum(dim=1)
            loss[:, :, j] = err.double().reshape(thetas.shape)
    finally:
        model.constants = None
    flat = torch.nan_to_num(loss, nan=math.inf).flatten()
    i, b, j = torch.unravel_index(flat.argmin(), loss.shape)
    model.c_theta, model.c_beta, model.c_p = grids[0][i], grids[1][b], grids[2][j]
    return GridSearchResult(model.c_theta, model.c_beta, model.c_p, loss, grids)
