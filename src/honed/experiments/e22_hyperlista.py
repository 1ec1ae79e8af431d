"""22-hyperlista: HyperLISTA (3 tuned constants) vs ISTA, FISTA and end-to-end trained ALISTA on synthetic
sparse recovery, seen and unseen signal distributions (Hyperparameter Tuning is All You Need for LISTA,
arXiv:2110.15900).

Per seed: A (m x n, N(0, 1/m), unit columns), x* = Bernoulli(p) x N(0, 1), y = A x* (noiseless). ISTA and
FISTA (tau = 0.1) need nothing; ALISTA learns its per-layer step sizes and thresholds with Adam on the
training set (loss ||x^K - x*||^2); HyperLISTA's (c_theta, c_beta, c_p) come from a grid search on ONE
training batch. All four are evaluated (NMSE per layer) on a fresh test set of the training distribution
and on five unseen ones (sparsity 0.05 / 0.15 / 0.2; magnitudes N(0, 2^2) and +-U[0.5, 2]).
"""
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.evidence import Apply, Stat
from honed.core.experiment import Claim, Experiment, Precondition, SeedOutput, register_experiment
from honed.core.progress import progress_bar
from honed.sequence.hyperlista import (ALISTA, FISTA, ISTA, HyperLISTA, analytic_weight, gaussian_sensing_matrix,
                                       generalized_coherence, grid_search_hyperlista, measure, nmse_db,
                                       sample_sparse_signals)

ARMS = ("ista", "fista", "alista", "hyperlista")
# name -> (sparsity p, magnitude law, scale); the first is the training distribution
SETTINGS = {
    "seen": (0.1, "normal", 1.0),
    "p0.05": (0.05, "normal", 1.0),
    "p0.15": (0.15, "normal", 1.0),
    "p0.2": (0.2, "normal", 1.0),
    "normal_std2": (0.1, "normal", 2.0),
    "uniform_0.5_2": (0.1, "uniform", 1.0),
}
UNSEEN = tuple(s for s in SETTINGS if s != "seen")


