"""Progressive probabilistic search over the two-stream space (Auto-TSNet, "Searching for Two-Stream Models
in Multivariate Space for Video Recognition", arXiv:2108.12957), and the joint and random searches it is
compared with.

[R] search algorithm (the card's reading, FP-NAS/PARSEC style): a factorised categorical p_alpha(a) =
prod_v softmax(alpha_v) over the searched variables (:class:`ArchDistribution`). Each step samples K
architectures (K adaptive: from ``k_max`` at maximal entropy down to ``k_min``), takes one supernet weight
step per sample on a training batch, then moves alpha by the score-function gradient on a validation
batch: grad = (1/K) sum_k (l_k - b_k) grad log p(a_k), l_k = CE(a_k) + lambda * max(0, MACs(a_k) / F* - 1),
b_k = the mean loss of the other samples (leave-one-out, so the estimate is unbiased). The result is
argmax p_alpha. :func:`progressive_search` searches the streams, then the
fusions, then the attention blocks, freezing what earlier stages decided and continuing the same
supernet weights; :func:`joint_search` searches every variable at once with the same step budget.
Clips (B, 3, frames, size, size); labels (B,) long.
"""
import math
import random
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from honed.core.errors import InputError
from honed.core.loop import model_device
from honed.core.progress import progress_bar
from honed.vision.two_stream_space import TwoStreamNet, TwoStreamSpace, arch_macs

Batch = tuple[torch.Tensor, torch.Tensor]


class ArchDistribution:
    """Factorised categorical distribution over ``searched`` variables of ``space``; the other variables
    are ``fixed`` (a dict variable -> value) and never sampled."""

    def __init__(self, space: TwoStreamSpace, searched: list[str], fixed: dict) -> None:
        self.choices = dict(space.variables())
        unknown = [v for v in list(searched) + list(fixed) if v not in self.choices]
        overlap = set(searched) & set(fixed)
        uncovered = set(self.choices) - set(searched) - set(fixed)
        if unknown or overlap or uncovered or not searched:
            raise InputError(f"every variable must be searched or fixed, exactly once: unknown {unknown[:3]}, "
                             f"both {sorted(overlap)[:3]}, neither {sorted(uncovered)[:3]}")
        space.check_arch({**fixed, **{v: self.choices[v][0] for v in searched}})
        self.searched, self.fixed = list(searched), dict(fixed)
        self.logits = {v: torch.zeros(len(self.choices[v]), dtype=torch.float64) for v in self.searched}
        self.running_loss: float | None = None

    def probs(self, variable: str) -> torch.Tensor:
        return self.logits[variable].softmax(0)

    def sample(self, gen: torch.Generator) -> tuple[dict, dict[str, int]]:
        """(architecture, {searched variable: sampled choice index})."""
        picks = {v: int(torch.multinomial(self.probs(v), 1, generator=gen)) for v in self.searched}
        return {**self.fixed, **{v: self.choices[v][i] for v, i in picks.items()}}, picks

    def argmax(self) -> dict:
        return {**self.fixed, **{v: self.choices[v][int(self.logits[v].argmax())] for v in self.searched}}

    def entropy(self) -> float:
        return float(sum(-(p * p.clamp_min(1e-12).log()).sum() for p in map(self.probs, self.searched)))

    def max_entropy(self) -> float:
        return sum(math.log(len(self.choices[v])) for v in self.searched)

    def adaptive_k(self, k_min: int, k_max: int) -> int:
        """Samples per step: k_max at maximal entropy, shrinking linearly to k_min as the entropy drops."""
        return max(k_min, min(k_max, round(k_min + (k_max - k_min) * self.entropy() / max(self.max_entropy(), 1e-12))))

    def score_function_gradient(self, picks: list[dict[str, int]], losses: list[float]) -> dict[str, torch.Tensor]:
        """Unbiased REINFORCE estimate of d E[l] / d alpha_v: (1/K) sum_k (l_k - b_k) (onehot(a_k,v) - p_v)
        with the leave-one-out mean b_k of the other samples' losses (the card's mean-loss baseline made
        unbiased); with K = 1, b is a running mean of earlier losses (0 update on the first step)."""
        if len(picks) != len(losses) or not picks:
            raise InputError("need one loss per sampled architecture")
        k, total = len(losses), sum(losses)
        if k > 1:
            baselines = [(total - loss) / (k - 1) for loss in losses]
        else:
            baselines = [losses[0] if self.running_loss is None else self.running_loss]
        self.running_loss = total / k if self.running_loss is None else 0.9 * self.running_loss + 0.1 * total / k
        grads = {}
        for v in self.searched:
            p = self.probs(v)
            grad = torch.zeros_like(p)
            for pick, loss, base in zip(picks, losses, baselines):
                onehot = torch.zeros_like(p)
                onehot[pick[v]] = 1.0
                grad += (loss - base) * (onehot - p)
            grads[v] = grad / k
        return grads

    def score_function_step(self, picks: list[dict[str, int]], losses: list[float], lr: float) -> None:
        """alpha_v -= lr * :meth:`score_function_gradient` (a descent step on the expected loss)."""
        for v, grad in self.score_function_gradient(picks, losses).items():
            self.logits[v] -= lr * grad


def flops_penalty(macs: int, target: float, lam: float) -> float:
    """Hinge-linear penalty lambda * max(0, MACs / target - 1)."""
    return lam * max(0.0, macs / target - 1.0)


