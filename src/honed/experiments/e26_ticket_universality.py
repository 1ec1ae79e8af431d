"""26-ticket-universality: IMP as a renormalisation-group flow, and whether the distance between flow
spectra predicts how well winning tickets transfer between tasks (Universality of Winning Tickets: A
Renormalization Group Perspective, arXiv:2110.03210), plus the classic lottery-ticket result
(arXiv:1803.03635) on the source task.

Tasks (all offline, 64 inputs in [0, 1], 10 outputs; our choice after card 26): sklearn digits 8x8
(source); digits rotated by +-15 deg (random sign per image); inverted intensities (1 - x); digits
with a fixed derangement of the labels (same inputs); digits 0-4 vs 5-9 (binary); a 10-class Gaussian
mixture in 64-D (unrelated). One MLP 64-256-256-10 (no BN) with one theta_init per seed for all tasks.
Per task: IMP with rewinding (global magnitude, all fc weights incl. the output layer), its flow's DMD
spectrum. Every ordered pair (a -> b): a's last-level ticket trained on b; gap = own ticket - transfer.
"""
import math
import statistics
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from honed.compress.cost import cost_columns
from honed.compress.imp import (StepTrainer, clone_state, iterative_magnitude_pruning, random_reinit,
                                train_ticket)
from honed.compress.masks import shuffle_mask
from honed.compress.universality import (DISTANCES, REPRESENTATIONS, flow_spectrum, flow_states,
                                         spearman, spectral_distance)
from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import (Claim, Experiment, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.loop import correct_per_example, split_accuracy
from honed.data import Batches, Dataset, Split, create_dataset
from honed.models import create_model

TASKS = ("digits", "rotated", "inverted", "permuted-labels", "low-vs-high", "gaussian")
UNRELATED = "gaussian"
TASK_SEED = 2604  # the derived tasks are fixed; run seeds vary init, batches and controls
LABEL_DERANGEMENT = (3, 7, 0, 9, 1, 8, 2, 5, 4, 6)  # i -> perm[i], no fixed point
GAUSSIAN_STD = 0.6  # classes overlap enough that the dense MLP is below ceiling, like digits: room for gaps
CHANCE = {"low-vs-high": 0.5}  # every other task has 10 balanced classes: chance 0.1
CHANCE_MARGIN = 0.2  # an arm counts as trained above chance + 0.2


@dataclass(frozen=True)
class TicketUniversalityConfig(ExperimentConfig):
    tasks: tuple[str, ...] = TASKS
    source_task: str = "digits"
    hidden: tuple[int, ...] = (256, 256)
    rounds: int = 10  # 0.8^10 = 10.7% density
    prune_fraction: float = 0.2
    steps: int = 300  # per level; levels >= 1 train from rewind_step to steps (open_lth)
    rewind_step: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    lth_levels: tuple[int, ...] = (3, 7, 10)  # sparsity 48.8%, 79.0%, 89.3%
    representation: Literal["full", "quantiles"] = "full"  # (R) card 2a / 2b
    distance: Literal["sorted-modulus", "wasserstein"] = "sorted-modulus"  # (R) card step 4
    flow_state: Literal["trained", "rewound"] = "trained"  # (R) card 2
    centre: Literal["last", "none"] = "last"  # (R) subtract s_K
    energy: float = 0.99  # (R) DMD truncation
    num_quantiles: int = 32
    transfer_weights: Literal["source", "target"] = "source"  # (R) rewound weights of a (the ticket) or b
    latency_repeats: int = 30
    seeds: tuple[int, ...] = (0, 1, 2)  # >= 3: the Spearman and margin claims get a t interval over seeds
    threads: int = 1  # tiny MLP: one torch thread is fastest (latency columns are measured with it)

    @classmethod
    def smoke(cls) -> "TicketUniversalityConfig":
        return replace(cls(), tasks=("digits", "rotated", "gaussian"), rounds=3, steps=50, rewind_step=5,
                       lth_levels=(3,), latency_repeats=5, seeds=(0,))

    def validate(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or len(set(self.tasks)) < 2:
            raise ConfigError(f"tasks must be >= 2 distinct names from {', '.join(TASKS)}; got {self.tasks}")
        if self.source_task not in self.tasks:
            raise ConfigError(f"source_task '{self.source_task}' must be one of tasks {self.tasks}")
        if self.rounds < 2 or not all(1 <= lv <= self.rounds for lv in self.lth_levels):
            raise ConfigError(f"rounds must be >= 2 and lth_levels within 1..rounds, got {self.lth_levels}")
        if not 0 <= self.rewind_step < self.steps or not 0 < self.prune_fraction < 1:
            raise ConfigError("need 0 <= rewind_step < steps and 0 < prune_fraction < 1")
        if self.lr <= 0 or self.batch_size < 1 or not 0 < self.energy <= 1 or self.latency_repeats < 1:
            raise ConfigError("lr, batch_size, latency_repeats must be positive and energy in (0, 1]")


def _rotate(x: torch.Tensor, gen: torch.Generator, degrees: float = 15.0) -> torch.Tensor:
    images = x.view(-1, 1, 8, 8)
    sign = torch.randint(0, 2, (len(x),), generator=gen).double() * 2 - 1
    angle = sign * math.radians(degrees)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).float()
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False).clamp(0, 1).flatten(1)