@dataclass(frozen=True)
class HyperLISTAConfig(ExperimentConfig):
    """Defaults are the ``small`` preset (m=125, n=250, K=16, train 8k, test 2k per setting, 3 seeds so
    the intervals cover the draw of A and the training as well as the test instances; one seed measured
    about 1 min of CPU time, 4 min wall on the shared 2-core machine). The grid ranges are log-spaced and
    wider than the reference's linspace(1e-3, 1e-2) (whose argmin sat on its upper c_theta edge at this
    size): they were chosen on a training batch of a separate seed (100), never on test data."""

    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1
    m: int = 125
    n: int = 250
    layers: int = 16
    sparsity: float = 0.1
    train_size: int = 8192
    test_size: int = 2048
    tau: float = 0.1
    alista_steps: int = 300
    alista_batch: int = 256
    alista_lr: float = 1e-2
    alista_lr_end: float = 1e-3
    grid_batch: int = 256
    grid_points: int = 11
    c_theta_range: tuple[float, float] = (0.01, 0.1)
    c_beta_range: tuple[float, float] = (0.01, 0.1)
    c_p_range: tuple[float, float] = (0.3, 10.0)
    mag_ratio: float = 0.0

    @classmethod
    def smoke(cls) -> "HyperLISTAConfig":
        return replace(cls(), seeds=(0,), m=50, n=100, layers=8, train_size=1024, test_size=512, alista_steps=60,
                       alista_batch=128, grid_batch=128, grid_points=5)

    @classmethod
    def full(cls) -> "HyperLISTAConfig":
        return replace(cls(), seeds=(0, 1, 2), m=250, n=500, train_size=51200, alista_steps=2000, grid_batch=512)

    def validate(self) -> None:
        for name in ("m", "n", "layers", "train_size", "test_size", "alista_steps", "alista_batch",
                     "grid_batch", "grid_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.m < self.n:
            raise ConfigError(f"need m < n (under-determined), got m={self.m}, n={self.n}")
        if self.grid_batch > self.train_size or self.alista_batch > self.train_size:
            raise ConfigError("grid_batch and alista_batch must not exceed train_size")
        for name in ("c_theta_range", "c_beta_range", "c_p_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"{name} must be (low, high) with 0 < low <= high, got {(low, high)}")


def make_problem(cfg: HyperLISTAConfig, seed: int) -> dict[str, Any]:
    """Dictionary, training set and one test set per setting, all drawn from the seed's generator."""
    gen = torch.Generator().manual_seed(seed)
    A = gaussian_sensing_matrix(cfg.m, cfg.n, gen)
    x_train = sample_sparse_signals(cfg.train_size, cfg.n, cfg.sparsity, generator=gen)
    tests = {}
    for name, (p, law, scale) in SETTINGS.items():
        x = sample_sparse_signals(cfg.test_size, cfg.n, p, magnitude=law, scale=scale, generator=gen)
        tests[name] = (measure(A, x), x)
    return {"A": A, "train": (measure(A, x_train), x_train), "tests": tests}


@torch.no_grad()
def layer_curves(solver: torch.nn.Module, tests: dict) -> dict[str, Any]:
    """Per test setting: NMSE (dB) after each layer (``curves``) and, after the last layer, each test
    instance's squared error over the setting's mean signal energy (``final``: ||x^K_i - x*_i||^2 /
    mean_j ||x*_j||^2, whose mean is the setting's linear NMSE, so arms compare instance by instance)."""
    curves, final = {}, {}
    for name, (y, x) in tests.items():
        _, iterates = solver(y, return_iterates=True)
        curves[name] = [nmse_db(it, x) for it in iterates]
        energy = (x ** 2).sum(dim=1).mean()
        final[name] = (((iterates[-1] - x) ** 2).sum(dim=1) / energy).tolist()
    return {"curves": curves, "final": final}


def decibels(stat: Stat) -> Stat:
    """10 log10 of a statistic (the linear NMSE of an arm -> its NMSE in dB)."""
    return 10 * Apply(np.log10, (stat,), "log10")


def at_most(stat: Stat, bound: float) -> Stat:
    """1 where ``stat <= bound`` else 0 (a per-replicate indicator, summed to count settings)."""
    return Apply(lambda v: (np.asarray(v) <= bound).astype(float), (stat,), f"<={bound:g}")


def train_alista(cfg: HyperLISTAConfig, problem: dict, seed: int) -> dict[str, Any]:
    """ALISTA trained end to end: Adam, lr cosine from alista_lr to alista_lr_end, loss ||x^K - x*||^2."""
    start = time.perf_counter()
    model = ALISTA(problem["A"], cfg.layers, W=analytic_weight(problem["A"]), tau=cfg.tau)
    y, x = problem["train"]
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.alista_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.alista_steps, eta_min=cfg.alista_lr_end)
    with progress_bar(cfg.alista_steps, "22-hyperlista ALISTA") as bar:
        for _ in range(cfg.alista_steps):
            idx = torch.randint(0, y.shape[0], (cfg.alista_batch,), generator=gen)
            loss = ((model(y[idx]) - x[idx]) ** 2).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.advance()
    return {**layer_curves(model, problem["tests"]), "final_train_loss": float(loss.detach()),
            "gamma": model.gamma.tolist(), "theta": model.theta.tolist(), "time_s": time.perf_counter() - start}


def tune_hyperlista(cfg: HyperLISTAConfig, problem: dict) -> dict[str, Any]:
    """Grid search of (c_theta, c_beta, c_p) on the first training batch, then evaluation."""
    start = time.perf_counter()
    model = HyperLISTA(problem["A"], cfg.layers, mag_ratio=cfg.mag_ratio)
    y, x = problem["train"]
    grids = [np.geomspace(*getattr(cfg, f"{c}_range"), cfg.grid_points) for c in ("c_theta", "c_beta", "c_p")]
    found = grid_search_hyperlista(model, y[:cfg.grid_batch], x[:cfg.grid_batch], *grids)
    edges = [name for name, grid, value in zip(("c_theta", "c_beta", "c_p"), found.grid,
                                               (found.c_theta, found.c_beta, found.c_p))
             if len(grid) > 1 and value in (grid[0], grid[-1])]
    return {**layer_curves(model, problem["tests"]), "c_theta": found.c_theta, "c_beta": found.c_beta,
            "c_p": found.c_p, "grid_loss_min": float(found.loss.min()), "argmin_on_grid_edge": edges,
            "time_s": time.perf_counter() - start}


@register_experiment
class HyperLISTAExperiment(Experiment):
    id = "22-hyperlista"
    title = "HyperLISTA: LISTA with momentum and instance-adaptive parameters (3 hyperparameters)"
    family = "sequence"
    paper = "Hyperparameter Tuning is All You Need for LISTA (arXiv:2110.15900)"
    summary = ("Synthetic sparse recovery y = A x* (A m x n Gaussian with unit columns, x* Bernoulli(0.1) x "
               "N(0,1)). ISTA and FISTA (tau 0.1), ALISTA (analytic W, per-layer step and threshold trained "
               "end to end with Adam) and HyperLISTA (analytic W, momentum, threshold and support-selection "
               "ratio computed per sample from ||A^+(A x^k - y)||_1 and ||x^k||_0; only 3 constants, grid-"
               "searched on one training batch) are unrolled for K layers and compared by NMSE (dB) per layer "
               "on the training distribution and five unseen ones (other sparsity, other magnitudes).")
    Config = HyperLISTAConfig
    method = ("hyperlista",)
    baselines = ("ista", "fista", "alista")
    components = ("honed.sequence.hyperlista:HyperLISTA", "honed.sequence.hyperlista:grid_search_hyperlista",
                  "honed.sequence.hyperlista:ALISTA", "honed.sequence.hyperlista:analytic_weight",
                  "honed.sequence.hyperlista:support_selection_shrink")
    reconstructed = (
        "small scale (m=125, n=250, K=16, 8k train) instead of m=250, n=500, 51k train (card's reproduction)",
        "ALISTA trained end to end (Adam, cosine lr 1e-2 -> 1e-3, 300 steps) instead of the reference's "
        "layer-wise progressive schedule (card's reproduction)",
        "grid: 11 log-spaced points per constant over wider ranges than the reference's (picked on a training "
        "batch of seed 100), scored on one batch of 256",
        "eta_ss bypasses the top ceil(p n) entries (p = 0 is exact soft-thresholding), not a quantile",
    )
    claims_tested = (
        "HyperLISTA final NMSE within ~2 dB of ALISTA on the training distribution",
        "HyperLISTA equal or better than ALISTA on >= 3 of 5 unseen distributions",
        "ALISTA and HyperLISTA both >= 15 dB better than ISTA at K layers",
    )

    def run_seed(self, cfg: HyperLISTAConfig, seed: int, ctx: Any) -> SeedOutput:
        problem = make_problem(cfg, seed)
        A = problem["A"]
        results = {
            "ista": ctx.cached("ista", lambda: layer_curves(ISTA(A, cfg.layers, cfg.tau), problem["tests"])),
            "fista": ctx.cached("fista", lambda: layer_curves(FISTA(A, cfg.layers, cfg.tau), problem["tests"])),
            "alista": ctx.cached("alista", lambda: train_alista(cfg, problem, seed)),
            "hyperlista": ctx.cached("hyperlista", lambda: tune_hyperlista(cfg, problem)),
        }
        arms = {arm: {**{f"nmse_{s}": results[arm]["final"][s] for s in SETTINGS},
                      **{f"nmse_db_{s}": results[arm]["curves"][s][-1] for s in SETTINGS}} for arm in ARMS}
        curves = {f"NMSE dB {s}": {arm: results[arm]["curves"][s] for arm in ARMS} for s in SETTINGS}
        hyper = results["hyperlista"]
        extra = {"hyperlista_constants": {k: hyper[k] for k in ("c_theta", "c_beta", "c_p")},
                 "hyperlista_argmin_on_grid_edge": hyper["argmin_on_grid_edge"],
                 "alista_gamma": results["alista"]["gamma"], "alista_theta": results["alista"]["theta"],
                 "lipschitz": float(torch.linalg.matrix_norm(A.double(), ord=2) ** 2),
                 "generalized_coherence": generalized_coherence(analytic_weight(A), A),
                 "alista_time_s": results["alista"]["time_s"], "hyperlista_time_s": hyper["time_s"]}
        return SeedOutput(arms=arms, extra=extra, curves=curves)

    def claims(self, cfg: HyperLISTAConfig, result: Any) -> list[Claim]:
        db = lambda arm, s: decibels(result.metric(arm, f"nmse_{s}"))  # noqa: E731
        trained = ("alista trained beyond fista",)
        gaps = {s: db("hyperlista", s) - db("alista", s) for s in SETTINGS}
        wins = sum((at_most(gaps[s], 0.0) for s in UNSEEN[1:]), at_most(gaps[UNSEEN[0]], 0.0))
        return [
            Claim.check("seen: hyperlista - alista NMSE (dB)", gaps["seen"], "<=", 2.0,
                        "card: HyperLISTA final NMSE within ~2 dB of ALISTA on the seen distribution",
                        metric="nmse_seen", requires=trained),
            *[Claim.check(f"unseen {s}: hyperlista - alista NMSE (dB)", gaps[s], "<=", 0.0,
                          "card: HyperLISTA equal or better than ALISTA on unseen distributions",
                          metric=f"nmse_{s}", requires=trained) for s in UNSEEN],
            Claim.check("unseen settings where hyperlista <= alista (of 5)", wins, ">=", 3,
                        "card: equal or better on >= 3 of 5 unseen settings (the count is bootstrapped with "
                        "the test instances)", metric="nmse_unseen", requires=trained),
            Claim.check("seen: ista - alista NMSE (dB)", db("ista", "seen") - db("alista", "seen"), ">=", 15.0,
                        f"card: ALISTA >= 15 dB better than ISTA at K={cfg.layers}", metric="nmse_seen", requires=()),
            Claim.check("seen: ista - hyperlista NMSE (dB)", db("ista", "seen") - db("hyperlista", "seen"), ">=",
                        15.0, f"card: HyperLISTA >= 15 dB better than ISTA at K={cfg.layers}", metric="nmse_seen",
                        requires=()),
        ]

    def preconditions(self, cfg: HyperLISTAConfig, result: Any) -> list[Precondition]:
        db = lambda arm: decibels(result.metric(arm, "nmse_seen"))  # noqa: E731
        return [Precondition.check(
            "alista trained beyond fista", db("fista") - db("alista"), ">", 0.0,
            "'HyperLISTA matches ALISTA' means something only if ALISTA's learned steps and thresholds beat "
            "the untrained FISTA on its own training distribution (an under-trained ALISTA is easy to match)")]

    def notes(self, cfg: HyperLISTAConfig, result: Any) -> list[str]:
        mean = result.mean
        table = "; ".join(f"{s}: " + ", ".join(f"{a} {mean(a, f'nmse_db_{s}'):.1f}" for a in ARMS) for s in SETTINGS)
        lines = [f"final-layer NMSE (dB, K={cfg.layers}) per setting: {table}."]
        per_seed = result.extra.get("hyperlista_constants", {}).get("values", [])
        edges = result.extra.get("hyperlista_argmin_on_grid_edge", {}).get("values", [])
        for seed, consts, edge in zip(result.seeds, per_seed, edges):
            lines.append(f"seed {seed}: grid search chose " + ", ".join(f"{k} {v:.4g}" for k, v in consts.items())
                         + (f" (on the grid edge of {', '.join(edge)})" if edge else " (inside the grid)") + ".")
        gap = mean("hyperlista", "nmse_db_seen") - mean("alista", "nmse_db_seen")
        if gap > 2.0:
            gammas = [g for run in result.extra.get("alista_gamma", {}).get("values", []) for g in run]
            ratio = sum(gammas) / len(gammas) * result.extra["lipschitz"]["mean"] if gammas else float("nan")
            lines.append(f"HyperLISTA trails ALISTA by {gap:.1f} dB on the seen distribution. HyperLISTA keeps the "
                         f"card's fixed step gamma = 1/L, while ALISTA's learned per-layer steps average {ratio:.2f} "
                         "x 1/L: the momentum has to make up for a much shorter step.")
        return lines

    def plot(self, result: Any, fig: Any) -> bool:
        axes = fig.subplots(1, len(SETTINGS))
        for ax, setting in zip(axes, SETTINGS):
            for arm, ys in result.curves.get(f"NMSE dB {setting}", {}).items():
                ax.plot(range(1, len(ys) + 1), ys, "-" if arm == "hyperlista" else "--", label=arm)
            ax.set(title=setting, xlabel="layer")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("NMSE (dB)")
        axes[0].legend(fontsize=7)
        return True