def search_stage(net: TwoStreamNet, dist: ArchDistribution, train: Iterator[Batch], val: Iterator[Batch], steps: int,
                 optimizer: torch.optim.Optimizer, target_macs: float, lam: float = 1.0, lr_alpha: float = 0.5,
                 k_range: tuple[int, int] = (1, 4), gen: torch.Generator | None = None) -> dict:
    """``steps`` search steps on the shared supernet ``net`` (batches move to its device); returns
    {"weight_updates", "entropy"}."""
    gen, device = gen or torch.Generator().manual_seed(0), model_device(net)
    updates, entropy = 0, []
    net.train()
    with progress_bar(steps, "supernet search") as bar:
        for _ in range(steps):
            samples = [dist.sample(gen) for _ in range(dist.adaptive_k(*k_range))]
            for arch, _ in samples:
                x, y = (t.to(device) for t in next(train))
                loss = F.cross_entropy(net(x, arch), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                updates += 1
            x, y = (t.to(device) for t in next(val))
            with torch.no_grad():  # batch statistics: the supernet's running stats mix architectures
                losses = [float(F.cross_entropy(net(x, arch), y)) + flops_penalty(arch_macs(net.space, arch),
                                                                                   target_macs, lam)
                          for arch, _ in samples]
            dist.score_function_step([p for _, p in samples], losses, lr_alpha)
            entropy.append(dist.entropy())
            bar.advance()
    return {"weight_updates": updates, "entropy": entropy}


def cycle_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled mini-batches (reshuffled every pass, order fixed by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            yield x[idx], y[idx]


def variable_groups(space: TwoStreamSpace) -> dict[str, list[str]]:
    """The progressive stages' variables: the streams' blocks, the fusions, the attention blocks."""
    names = [v for v, _ in space.variables()]
    return {"streams": [v for v in names if v.startswith(("slow.", "fast."))],
            "fusion": [v for v in names if v.startswith("fusion.")],
            "attention": [v for v in names if v.startswith("attention.")]}


def _run_stages(space: TwoStreamSpace, plan: list[tuple[list[str], int]], decided: dict, train: Iterator[Batch],
                val: Iterator[Batch], target_macs: float, seed: int, device: torch.device | str, lr: float,
                **search_kw) -> dict:
    torch.manual_seed(seed)
    net = TwoStreamNet(space).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    gen, start, updates, entropy = torch.Generator().manual_seed(seed + 1), time.process_time(), 0, []
    for searched, steps in plan:
        dist = ArchDistribution(space, searched, {v: a for v, a in decided.items() if v not in searched})
        out = search_stage(net, dist, train, val, steps, optimizer, target_macs, gen=gen, **search_kw)
        decided, updates, entropy = dist.argmax(), updates + out["weight_updates"], entropy + out["entropy"]
    return {"arch": decided, "weight_updates": updates, "cpu_s": time.process_time() - start, "entropy": entropy}


def progressive_search(space: TwoStreamSpace, train: Iterator[Batch], val: Iterator[Batch],
                       steps: tuple[int, int, int], target_macs: float, seed: int = 0,
                       device: torch.device | str | None = None, lr: float = 3e-3, **search_kw) -> dict:
    """Auto-TSNet's progressive procedure: streams (fusions fixed to ``lateral``, attention ``off``), then
    fusions, then attention, ``steps`` search steps each, one supernet throughout, on ``device`` (default:
    torch's default device; batches move there). Returns {"arch", "weight_updates", "cpu_s" (process CPU
    seconds: host time only, not a GPU's), "entropy" (per step)}."""
    groups = variable_groups(space)
    defaults = {v: "lateral" for v in groups["fusion"]} | {v: "off" for v in groups["attention"]}
    plan = [(groups[g], n) for g, n in zip(("streams", "fusion", "attention"), steps)]
    return _run_stages(space, plan, defaults, train, val, target_macs, seed, device, lr, **search_kw)


def joint_search(space: TwoStreamSpace, train: Iterator[Batch], val: Iterator[Batch], steps: int, target_macs: float,
                 seed: int = 0, device: torch.device | str | None = None, lr: float = 3e-3, **search_kw) -> dict:
    """The non-progressive baseline: every variable searched at once for ``steps`` steps."""
    plan = [([v for v, _ in space.variables()], steps)]
    return _run_stages(space, plan, {}, train, val, target_macs, seed, device, lr, **search_kw)


def random_search(space: TwoStreamSpace, train: Iterator[Batch], val_x: torch.Tensor, val_y: torch.Tensor,
                  weight_updates: int, candidates: int, target_macs: float, seed: int = 0,
                  make_net: Callable | None = None, lr: float = 3e-3) -> dict:
    """Random search at the same budget: ``candidates`` architectures drawn uniformly among those with
    modelled MACs <= ``target_macs``, each trained from scratch for weight_updates // candidates steps
    and ranked by validation accuracy. Returns {"arch", "weight_updates", "cpu_s", "val_acc"}."""
    from honed.vision.two_stream_space import FixedArchNet

    if candidates < 1 or weight_updates < candidates:
        raise InputError(f"need candidates >= 1 and weight_updates >= candidates, got {candidates}, {weight_updates}")
    rng, start, scored = random.Random(seed), time.process_time(), []
    variables = space.variables()
    for c in range(candidates):
        for _ in range(10_000):
            arch = {v: rng.choice(choices) for v, choices in variables}
            if arch_macs(space, arch) <= target_macs:
                break
        torch.manual_seed(seed * 1000 + c)
        net = (make_net or FixedArchNet)(space, arch).to(val_x.device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        net.train()
        for _ in range(weight_updates // candidates):
            x, y = (t.to(val_x.device) for t in next(train))
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(val_x).argmax(1) == val_y).float().mean())
        scored.append((acc, c, arch))
    best = max(scored, key=lambda s: (s[0], -s[1]))
    return {"arch": best[2], "weight_updates": (weight_updates // candidates) * candidates,
            "cpu_s": time.process_time() - start, "val_acc": [s[0] for s in scored]}
