"""17-mat: MAT, multi-strength adversarial training (Song et al., ISVLSI 2018, arXiv:1705.09764) against
single-strength adversarial training, on sklearn digits (8x8, [0, 1]) with the card's MLP 64-256-256-10
(``arch="cnn"``: its conv16-conv32-fc64 CNN, the full preset's choice), Adam lr 1e-3, 30 epochs.

Per seed every arm starts from the same initial weights and sees the same batches: standard training,
FGSM adversarial training at each strength eps_k of E, optionally Madry's PGD training at one eps,
mixed MAT over E (every strength in every batch; optionally a per-batch-random variant) and parallel
MAT (the ensemble of the FGSM-AT models, softmax averaged; no extra training). Every model, the
ensemble included, is attacked white-box on the first ``points`` test images: FGSM over the grid of
eps_a (honed's FGSM at each eps) and PGD-10 (step eps/4) at ``pgd_eps``,
because FGSM-trained models can look robust under FGSM alone (label leaking). During training, PGD
accuracy at ``monitor_eps`` on ``monitor_points`` validation images is logged per epoch (catastrophic
overfitting shows there).

Every accuracy is kept per test image (0/1 under each attack strength; the grid mean per image is the
fraction of grid strengths it survives), the same images for every arm, so claims get paired bootstrap
intervals. "Best single-strength model" is a maximum over those per-image terms.

Why the MLP by default: the CNN costs several times the MLP's CPU time for the seven trained networks,
which does not fit the ``small`` preset's budget over 3 seeds on 2 shared cores.
"""
import functools
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.evidence import smax, smin
from honed.core.experiment import (Claim, Experiment, Invariant, Precondition, Result, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.loop import correct_per_example, train
from honed.core.measure import count_params
from honed.data import Batches, create_dataset
from honed.models import create_model
from honed.robust.training import AdversarialTraining, MixedMAT, ParallelMAT, fgsm_attack, pgd_attack, robust_accuracy
from honed.robust.victims import default_model_kwargs

GRID = tuple(round(0.025 * i, 3) for i in range(17))  # the card's eps_a grid 0 .. 0.4
ZONE_MARGIN = 0.02  # the card's 2 points, used for (b) and for "comparable" in (c)
CHANCE, CHANCE_MARGIN = 0.1, 0.2


@dataclass(frozen=True)
class MATConfig(ExperimentConfig):
    strengths: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)  # E (R: the card's suggested set)
    clean_weight: float = 0.5        # w_0 (R); the adversarial half is split uniformly
    per_batch_arm: bool = True       # also train mixed MAT with one random strength per batch
    pgd_at_eps: float = 0.2          # Madry PGD-AT arm at this eps (0 = no arm; ~8x the cost of standard)
    pgd_at_steps: int = 7
    arch: str = "mlp"                # the card's MLP 64-256-256-10 ("cnn": conv16-conv32-fc64, ~5x slower)
    size: int = 8
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    grid: tuple[float, ...] = GRID
    pgd_eps: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    pgd_steps: int = 10
    pgd_step_ratio: float = 0.25
    points: int = 0                  # test images attacked (the first ones; 0 = the whole test split)
    monitor_points: int = 100        # validation images for the per-epoch PGD curve (0 = off)
    monitor_steps: int = 5
    monitor_eps: float = 0.2         # PGD eps of the per-epoch curve (at 0.3 every model is near 0 here)
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1

    @classmethod
    def smoke(cls) -> "MATConfig":
        return replace(cls(), strengths=(0.1, 0.3), per_batch_arm=False, pgd_at_eps=0.0, epochs=3,
                       batch_size=128, grid=(0.0, 0.1, 0.3), pgd_eps=(0.1,), pgd_steps=5, points=100,
                       monitor_points=50, monitor_steps=2, seeds=(0,))

    @classmethod
    def full(cls) -> "MATConfig":
        return replace(cls(), arch="cnn", monitor_points=180, monitor_steps=10)

    def validate(self) -> None:
        if not self.strengths or min(self.strengths) <= 0 or not 0 <= self.clean_weight <= 1:
            raise ConfigError("strengths must be non-empty and > 0, clean_weight in [0, 1]")
        if not set(self.strengths) <= set(self.grid) or 0.0 not in self.grid:
            raise ConfigError(f"grid must hold 0 and every strength {self.strengths}, got {self.grid}")
        if min(self.pgd_eps, default=0) <= 0 or self.pgd_at_eps < 0 or self.epochs < 1 or self.points < 0:
            raise ConfigError("need pgd_eps > 0, pgd_at_eps >= 0, epochs >= 1, points >= 0")
        if self.arch not in ("mlp", "cnn") or self.monitor_eps <= 0:
            raise ConfigError(f"arch must be mlp or cnn (got {self.arch!r}) and monitor_eps > 0")