def _derive(split: Split, task: str, gen: torch.Generator, means: torch.Tensor) -> Split:
    x, y = split.x, split.y
    if task == "rotated":
        return Split(_rotate(x, gen), y)
    if task == "inverted":
        return Split(1.0 - x, y)
    if task == "permuted-labels":
        return Split(x, torch.tensor(LABEL_DERANGEMENT)[y])
    if task == "low-vs-high":
        return Split(x, (y >= 5).long())
    if task == "gaussian":
        noise = torch.randn(x.shape, generator=gen) * GAUSSIAN_STD
        return Split((means[y] + noise).clamp(0, 1), y)
    return split


def make_task(task: str, base: Dataset) -> Dataset:
    """One of TASKS built from flat digits ``base`` (same split sizes and class counts)."""
    gen = torch.Generator().manual_seed(TASK_SEED + TASKS.index(task))
    means = torch.rand(10, base.train.x.shape[1], generator=gen)
    parts = [_derive(s, task, gen, means) for s in (base.train, base.val, base.test)]
    return Dataset(task, *parts, num_classes=10)


def pair_names(tasks: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(a, b) for a in tasks for b in tasks if a != b]


@register_experiment
class TicketUniversalityExperiment(Experiment):
    id = "26-ticket-universality"
    title = "Ticket universality: IMP flows, DMD spectra and ticket transfer"
    family = "compress"
    paper = "Universality of Winning Tickets: A Renormalization Group Perspective (arXiv:2110.03210)"
    summary = ("IMP with rewinding on six offline tasks from one init; each task's IMP flow is linearised by "
               "exact DMD and the distance between spectra is correlated with the measured transfer gap of "
               "tickets between tasks. Also the classic LTH result on digits: rewound ticket vs random "
               "re-init vs random pruning at 49/79/89% sparsity, with parameters, MACs and latency columns.")
    Config = TicketUniversalityConfig
    method = ("imp_ticket", "own_ticket")
    baselines = ("dense", "random_reinit", "random_prune", "random_mask")
    components = ("honed.compress.universality:flow_states", "honed.compress.universality:flow_spectrum",
                  "honed.compress.universality:spectral_distance")
    reconstructed = (
        "flow state: trained weights with zeros at pruned positions (card 2a, default) or per-layer |w| "
        "quantiles + density (2b)",
        "linearised RG operator: exact DMD after subtracting s_K, 99% energy, rank <= K-1 (card 3)",
        "spectral distance: mean |l_a - l_b| after sorting by modulus, zero-padded (card 4; W1 also reported)",
        "transfer: a's last-level mask with a's rewound weights, trained on b from the rewind step",
        "tasks: rotation +-15 deg, inversion, label derangement, 0-4 vs 5-9, Gaussian mixture std 0.6 "
        "(dense accuracy near that of digits)",
    )
    claims_tested = (
        "LTH: the rewound ticket at the highest sparsity is within 1 point of dense; random re-init "
        "and random pruning of the same layer-wise density are lower",
        "Spearman(spectral distance, transfer gap) over ordered task pairs > 0.5",
        "the unrelated synthetic task has the largest spectral distance and the largest transfer gap",
    )

    def _trainer(self, cfg, task: Dataset, seed: int, device) -> StepTrainer:
        return StepTrainer(Batches(task.train, cfg.batch_size, seed=seed), cfg.steps,
                           lambda p: torch.optim.Adam(p, lr=cfg.lr), device)

    def run_seed(self, cfg: TicketUniversalityConfig, seed: int, ctx: Any) -> SeedOutput:
        device = ctx.device
        base = create_dataset("digits", flat=True)
        tasks = {name: make_task(name, base) for name in cfg.tasks}
        torch.manual_seed(seed)
        model = create_model("mlp", in_features=64, hidden=tuple(cfg.hidden), num_classes=10, bn=False).to(device)
        init_state = clone_state(model)
        imps = {}
        for name, task in tasks.items():
            model.load_state_dict(init_state)
            imps[name] = iterative_magnitude_pruning(
                model, self._trainer(cfg, task, seed, device), cfg.rounds, prune_fraction=cfg.prune_fraction,
                rewind_step=cfg.rewind_step, evaluate=lambda m, t=task: _scored(m, t.test),
                keep_trained=True)
        example = tasks[cfg.source_task].test.x[:1].to(device)
        arms = self._lth_arms(cfg, seed, model, imps[cfg.source_task], tasks[cfg.source_task], example)
        arms.update(self._task_arms(cfg, seed, model, imps, tasks, example))
        extra = self._flow_extra(cfg, imps)
        extra.update(self._transfer_extra(cfg, seed, model, imps, tasks))
        pairs = pair_names(cfg.tasks)
        for rep in REPRESENTATIONS:
            for dist in DISTANCES:
                extra[f"spearman[{rep},{dist}]"] = spearman(extra[f"distance[{rep},{dist}]"], extra["transfer_gap"])
        distances = extra[f"distance[{cfg.representation},{cfg.distance}]"]
        extra["unrelated_distance_margin"] = _nan_if_none(_unrelated_margin(pairs, distances))
        extra["unrelated_gap_margin"] = _nan_if_none(_unrelated_margin(pairs, extra["transfer_gap"]))
        curves = {"test_acc_vs_level": {
            "own_ticket": [lv.metrics["accuracy"] for lv in imps[cfg.source_task].levels]}}
        return SeedOutput(arms=arms, extra=extra, curves=curves)

    def _cost(self, cfg, model, mask, example) -> dict[str, float]:
        return cost_columns(model, example, mask, repeats=cfg.latency_repeats)

    def _lth_arms(self, cfg, seed, model, imp, task, example) -> dict[str, dict[str, float]]:
        device = example.device
        trainer = self._trainer(cfg, task, seed, device)
        model.load_state_dict(imp.levels[0].trained)
        arms = {"dense": {"test_acc": imp.levels[0].metrics["correct"], "sparsity": 0.0,
                          **self._cost(cfg, model, None, example)}}
        for level in cfg.lth_levels:
            lv = imp.levels[level]
            tag = f"s{round(100 * lv.sparsity)}"
            model.load_state_dict(lv.trained)
            arms[f"{tag}/imp_ticket"] = {"test_acc": lv.metrics["correct"], "sparsity": lv.sparsity,
                                         **self._cost(cfg, model, lv.mask, example)}
            random_reinit(model, lv.mask, trainer, cfg.rewind_step, seed=10_000 + seed)
            arms[f"{tag}/random_reinit"] = {"test_acc": correct_per_example(model, task.test.x, task.test.y),
                                            "sparsity": lv.sparsity, **self._cost(cfg, model, lv.mask, example)}
            shuffled = shuffle_mask(lv.mask, torch.Generator().manual_seed(20_000 + seed))
            train_ticket(model, imp.rewind_state, shuffled, trainer, cfg.rewind_step)
            arms[f"{tag}/random_prune"] = {"test_acc": correct_per_example(model, task.test.x, task.test.y),
                                           "sparsity": lv.sparsity, **self._cost(cfg, model, shuffled, example)}
        return arms

    def _task_arms(self, cfg, seed, model, imps, tasks, example) -> dict[str, dict[str, float]]:
        arms = {}
        for name, task in tasks.items():
            imp, last = imps[name], imps[name].levels[-1]
            model.load_state_dict(last.trained)
            arms[f"{name}/own_ticket"] = {"test_acc": last.metrics["correct"], "sparsity": last.sparsity,
                                          **self._cost(cfg, model, last.mask, example)}
            arms[f"{name}/dense"] = {"test_acc": imp.levels[0].metrics["correct"], "sparsity": 0.0}
            shuffled = shuffle_mask(last.mask, torch.Generator().manual_seed(30_000 + seed))
            train_ticket(model, imp.rewind_state, shuffled, self._trainer(cfg, task, seed, example.device),
                         cfg.rewind_step)
            arms[f"{name}/random_mask"] = {"test_acc": correct_per_example(model, task.test.x, task.test.y),
                                           "sparsity": last.sparsity}
        return arms

    def _states(self, cfg, imp, representation: str) -> torch.Tensor:
        masks = imp.masks
        if cfg.flow_state == "trained":
            weights = [lv.trained for lv in imp.levels]
        else:
            weights = [imp.rewind_state] * len(masks)
        return flow_states(weights, masks, representation, cfg.num_quantiles)

    def _flow_extra(self, cfg, imps) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        pairs = pair_names(cfg.tasks)
        for rep in REPRESENTATIONS:
            spectra = {}
            for name, imp in imps.items():
                dmd = flow_spectrum(self._states(cfg, imp, rep), cfg.centre, cfg.energy)
                spectra[name] = dmd.eigenvalues
                moduli = sorted((float(v) for v in dmd.eigenvalues.abs()), reverse=True)
                extra[f"eig_modulus[{rep}]:{name}"] = moduli
                extra[f"leading_modulus[{rep}]:{name}"] = moduli[0]
            for dist in DISTANCES:
                extra[f"distance[{rep},{dist}]"] = [spectral_distance(spectra[a], spectra[b], dist) for a, b in pairs]
        return extra

    def _transfer_extra(self, cfg, seed, model, imps, tasks) -> dict[str, Any]:
        pairs = pair_names(cfg.tasks)
        accs, gaps = [], []
        for a, b in pairs:
            weights = imps[a if cfg.transfer_weights == "source" else b].rewind_state
            trainer = self._trainer(cfg, tasks[b], seed, next(model.parameters()).device)
            train_ticket(model, weights, imps[a].levels[-1].mask, trainer, cfg.rewind_step)
            accs.append(split_accuracy(model, tasks[b].test, next(model.parameters()).device))
            gaps.append(imps[b].levels[-1].metrics["accuracy"] - accs[-1])
        return {"pairs": [f"{a}->{b}" for a, b in pairs], "transfer_acc": accs, "transfer_gap": gaps}

    def claims(self, cfg: TicketUniversalityConfig, result) -> list[Claim]:
        ticket, reinit, rprune = (_top_sparsity_arm(result, s) for s in ("/imp_ticket", "/random_reinit",
                                                                          "/random_prune"))
        m = result.metric
        lth = ("dense above chance", f"{ticket} above chance")
        tasks = tuple(f"{t}/own_ticket above chance" for t in cfg.tasks)
        extra = lambda key: result.extra_metric(key) if key in result.extra else None  # noqa: E731
        return [
            Claim.check("lth_dense_minus_ticket", m("dense", "test_acc") - m(ticket, "test_acc"), "<=", 0.01,
                        f"LTH (arXiv:1803.03635): the rewound ticket at the highest sparsity ({ticket}) is "
                        "within 1 point of dense accuracy", metric="test_acc", requires=lth),
            Claim.check("lth_ticket_minus/random_reinit", m(ticket, "test_acc") - m(reinit, "test_acc"), ">", 0.0,
                        "LTH: the same mask re-initialised at random trains to lower accuracy", metric="test_acc",
                        requires=lth),
            Claim.check("lth_ticket_minus/random_prune", m(ticket, "test_acc") - m(rprune, "test_acc"), ">", 0.0,
                        "LTH: a random mask of the same layer-wise density (from the rewound weights) is lower",
                        metric="test_acc", requires=lth),
            Claim.check("spearman_distance_vs_transfer_gap", extra(f"spearman[{cfg.representation},{cfg.distance}]"),
                        ">", 0.5, f"card 26: Spearman(d, g) > 0.5 across ordered task pairs ({cfg.representation} "
                        f"state, {cfg.distance} distance; per seed, t interval over seeds)", metric="spearman",
                        requires=tasks),
            Claim.check("unrelated_task_distance_margin", extra("unrelated_distance_margin"), ">", 0.0,
                        "card 26: the unrelated synthetic task has the largest spectral distance (mean over its "
                        "pairs minus the largest per-task mean over pairs among the other tasks; per seed)",
                        metric="spectral_distance", requires=tasks),
            Claim.check("unrelated_task_gap_margin", extra("unrelated_gap_margin"), ">", 0.0,
                        "card 26: the unrelated synthetic task has the largest transfer gap (same margin; per seed)",
                        metric="transfer_gap", requires=tasks),
        ]

    def preconditions(self, cfg: TicketUniversalityConfig, result) -> list[Precondition]:
        """The source task's dense net and top-sparsity ticket, and every task's own ticket, above the
        task's chance (0.5 for the binary task): a transfer gap to a task nobody learns is not a gap."""
        pre = arms_above_chance(result, ("dense", _top_sparsity_arm(result, "/imp_ticket")), "test_acc",
                                CHANCE.get(cfg.source_task, 0.1), CHANCE_MARGIN)
        for task in cfg.tasks:
            pre += arms_above_chance(result, (f"{task}/own_ticket",), "test_acc", CHANCE.get(task, 0.1), CHANCE_MARGIN)
        return pre

    def notes(self, cfg: TicketUniversalityConfig, result) -> list[str]:
        out = []
        gaps = _seed_mean(result, "transfer_gap")
        for rep in REPRESENTATIONS:
            for dist in DISTANCES:
                rho = spearman(_seed_mean(result, f"distance[{rep},{dist}]"), gaps)
                per_seed = result.extra[f"spearman[{rep},{dist}]"]["values"]
                out.append(f"Spearman(d, g) with {rep} state and {dist} distance: {rho:.3f} on the seed-averaged "
                           f"values; per seed {', '.join(f'{v:.3f}' for v in per_seed)}")
        pairs = _pairs(result)
        dist = _seed_mean(result, f"distance[{cfg.representation},{cfg.distance}]")
        for label, values in (("spectral distance", dist), ("transfer gap", gaps)):
            per_task = _per_task_means(pairs, values)
            ranked = sorted(per_task, key=per_task.get, reverse=True)
            out.append(f"mean {label} per task (largest first): "
                       + ", ".join(f"{t} {per_task[t]:.4g}" for t in ranked))
        top = sorted(range(len(pairs)), key=lambda i: gaps[i], reverse=True)[:3]
        out.append("largest transfer gaps (pair: gap, spectral distance): "
                   + "; ".join(f"{'->'.join(pairs[i])}: {gaps[i]:.3f}, {dist[i]:.3g}" for i in top))
        leading = {t: result.extra.get(f"leading_modulus[{cfg.representation}]:{t}", {}).get("mean")
                   for t in cfg.tasks}
        out.append("leading DMD eigenvalue modulus per task (1 = marginal / near a fixed point): "
                   + ", ".join(f"{t} {v:.3f}" for t, v in leading.items() if v is not None))
        ticket = _top_sparsity_arm(result, "/imp_ticket")
        if ticket:
            t, d = result.arms[ticket], result.arms["dense"]
            out.append(f"masks are not speed: {ticket} keeps {t['params_nonzero']['mean']:.0f} of "
                       f"{d['params_nonzero']['mean']:.0f} nonzero parameters and "
                       f"{t['macs_effective']['mean'] / d['macs_dense']['mean']:.1%} of the MACs as effective "
                       f"MACs, but runs dense kernels: latency b1 {t['latency_b1_ms']['mean']:.3f} ms vs dense "
                       f"{d['latency_b1_ms']['mean']:.3f} ms, b64 {t['latency_b64_ms']['mean']:.3f} vs "
                       f"{d['latency_b64_ms']['mean']:.3f} ms (torch threads = {cfg.threads or 'default'})")
        out.append("transfer gaps are in accuracy points of the target task: the binary task low-vs-high (chance "
                   "0.5) has less room for a gap than the 10-class ones (chance 0.1)")
        out.append("not tested at this scale: the paper's ResNet-50 / BERT flows (BERT near fixed points) and "
                   "transfer across ResNet depths")
        return out

    def plot(self, result, fig) -> bool:
        ax_lth, ax_flow = fig.subplots(1, 2)
        for suffix, style in (("/imp_ticket", "o-"), ("/random_reinit", "s--"), ("/random_prune", "^--")):
            arms = sorted((a for a in result.arms if a.startswith("s") and a.endswith(suffix)),
                          key=lambda a: result.mean(a, "sparsity"))
            ax_lth.plot([100 * result.mean(a, "sparsity") for a in arms],
                        [result.mean(a, "test_acc") for a in arms], style, label=suffix[1:])
        ax_lth.axhline(result.mean("dense", "test_acc"), color="k", lw=0.8, label="dense")
        ax_lth.set_xlabel("sparsity (%)"), ax_lth.set_ylabel("test accuracy"), ax_lth.legend(fontsize=7)
        ax_lth.set_title("lottery tickets on the source task")
        cfg = result.config
        dist = _seed_mean(result, f"distance[{cfg['representation']},{cfg['distance']}]")
        gaps = _seed_mean(result, "transfer_gap")
        pairs = _pairs(result)
        colours = ["tab:red" if UNRELATED in p else "tab:blue" for p in pairs]
        ax_flow.scatter(dist, gaps, c=colours, s=14)
        ax_flow.set_xlabel(f"spectral distance ({cfg['representation']}, {cfg['distance']})")
        ax_flow.set_ylabel("transfer gap (own - transferred)")
        ax_flow.set_title(f"ticket transfer (red: pairs with {UNRELATED})")
        return True


