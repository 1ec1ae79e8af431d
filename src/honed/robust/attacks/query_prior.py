"""Query prior attacks: one (or a few) victim queries give the victim's high-probability wrong classes,
and the surrogate's loss is augmented to push towards them (Query prior-based method to boost the
transferability of adversarial attacks, Yang et al., arXiv:2205.09518). Plus the query-only baseline the
card compares against: a score-based random-sign search with the same few victim queries.

Inputs everywhere: x float (N, ...) in [0, 1], y int64 (N,) true labels; attacks are untargeted L-inf.
Reconstructed (R) in the card, kept as named options with its defaults: the WACE loss body (``top_n`` = 1,
weights = victim softmax over the selected classes), the query schedule ``query_num`` = 1, and the
random-sign search's resampling fraction (``resample_fraction``).
"""
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.core.seed import draw_device
from honed.robust.attacks.base import Attack, check_count, check_number, eval_mode
from honed.robust.attacks.gradient import project_linf

MODES = ("fgsm", "ifgsm", "mifgsm")
LOSSES = ("wace", "ce")
VICTIM_OUTPUTS = ("logits", "probabilities")


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def query_prior(victim_scores: torch.Tensor, y: torch.Tensor, top_n: int = 1,
                victim_output: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
    """The query prior of arXiv:2205.09518: the victim's top-``top_n`` wrong classes and their weights.

    victim_scores: (N, K) victim logits (``victim_output="logits"``) or probabilities; y: int64 (N,).
    The true class is masked before picking (never selected); ``top_n`` is capped at K - 1. Weights
    (N, n) sum to 1 per row: softmax of the selected logits, or the selected probabilities renormalised
    (a softmax of probabilities would be wrong). Returns (classes int64 (N, n), weights float (N, n)).
    """
    if victim_scores.dim() != 2 or len(victim_scores) != len(y):
        raise InputError(f"victim scores must be (N, K) with N = {len(y)}, got {tuple(victim_scores.shape)}")
    if not torch.isfinite(victim_scores).all():
        raise InputError("victim scores contain NaN or infinite values")
    _check_choice(victim_output, "victim_output", VICTIM_OUTPUTS)
    check_count(top_n, "top_n")
    scores = victim_scores.detach().float()
    if victim_output == "probabilities" and (scores.min() < 0 or scores.max() > 1):
        raise InputError("victim probabilities must lie in [0, 1]")
    n = min(top_n, scores.shape[1] - 1)
    masked = scores.scatter(1, y.view(-1, 1), float("-inf"))
    selected, classes = masked.topk(n, dim=1)
    if victim_output == "logits":
        weights = selected.softmax(dim=1)
    else:
        total = selected.sum(dim=1, keepdim=True)
        weights = torch.where(total > 0, selected / total.clamp_min(1e-12), torch.full_like(selected, 1.0 / n))
    return classes, weights


def wace_loss(surrogate_logits: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor,
              reduction: str = "mean") -> torch.Tensor:
    """Weighted augmented cross-entropy (arXiv:2205.09518, loss body reconstructed (R)), maximised:
    L = CE(z, y) - sum_m w_m CE(z, j_m), with (classes, weights) from :func:`query_prior`.

    surrogate_logits: (N, K); y: int64 (N,); classes int64 (N, n); weights (N, n).
    ``reduction``: "mean" (batch mean, the card's), "sum" or "none" ((N,) per example).
    """
    log_probs = F.log_softmax(surrogate_logits, dim=1)
    true_ce = -log_probs.gather(1, y.view(-1, 1)).squeeze(1)
    prior_ce = -(weights.to(log_probs) * log_probs.gather(1, classes)).sum(dim=1)
    per_example = true_ce - prior_ce
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    if reduction == "mean":
        return per_example.mean()
    raise InputError(f"reduction must be mean, sum or none, got {reduction!r}")


def query_steps(steps: int, query_num: int) -> list[int]:
    """The card's schedule: victim queries before steps floor(T/Q) * i, i = 0..Q-1 (step 0 = clean)."""
    if query_num > steps:
        raise InputError(f"query_num ({query_num}) must not exceed the number of steps ({steps})")
    return [(steps // query_num) * i for i in range(query_num)] if query_num else []


def default_steps(eps: float) -> int:
    """The card's I-FGSM step rule for steps=0: T = floor(min(255 eps + 4, 1.25 * 255 eps)), at least 1."""
    return max(1, int(min(255 * eps + 4, 1.25 * 255 * eps)))


class _VictimQueries(Attack):
    """Shared black-box bookkeeping: ``self.model`` is the victim, queried only by :meth:`query`.

    Per call, ``last_stats.forwards`` is the number of batched victim calls and ``queries_used`` (N,)
    the per-example victim queries (an example is queried when it is in the batch forwarded);
    ``last_stats.queries_to_success`` is the query count at which each example was first seen
    adversarial (-1 never). No victim gradient is ever taken (``backwards`` stays 0). Success is
    decided by counted queries only, so the base's uncounted verification forward is switched off.
    """

    verify = False

    def __init__(self, victim: nn.Module, *, max_queries: int) -> None:
        super().__init__(victim)
        self.max_queries = check_count(max_queries, "max_queries")
        self.queries_used: torch.Tensor | None = None

    def _start(self, x: torch.Tensor) -> None:
        self.queries_used = torch.zeros(len(x), dtype=torch.long, device=x.device)
        self._stats.queries_to_success = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        self._stats.success = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    @torch.no_grad()
    def query(self, x_rows: torch.Tensor, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One counted victim call on the examples ``rows`` (int64 indices); returns their victim
        scores and records first successes. Raises when an example would exceed ``max_queries``."""
        if bool((self.queries_used[rows] >= self.max_queries).any()):
            raise RuntimeError("query budget exceeded: this is a bug in the attack")
        scores = self.logits(x_rows)
        self.queries_used[rows] += 1
        fooled = scores.argmax(1) != y[rows]
        newly = rows[fooled & ~self._stats.success[rows]]
        self._stats.queries_to_success[newly] = self.queries_used[newly]
        self._stats.success[rows] |= fooled
        return scores


class QueryPriorAttack(_VictimQueries):
    """Q-FGSM / Q-I-FGSM / Q-MI-FGSM (Query prior-based transfer attack, arXiv:2205.09518).

    victim: black-box classifier, only queried (forwards, no gradients), returning logits or
    probabilities (``victim_output``); surrogate: white-box classifier whose input gradient drives the
    FGSM-family update. x float (N, ...) in [0, 1], y int64 (N,); returns x_adv with
    ||x_adv - x||_inf <= eps, in [0, 1].

    ``loss="wace"``: the surrogate objective is :func:`wace_loss` with the prior of the last victim
    query, taken at steps :func:`query_steps` (T, ``query_num``) - between queries it is reused.
    ``loss="ce"`` with ``query_num=0`` is the plain transfer attack (the card's CE baseline).
    ``final_query`` adds one victim query at x_adv to decide success; ``early_stop`` freezes an
    example at the first query that finds it adversarial (no further queries or updates).
    ``max_queries`` (default: query_num + final_query) is the per-example victim budget, never exceeded.
    Steps (card's code defaults): fgsm = one step of size eps; ifgsm: ``steps`` 0 = :func:`default_steps`,
    ``alpha`` 1/255; mifgsm: ``steps`` 0 = 5, ``alpha`` eps / 4 (2/255 at eps 8/255), momentum
    g <- grad / mean|grad| + ``decay`` * g.
    """

    def __init__(self, victim: nn.Module, surrogate: nn.Module, *, mode: str = "ifgsm", eps: float = 4 / 255,
                 alpha: float | None = None, steps: int = 0, decay: float = 1.0, loss: str = "wace",
                 query_num: int = 1, top_n: int = 1, victim_output: str = "logits", final_query: bool = True,
                 early_stop: bool = True, max_queries: int | None = None, targeted: bool = False) -> None:
        if targeted:
            raise InputError("targeted query-prior attacks are not implemented (card: secondary)")
        if not isinstance(surrogate, nn.Module):
            raise InputError(f"surrogate must be a torch.nn.Module, got {type(surrogate).__name__}")
        self.mode = _check_choice(mode, "mode", MODES)
        self.loss = _check_choice(loss, "loss", LOSSES)
        self.victim_output = _check_choice(victim_output, "victim_output", VICTIM_OUTPUTS)
        self.query_num = check_count(query_num, "query_num", minimum=1 if loss == "wace" else 0)
        self.top_n = check_count(top_n, "top_n")
        self.final_query, self.early_stop = bool(final_query), bool(early_stop)
        needed = self.query_num + int(self.final_query)
        if needed == 0:
            raise InputError("an attack with query_num=0 needs final_query=True to know anything about the victim")
        budget = needed if max_queries is None else check_count(max_queries, "max_queries")
        if budget < needed:
            raise InputError(f"max_queries ({budget}) is below query_num + final_query ({needed})")
        super().__init__(victim, max_queries=budget)
        self.surrogate = surrogate
        self.eps = check_number(eps, "eps")
        auto_steps = {"fgsm": 1, "ifgsm": default_steps(self.eps), "mifgsm": 5}[mode]
        self.steps = 1 if mode == "fgsm" else (check_count(steps, "steps", 0) or auto_steps)
        auto_alpha = {"fgsm": self.eps, "ifgsm": 1 / 255, "mifgsm": self.eps / 4}[mode]
        self.alpha = auto_alpha if alpha is None or mode == "fgsm" else check_number(alpha, "alpha", strict=True)
        self.decay = check_number(decay, "decay") if mode == "mifgsm" else 0.0
        self.schedule = query_steps(self.steps, self.query_num)
        self.surrogate_passes = 0

    def surrogate_grad(self, x_adv: torch.Tensor, y: torch.Tensor, prior) -> torch.Tensor:
        """Input gradient of the ascent objective (WACE with ``prior`` or CE) on the surrogate."""
        x_adv = x_adv.detach().requires_grad_(True)
        logits = self.surrogate(x_adv)
        if self.loss == "wace":
            objective = wace_loss(logits, y, *prior, reduction="sum")
        else:
            objective = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(objective, [x_adv])
        self.surrogate_passes += 1
        return grad

    def _update_prior(self, x_adv, y, active, prior):
        """Query the victim on the active examples; return their new prior merged into ``prior``."""
        scores = self.query(x_adv[active], active, y)
        classes, weights = query_prior(scores, y[active], self.top_n, self.victim_output)
        if prior is None:
            n = classes.shape[1]
            prior = (torch.zeros(len(y), n, dtype=torch.long, device=y.device),
                     torch.zeros(len(y), n, dtype=weights.dtype, device=y.device))
        prior[0][active], prior[1][active] = classes, weights
        return prior

    def _active(self, n: int, device) -> torch.Tensor:
        alive = ~self._stats.success if self.early_stop else torch.ones(n, dtype=torch.bool, device=device)
        return torch.nonzero(alive).flatten()

    def perturb(self, x, y):
        self._start(x)
        self.surrogate_passes = 0
        x_adv, momentum, prior = x.clone(), torch.zeros_like(x), None
        with eval_mode(self.surrogate):
            for step in range(self.steps):
                active = self._active(len(x), x.device)
                if step in self.schedule and len(active):
                    prior = self._update_prior(x_adv, y, active, prior)
                    active = self._active(len(x), x.device)
                if not len(active):
                    break
                sub_prior = None if prior is None else (prior[0][active], prior[1][active])
                grad = self.surrogate_grad(x_adv[active], y[active], sub_prior)
                if self.mode == "mifgsm":
                    scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                    momentum[active] = self.decay * momentum[active] + grad / scale
                    grad = momentum[active]
                x_adv[active] = project_linf(x_adv[active] + self.alpha * grad.sign(), x[active], self.eps)
        self._stats.iterations, self._stats.backwards = self.steps, 0
        active = self._active(len(x), x.device)
        if self.final_query and len(active):
            self.query(x_adv[active], active, y)
        return x_adv


class RandomSignSearch(_VictimQueries):
    """Score-based query-only baseline without a prior (the card's "random-sign search", in the spirit
    of SimBA arXiv:1905.07121 / Square Attack arXiv:1912.00049), L-inf, untargeted.

    Per example and query: the first query scores the clean image, the second a random vertex
    x + eps * s (s uniform in {-1, +1}^d), later ones resample a random ``resample_fraction`` (R) of the
    best vertex's signs; the best vertex is the one with the lowest victim margin (true-class logit minus
    the largest other). Stops an example on success; at most ``max_queries`` victim queries each.
    ``surrogate`` (optional): a transfer prior - the first vertex is then Q-FGSM's direction,
    sign(grad_x WACE) on the surrogate with the prior of the clean query (``top_n`` classes), instead
    of a random one. x float (N, ...) in [0, 1], y int64 (N,); returns the best vertex (clipped to [0, 1]).
    """

    def __init__(self, victim: nn.Module, *, eps: float = 0.1, max_queries: int = 5, resample_fraction: float = 0.1,
                 surrogate: nn.Module | None = None, top_n: int = 1, generator: torch.Generator | None = None,
                 targeted: bool = False) -> None:
        if targeted:
            raise InputError("targeted random-sign search is not implemented")
        if surrogate is not None and not isinstance(surrogate, nn.Module):
            raise InputError(f"surrogate must be a torch.nn.Module or None, got {type(surrogate).__name__}")
        super().__init__(victim, max_queries=max_queries)
        self.surrogate, self.top_n = surrogate, check_count(top_n, "top_n")
        self.eps = check_number(eps, "eps")
        self.resample_fraction = check_number(resample_fraction, "resample_fraction", strict=True)
        if self.resample_fraction > 1:
            raise InputError(f"resample_fraction must lie in (0, 1], got {resample_fraction!r}")
        self.generator = generator

    def _random_signs(self, shape, device) -> torch.Tensor:
        draw = draw_device(self.generator, device)  # on the generator's device, used on x's
        return (torch.rand(shape, generator=self.generator, device=draw) < 0.5).float().mul(2).sub(1).to(device)

    @staticmethod
    def margin(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        true = scores.gather(1, y.view(-1, 1)).squeeze(1)
        return true - scores.scatter(1, y.view(-1, 1), float("-inf")).amax(1)

    def prior_signs(self, x: torch.Tensor, y: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """sign(grad_x WACE) on the surrogate at x with the prior of ``scores`` (zeros map to +1)."""
        classes, weights = query_prior(scores, y, self.top_n)
        x_in = x.detach().requires_grad_(True)
        with eval_mode(self.surrogate):
            (grad,) = torch.autograd.grad(wace_loss(self.surrogate(x_in), y, classes, weights, "sum"), [x_in])
        return torch.where(grad >= 0, 1.0, -1.0).to(x)

    def perturb(self, x, y):
        self._start(x)
        scores = self.query(x, torch.arange(len(x), device=x.device), y)
        best_margin = self.margin(scores, y)
        if self.surrogate is None:
            best_signs = self._random_signs(x.shape, x.device)
        else:
            best_signs = self.prior_signs(x, y, scores)
        best_x = x.clone()
        for query_index in range(1, self.max_queries):
            rows = torch.nonzero(~self._stats.success).flatten()
            if not len(rows):
                break
            signs = best_signs[rows]
            if query_index > 1:
                draw = draw_device(self.generator, x.device)
                resample = torch.rand(signs.shape, generator=self.generator, device=draw).to(x.device) \
                    < self.resample_fraction
                signs = torch.where(resample, self._random_signs(signs.shape, x.device), signs)
            candidate = (x[rows] + self.eps * signs).clamp(0, 1)
            margin = self.margin(self.query(candidate, rows, y), y[rows])
            better = margin < best_margin[rows]
            keep = rows[better]
            best_margin[keep], best_signs[keep], best_x[keep] = margin[better], signs[better], candidate[better]
        self._stats.iterations = self.max_queries
        return best_x