def fgsm_name(eps: float) -> str:
    return f"at_fgsm_e{eps:g}"


def trainer_specs(cfg: MATConfig, seed: int) -> dict:
    """{arm: () -> trainer or None}: the arms that train a network (parallel MAT reuses FGSM-AT)."""
    specs = {"standard": lambda: None}
    for eps in cfg.strengths:
        specs[fgsm_name(eps)] = functools.partial(AdversarialTraining, eps, clean_weight=cfg.clean_weight)
    if cfg.pgd_at_eps > 0:
        attack = functools.partial(pgd_attack, steps=cfg.pgd_at_steps, step_ratio=cfg.pgd_step_ratio)
        specs[f"at_pgd_e{cfg.pgd_at_eps:g}"] = functools.partial(AdversarialTraining, cfg.pgd_at_eps, attack,
                                                                 clean_weight=0.0)
    specs["mat_mixed"] = functools.partial(MixedMAT, cfg.strengths, clean_weight=cfg.clean_weight)
    if cfg.per_batch_arm:
        specs["mat_mixed_per_batch"] = lambda: MixedMAT(
            cfg.strengths, sampling="per_batch", clean_weight=cfg.clean_weight,
            generator=torch.Generator().manual_seed(seed))
    return specs


def train_arm(cfg: MATConfig, arm: str, make_trainer, data, seed: int, ctx) -> tuple[torch.nn.Module, dict, float]:
    """Train (or reload from its finished checkpoint) one arm's network; returns (model in eval mode,
    per-epoch history, seconds spent now)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1009 + 17)  # the same initial weights for every arm of a seed
        model = create_model(cfg.arch, **default_model_kwargs(cfg.arch, cfg.size)).to(ctx.device)
    trainer = make_trainer()
    xv, yv = (t[:cfg.monitor_points].to(ctx.device) for t in (data.val.x, data.val.y))
    monitor = functools.partial(pgd_attack, steps=cfg.monitor_steps, step_ratio=cfg.pgd_step_ratio,
                                generator=torch.Generator().manual_seed(seed))

    def evaluate(m):
        return {"val_accuracy": robust_accuracy(m, xv, yv, monitor, 0.0),
                "val_pgd_accuracy": robust_accuracy(m, xv, yv, monitor, cfg.monitor_eps)}

    start = time.perf_counter()
    history = train(model, Batches(data.train, cfg.batch_size, seed=seed), torch.optim.Adam(model.parameters(), cfg.lr),
                    cfg.epochs, loss_fn=trainer or F.cross_entropy, callbacks=[trainer] if trainer else [],
                    device=ctx.device, evaluate=evaluate if cfg.monitor_points else None,
                    checkpoint=ctx.checkpoint(arm), progress=False, desc=arm)
    return model.eval(), history, time.perf_counter() - start


def attack_arm(cfg: MATConfig, model, x, y, seed: int) -> dict:
    """Per test image, 0/1 correctness under white-box FGSM at every eps of the grid and under PGD at
    every pgd_eps, crafted against ``model`` itself (the ensemble's averaged output for parallel MAT)."""
    pgd = functools.partial(pgd_attack, steps=cfg.pgd_steps, step_ratio=cfg.pgd_step_ratio,
                            generator=torch.Generator().manual_seed(seed + 1))
    start = time.perf_counter()
    fgsm = [correct_per_example(model, x if eps == 0 else fgsm_attack(model, eps)(x, y), y) for eps in cfg.grid]
    pgd_curve = [correct_per_example(model, pgd(model, eps)(x, y), y) for eps in cfg.pgd_eps]
    return {"fgsm": fgsm, "pgd": pgd_curve, "attack_s": time.perf_counter() - start}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_lists(lists: list[list[float]]) -> list[float]:
    """Per example, the mean over several per-example lists (e.g. over the attack strengths)."""
    return [mean(column) for column in zip(*lists)]


def arm_metrics(cfg: MATConfig, part: dict) -> dict:
    """Per-image metrics (lists) and the arm's cost; ``fgsm_grid_worst`` (the minimum over the grid of
    the accuracy) is not a mean over images and stays a number."""
    fgsm, pgd = part["fgsm"], part["pgd"]
    metrics = {"clean_acc": fgsm[cfg.grid.index(0.0)], "fgsm_grid_mean": mean_lists(fgsm),
               "fgsm_grid_worst": min(mean(a) for a in fgsm), "pgd_mean": mean_lists(pgd)}
    metrics.update({f"fgsm_e{eps:g}": fgsm[cfg.grid.index(eps)] for eps in cfg.strengths})
    metrics.update({f"pgd_e{eps:g}": acc for eps, acc in zip(cfg.pgd_eps, pgd)})
    metrics.update({k: part[k] for k in ("train_s", "params", "attack_s")})
    return metrics


def label_leaking_note(cfg: MATConfig, result: Result) -> str:
    """Arms whose mean FGSM accuracy rises by > 2 points somewhere as eps_a grows (a model cannot get
    more robust to a stronger attack: the sign of label leaking), and claim (b) without them."""
    curves = result.curves["fgsm_accuracy"]
    rising = {a: max(b - c for c, b in zip(ys, ys[1:])) for a, ys in curves.items()}
    leaky = {a: r for a, r in rising.items() if r > ZONE_MARGIN}
    if not leaky:
        return "FGSM accuracy never rises with eps_a by > 2 points (no visible label leaking)"
    clean_singles = [fgsm_name(e) for e in cfg.strengths if fgsm_name(e) not in leaky]
    text = "FGSM accuracy rises with eps_a (label leaking) for " + ", ".join(
        f"{a} (+{r:.3f})" for a, r in leaky.items())
    if clean_singles and "mat_mixed" not in leaky:
        best = max(clean_singles, key=lambda a: result.mean(a, "fgsm_grid_mean"))
        gap = result.mean("mat_mixed", "fgsm_grid_mean") - result.mean(best, "fgsm_grid_mean")
        text += f"; without them, mixed MAT minus the best remaining single-strength model ({best}) = {gap:+.3f}"
    return text


@register_experiment
class MATExperiment(Experiment):
    id = "17-mat"
    title = "MAT: multi-strength adversarial training (mixed and parallel)"
    family = "robust"
    paper = ("Song et al., MAT: A Multi-strength Adversarial Training Method to Mitigate Adversarial Attacks, "
             "ISVLSI 2018, arXiv:1705.09764")
    summary = ("Adversarial training at one strength eps protects near eps only. Mixed MAT trains one network "
               "on clean + FGSM examples at every strength of E per batch; parallel MAT averages the softmax "
               "of networks each trained at one strength. Measured: white-box FGSM accuracy over eps_a in "
               "[0, 0.4] (grid mean, worst case, clean) and PGD-10 accuracy, against standard training and "
               "single-strength FGSM adversarial training, on digits 8x8 with a small MLP (or CNN).")
    Config = MATConfig
    method = ("mat_mixed", "mat_mixed_per_batch", "mat_parallel")
    baselines = ("standard", "at_fgsm", "at_pgd")
    components = ("honed.robust.training:MixedMAT", "honed.robust.training:ParallelMAT")
    reconstructed = (
        "strength set E = {0.05, 0.1, 0.2, 0.3} on [0, 1] pixels (the card's suggestion; paper's set not retrieved)",
        "loss weights w_0 = 1/2, w_k = 1/(2K); every strength in every batch (not per-example assignment)",
        "FGSM as the training attack (the paper's exact attack set not verified)",
        "parallel MAT combines members by the mean of their softmax; the learned combiner is not built",
        "clean and adversarial blocks share one BatchNorm batch",
    )
    claims_tested = (
        "(a) working zones: at eps_a = eps_k the model trained at eps_k is the best single-strength model",
        "(b) mixed MAT beats the best single-strength model's FGSM grid-mean accuracy by >= 2 points",
        "(b) mixed MAT's clean accuracy is at most 2 points below the best single-strength model's",
        "(b, PGD) mixed MAT's PGD accuracy (mean over pgd_eps) is >= the best single-strength model's",
        "(c) parallel MAT's FGSM grid-mean accuracy is within 2 points of mixed MAT's",
    )

    def run_seed(self, cfg: MATConfig, seed: int, ctx) -> SeedOutput:
        data = create_dataset("digits", size=cfg.size, flat=cfg.arch == "mlp")
        points = cfg.points or len(data.test.y)
        x, y = (t[:points].to(ctx.device) for t in (data.test.x, data.test.y))
        parts = {}
        for arm, make_trainer in trainer_specs(cfg, seed).items():
            parts[arm] = ctx.cached(arm, lambda: self.run_arm(cfg, arm, make_trainer, data, x, y, seed, ctx))
        parts["mat_parallel"] = ctx.cached("mat_parallel",
                                           lambda: self.run_parallel(cfg, parts, data, x, y, seed, ctx))
        arms = {arm: arm_metrics(cfg, part) for arm, part in parts.items()}
        curves = {"fgsm_accuracy": {a: [mean(c) for c in p["fgsm"]] for a, p in parts.items()},
                  "pgd_accuracy": {a: [mean(c) for c in p["pgd"]] for a, p in parts.items()}}
        if cfg.monitor_points:
            curves["val_pgd_accuracy"] = {a: p["val_pgd"] for a, p in parts.items() if p["val_pgd"]}
        extra = {"params_ratio_parallel_to_mixed": arms["mat_parallel"]["params"] / arms["mat_mixed"]["params"],
                 "train_s_ratio_parallel_member_to_mixed": max(parts["mat_parallel"]["member_train_s"])
                 / max(arms["mat_mixed"]["train_s"], 1e-9)}
        return SeedOutput(arms=arms, extra=extra, curves=curves)

    def run_arm(self, cfg, arm, make_trainer, data, x, y, seed, ctx) -> dict:
        model, history, train_s = train_arm(cfg, arm, make_trainer, data, seed, ctx)
        part = attack_arm(cfg, model, x, y, seed)
        return {**part, "train_s": train_s, "params": count_params(model),
                "val_pgd": history.get("val_pgd_accuracy", [])}

    def run_parallel(self, cfg, parts, data, x, y, seed, ctx) -> dict:
        """The ensemble of the FGSM-AT members (reloaded from their finished checkpoints), attacked
        white-box through its averaged softmax."""
        specs = trainer_specs(cfg, seed)
        members = [train_arm(cfg, fgsm_name(e), specs[fgsm_name(e)], data, seed, ctx)[0] for e in cfg.strengths]
        ensemble = ParallelMAT(members).eval()
        part = attack_arm(cfg, ensemble, x, y, seed)
        member_s = [parts[fgsm_name(e)]["train_s"] for e in cfg.strengths]
        return {**part, "train_s": sum(member_s), "member_train_s": member_s, "params": count_params(ensemble),
                "val_pgd": []}

    def claims(self, cfg: MATConfig, result: Result) -> list[Claim]:
        m, singles = result.metric, [fgsm_name(e) for e in cfg.strengths]
        best = lambda metric, among=singles: smax(*(m(a, metric) for a in among))  # noqa: E731
        zone_margins = [m(fgsm_name(e), f"fgsm_e{e:g}") - best(f"fgsm_e{e:g}", [a for a in singles if a != fgsm_name(e)])
                        for e in cfg.strengths]
        hurt = ("attacks hurt standard training",)
        return [
            Claim.check("(a) worst over eps_k of: own FGSM-AT model minus best other single-strength model, at eps_a = "
                        "eps_k", smin(*zone_margins), ">=", 0.0, "card (a): each single-strength model peaks near its "
                        "own eps_k (working zones)", metric="fgsm_e<eps_k>", requires=hurt + self.chance(cfg)),
            Claim.check("(b) mixed MAT FGSM grid-mean minus best single-strength model",
                        m("mat_mixed", "fgsm_grid_mean") - best("fgsm_grid_mean"), ">=", ZONE_MARGIN,
                        "card (b): highest grid-mean accuracy, >= 2 points over the best single-strength model",
                        metric="fgsm_grid_mean difference"),
            Claim.check("(b) best single-strength clean accuracy minus mixed MAT's",
                        best("clean_acc") - m("mat_mixed", "clean_acc"), "<=", ZONE_MARGIN,
                        "card (b): clean-accuracy drop <= 2 points versus the best AT model",
                        metric="clean_acc difference", requires=self.chance(cfg)),
            Claim.check("(b, PGD) mixed MAT PGD mean accuracy minus best single-strength model",
                        m("mat_mixed", "pgd_mean") - best("pgd_mean"), ">=", 0.0,
                        "issue 3 / card: MAT robust accuracy >= single-strength AT, checked under PGD "
                        "(label leaking)", metric="pgd_mean difference"),
            Claim.check("(c) |parallel MAT - mixed MAT| FGSM grid-mean accuracy",
                        abs(m("mat_parallel", "fgsm_grid_mean") - m("mat_mixed", "fgsm_grid_mean")), "<=",
                        ZONE_MARGIN, "card (c): parallel MAT comparable to mixed MAT (2 points, the card's unit)",
                        metric="fgsm_grid_mean absolute difference"),
        ]

    def chance(self, cfg: MATConfig) -> tuple[str, ...]:
        return tuple(f"{a} above chance" for a in trainer_specs(cfg, 0))

    def preconditions(self, cfg: MATConfig, result: Result) -> list[Precondition]:
        m = result.metric
        return arms_above_chance(result, list(trainer_specs(cfg, 0)), "clean_acc", CHANCE, CHANCE_MARGIN) + [
            Precondition.check("attacks hurt standard training", m("standard", "clean_acc")
                               - m("standard", "fgsm_grid_mean"), ">", ZONE_MARGIN,
                               "multi-strength training can only reduce the accuracy lost to attacks when the "
                               "attack grid costs an undefended model more than the claims' 2-point unit")]

    def invariants(self, cfg: MATConfig, result: Result) -> list[Invariant]:
        ratio = result.extra["params_ratio_parallel_to_mixed"]["mean"]
        return [Invariant.check("parallel MAT parameters / mixed MAT parameters - K", abs(ratio - len(cfg.strengths)),
                                "<=", 1e-9, "the ensemble holds K copies of the same network")]

    def notes(self, cfg: MATConfig, result: Result) -> list[str]:
        mean, singles = result.mean, [fgsm_name(e) for e in cfg.strengths]
        table = "; ".join(f"{a}: clean {mean(a, 'clean_acc'):.3f}, FGSM grid mean {mean(a, 'fgsm_grid_mean'):.3f} "
                          f"(worst {mean(a, 'fgsm_grid_worst'):.3f}), PGD mean {mean(a, 'pgd_mean'):.3f}"
                          for a in result.arms)
        notes = [f"mean over seeds: {table}"]
        zones = ", ".join(f"eps_a={e:g}: {max(singles, key=lambda a: mean(a, f'fgsm_e{e:g}'))}"
                          for e in cfg.strengths)
        notes.append(f"best single-strength model by FGSM accuracy at each training strength: {zones}")
        leaks = [f"{fgsm_name(e)} at eps {e:g}: FGSM {mean(fgsm_name(e), f'fgsm_e{e:g}'):.3f} vs PGD "
                 f"{mean(fgsm_name(e), f'pgd_e{e:g}'):.3f}" for e in cfg.strengths if e in cfg.pgd_eps]
        if leaks:
            notes.append("label leaking / gradient masking check, FGSM vs PGD accuracy at the training strength: "
                         + "; ".join(leaks))
        best = max(singles, key=lambda a: mean(a, "fgsm_grid_mean"))
        gains = [m - b for m, b in zip(result.arms["mat_mixed"]["fgsm_grid_mean"]["values"],
                                       result.arms[best]["fgsm_grid_mean"]["values"])]
        notes.append(f"mixed MAT minus {best} (best single-strength by grid mean) per seed: "
                     + ", ".join(f"{g:+.3f}" for g in gains))
        notes.append(label_leaking_note(cfg, result))
        by_pgd = sorted(result.arms, key=lambda a: -mean(a, "pgd_mean"))
        notes.append("ranking by PGD mean accuracy over pgd_eps: "
                     + ", ".join(f"{a} {mean(a, 'pgd_mean'):.3f}" for a in by_pgd))
        curves = result.curves.get("val_pgd_accuracy", {})
        drops = [f"{a} peak {max(c):.3f} -> last {c[-1]:.3f}" for a, c in curves.items()
                 if c and max(c) - c[-1] > 0.05]
        notes.append(f"catastrophic / robust overfitting (validation PGD accuracy at eps {cfg.monitor_eps:g} falling "
                     f"> 5 points from its peak by the last epoch): {'; '.join(drops) if drops else 'not seen'}")
        ratio = result.extra["params_ratio_parallel_to_mixed"]["mean"]
        wall = result.extra["train_s_ratio_parallel_member_to_mixed"]["mean"]
        notes.append(f"cost: parallel MAT holds {ratio:.1f}x the parameters of mixed MAT; its slowest member "
                     f"trained in {wall:.2f}x mixed MAT's time (members can train concurrently)")
        return notes

    def plot(self, result: Result, fig) -> bool:
        """Accuracy vs attack strength (FGSM over the grid, PGD at pgd_eps) and the per-epoch validation
        PGD accuracy; MAT arms solid, baselines dashed."""
        cfg = result.config
        xs = {"fgsm_accuracy": cfg["grid"], "pgd_accuracy": cfg["pgd_eps"]}
        titles = {"fgsm_accuracy": "white-box FGSM accuracy", "pgd_accuracy": f"PGD-{cfg['pgd_steps']} accuracy",
                  "val_pgd_accuracy": f"validation PGD-{cfg['monitor_steps']} accuracy, eps {cfg['monitor_eps']:g}"}
        panels = [name for name in ("fgsm_accuracy", "pgd_accuracy", "val_pgd_accuracy") if result.curves.get(name)]
        if not panels:
            return False
        for ax, name in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
            for arm, ys in result.curves[name].items():
                x = xs.get(name, range(1, len(ys) + 1))
                ax.plot(list(x)[:len(ys)], ys, "-" if result.is_method_arm(arm) else "--", marker=".", label=arm)
            label = "epoch" if name == "val_pgd_accuracy" else "attack eps (L-inf, [0, 1] pixels)"
            ax.set(xlabel=label, ylabel="accuracy", title=titles[name], ylim=(0, 1))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        return True