def _scored(model, split: Split) -> dict:
    """IMP's per-level evaluation: test accuracy and the per-example 0/1 outcomes it is the mean of."""
    correct = correct_per_example(model, split.x, split.y)
    return {"accuracy": sum(correct) / len(correct), "correct": correct}


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _top_sparsity_arm(result, suffix: str) -> str | None:
    arms = [a for a in result.arms if a.startswith("s") and a.endswith(suffix)]
    return max(arms, key=lambda a: result.mean(a, "sparsity")) if arms else None


def _pairs(result) -> list[tuple[str, str]]:
    names = result.extra["pairs"]["values"][0]
    return [tuple(n.split("->")) for n in names]


def _seed_mean(result, key: str) -> list[float] | None:
    """Per-pair mean over seeds of a per-seed list stored in ``result.extra[key]``."""
    entry = result.extra.get(key)
    if not entry:
        return None
    return [statistics.fmean(col) for col in zip(*entry["values"])]


def _per_task_means(pairs: list[tuple[str, str]], values: list[float]) -> dict[str, float]:
    tasks = sorted({t for p in pairs for t in p})
    return {t: statistics.fmean(v for p, v in zip(pairs, values) if t in p) for t in tasks}


def _unrelated_margin(pairs: list[tuple[str, str]], values: list[float] | None) -> float | None:
    """Mean of ``values`` over pairs with the unrelated task minus the largest, over the other tasks t,
    mean over pairs of t with a task that is not the unrelated one (None when it cannot be computed)."""
    if not values or not any(UNRELATED in p for p in pairs):
        return None
    related = [p for p in pairs if UNRELATED not in p]
    if not related:
        return None
    unrelated = statistics.fmean(v for p, v in zip(pairs, values) if UNRELATED in p)
    others = _per_task_means(related, [v for p, v in zip(pairs, values) if UNRELATED not in p])
    return unrelated - max(others.values())
