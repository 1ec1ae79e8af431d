"""04-robust-scratch-tickets: Robust Scratch Tickets and R2S (Fu et al., NeurIPS 2021, arXiv:2110.14068)
on sklearn digits 8x8 in [0, 1] (flattened), with the card's fallback network: a 2-hidden-layer MLP
(256 by default; 512 in the card) of subnet layers with frozen signed-constant random weights and non-affine BatchNorm.

Per seed, from ONE random weight tensor W (fixed by the seed):
* ``rst_k<k>``: adversarial mask search (PGD-5, step 0.03, eps 0.1) at each remaining ratio k;
* ``natural_k<k>``: edge-popup with the clean loss at the reference ratio (a control);
* ``dense_at_matched``: PGD adversarial training of a dense MLP whose parameter count ~ k_ref x the
  wide net's (the card's comparable size); ``dense_at_same``: dense AT of the same 512-512 architecture;
* ``r2s``: the Random RST Switch over the RSTs. Its accuracies are EXACT expectations over the uniform
  switch (the mean over candidates of each candidate's accuracy on the same adversarial images), and
  are reported under (a) PGD crafted on one fixed candidate (the mean of the transfer matrix - a
  non-adaptive attacker) and (b) EOT-PGD whose gradient is the mean of all candidates' gradients (the
  adaptive attacker; the honest number).
All evaluation attacks are PGD-20, step 0.01, eps 0.1, one random start, on the first ``points`` test
images (0 = the whole test split). Every accuracy is returned per test image (0/1, or for R2S the
expectation over the switch), so claims get paired bootstrap intervals.

The dense baselines train weights, not scale-free scores, so they do not reuse the score LR: each one's
LR is chosen from ``dense_lrs`` by PGD-20 accuracy on the validation split (:func:`select_dense_lr`),
with the RSTs' epochs, batches and search attack (equal budget).
"""
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from honed.core.checkpoint import load_tensors, save_tensors
from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.evidence import smax
from honed.core.experiment import (Claim, Experiment, Invariant, Precondition, Result, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.loop import correct_per_example
from honed.data import Batches, create_dataset
from honed.data.base import Split
from honed.robust.attacks import PGD
from honed.robust.scratch_tickets import (EOTPGD, RandomTicketSwitch, Ticket, extract_ticket, frozen_weights,
                                          scratch_mlp, search_ticket)

CLOSE_MARGIN = 0.05    # "within a few points" of dense AT (card, expectation (a))
NATURAL_MARGIN = 0.10  # "(a) >> (b)": at least 10 points
CHANCE = 0.1           # 10 digit classes
CLEAN_MARGIN = 0.2     # a trained arm's clean accuracy must clear chance by this much
ROBUST_MARGIN = 0.1    # dense AT's PGD accuracy must clear chance by this much to be a robust reference


@dataclass(frozen=True)
class RSTConfig(ExperimentConfig):
    keep_ratios: tuple[float, ...] = (0.05, 0.1, 0.3)  # remaining ratios k (fraction KEPT)
    reference_ratio: float = 0.1     # k of the RST compared with the natural ticket and dense AT
    hidden: tuple[int, ...] = (256, 256)
    weight_init: str = "signed_constant"  # (R) "kaiming_normal" is the alternative
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1.0                 # (R) score LR; the card's 0.1 assumes ~196 steps/epoch, digits give 9
    dense_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)  # dense AT LR grid, chosen on validation
    train_points: int = 0            # 0 = the whole train split
    eps: float = 0.1
    search_steps: int = 5
    search_alpha: float = 0.03
    eval_steps: int = 20
    eval_alpha: float = 0.01
    points: int = 0                  # test images attacked (0 = the whole test split)
    dense_same: bool = True          # also adversarially train the dense MLP of the same widths
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1

    @classmethod
    def smoke(cls) -> "RSTConfig":
        return replace(cls(), keep_ratios=(0.1, 0.3), hidden=(128, 128), epochs=2, train_points=256,
                       eval_steps=5, points=100, dense_same=False, dense_lrs=(0.1, 1.0), seeds=(0,))

    @classmethod
    def full(cls) -> "RSTConfig":
        """The card's MLP width 512 and 30 search epochs, 5 seeds (estimate, not measured: about 8x the
        small preset's time, since the subnet cost grows ~4x with width and 2x with epochs)."""
        return replace(cls(), hidden=(512, 512), epochs=30, seeds=(0, 1, 2, 3, 4))

    def validate(self) -> None:
        if len(self.keep_ratios) < 2 or not all(0 < k <= 1 for k in self.keep_ratios):
            raise ConfigError(f"keep_ratios needs >= 2 ratios in (0, 1] (R2S switches among them), got {self.keep_ratios}")
        if self.reference_ratio not in self.keep_ratios:
            raise ConfigError(f"reference_ratio {self.reference_ratio} must be one of keep_ratios {self.keep_ratios}")
        if min(self.epochs, self.batch_size, self.search_steps, self.eval_steps, *self.hidden) < 1 or self.points < 0:
            raise ConfigError("epochs, batch_size, steps and hidden widths must be >= 1, points >= 0")
        if min(self.eps, self.search_alpha, self.eval_alpha, self.lr) <= 0:
            raise ConfigError("eps, search_alpha, eval_alpha and lr must be > 0")
        if not self.dense_lrs or min(self.dense_lrs) <= 0:
            raise ConfigError(f"dense_lrs must be a non-empty tuple of LRs > 0, got {self.dense_lrs}")


def dense_mlp(in_features: int, hidden: tuple[int, ...], num_classes: int, seed: int, device) -> nn.Sequential:
    """The dense baseline: Linear + affine BatchNorm + ReLU, trained weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        widths, layers = [in_features, *hidden], []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers).to(device)


def matched_width(cfg: RSTConfig, in_features: int, num_classes: int) -> int:
    """Width h of a dense MLP with len(hidden) hidden layers whose parameter count is closest to
    k_ref x the wide subnet's weight count (the card's "comparable size")."""
    widths = [in_features, *cfg.hidden, num_classes]
    target = cfg.reference_ratio * sum(a * b for a, b in zip(widths, widths[1:]))

    def params(h: int) -> int:
        return sum(p.numel() for p in dense_mlp(in_features, (h,) * len(cfg.hidden), num_classes, 0, "cpu").parameters())
    return min(range(4, max(cfg.hidden) + 1), key=lambda h: abs(params(h) - target))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_lists(lists: list[list[float]]) -> list[float]:
    """Element-wise mean of equally long per-example lists (e.g. R2S's expectation over tickets)."""
    return [mean(column) for column in zip(*lists)]


class Arms:
    """One seed's shared state: data, search/eval attacks, the stored tickets."""

    def __init__(self, cfg: RSTConfig, seed: int, ctx) -> None:
        self.cfg, self.seed, self.ctx = cfg, seed, ctx
        data = create_dataset("digits", size=8, flat=True)
        train = data.train if not cfg.train_points else Split(data.train.x[:cfg.train_points], data.train.y[:cfg.train_points])
        self.batches = Batches(train, cfg.batch_size, seed=seed)
        points = cfg.points or len(data.test.y)
        self.x, self.y = (t[:points].to(ctx.device) for t in (data.test.x, data.test.y))
        self.val_x, self.val_y = data.val.x.to(ctx.device), data.val.y.to(ctx.device)
        self.in_features, self.num_classes = data.input_shape[0], data.num_classes

    def search_attack(self, model: nn.Module) -> PGD:
        return PGD(model, eps=self.cfg.eps, alpha=self.cfg.search_alpha, steps=self.cfg.search_steps,
                   generator=torch.Generator().manual_seed(self.seed + 11))

    def eval_attack(self, model: nn.Module, cls=PGD) -> PGD:
        return cls(model, eps=self.cfg.eps, alpha=self.cfg.eval_alpha, steps=self.cfg.eval_steps,
                   generator=torch.Generator().manual_seed(self.seed + 23))

    def network(self, keep_ratio: float) -> nn.Sequential:
        return scratch_mlp(self.in_features, self.cfg.hidden, self.num_classes, keep_ratio, self.cfg.weight_init,
                           seed=self.seed, device=self.ctx.device)

    def ticket_path(self, name: str) -> Path:
        return self.ctx.dir / f"ticket_{name.replace('/', '_')}.safetensors"

    def search(self, name: str, keep_ratio: float, adversarial: bool) -> dict:
        """Search one ticket, store it, return its training record (W checked unchanged)."""
        net = self.network(keep_ratio)
        before, start = frozen_weights(net), time.perf_counter()
        history = search_ticket(net, self.batches, self.cfg.epochs, attack=self.search_attack if adversarial else None,
                                lr=self.cfg.lr, device=self.ctx.device)
        unchanged = all(torch.equal(before[k], v) for k, v in frozen_weights(net).items())
        ticket = extract_ticket(net)
        tensors = {**{f"mask.{k}": v for k, v in ticket.masks.items()},
                   **{f"norm.{k}": v for k, v in ticket.norm_stats.items()}}
        save_tensors(self.ticket_path(name), tensors, {"keep_ratio": ticket.keep_ratio})
        return {"train_s": time.perf_counter() - start, "loss": history, "weights_unchanged": unchanged,
                "density": ticket.density()}

    def load_ticket(self, name: str) -> Ticket:
        tensors, meta = load_tensors(self.ticket_path(name), self.ctx.device)
        pick = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        return Ticket(meta["keep_ratio"], pick("mask."), pick("norm."))

    def robust_correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list]:
        """Per image: clean correctness and correctness under the evaluation PGD (crafted on ``model``)."""
        return correct_per_example(model, x, y), correct_per_example(model, self.eval_attack(model)(x, y), y)

    def dense(self, hidden: tuple[int, ...]) -> dict:
        """Dense PGD adversarial training with the RSTs' budget, its LR chosen on validation
        (:func:`select_dense_lr`); per-image clean and PGD correctness on the test images."""
        start = time.perf_counter()
        chosen = select_dense_lr(self, hidden)
        clean, robust = self.robust_correct(chosen.pop("model"), self.x, self.y)
        return {**chosen, "clean_acc": clean, "pgd_acc": robust, "train_s": time.perf_counter() - start}

    def train_dense(self, hidden: tuple[int, ...], lr: float) -> tuple[nn.Sequential, list[float]]:
        model = dense_mlp(self.in_features, hidden, self.num_classes, self.seed, self.ctx.device)
        history = search_ticket(model, self.batches, self.cfg.epochs, attack=self.search_attack, lr=lr,
                                parameters=model.parameters(), device=self.ctx.device)
        return model, history

    def switch_eval(self, names: list[str]) -> dict:
        """Clean accuracy per ticket, the transfer matrix acc[a][b] (PGD crafted on ticket a, scored
        on ticket b) and each ticket's accuracy under EOT-PGD over all tickets."""
        switch = RandomTicketSwitch(self.network(self.cfg.reference_ratio), [self.load_ticket(n) for n in names],
                                    switch="per_input", generator=torch.Generator().manual_seed(self.seed + 31))
        m = switch.num_tickets

        def per_ticket(x_adv):  # per ticket, 0/1 correctness per test image
            out = []
            for i in range(m):
                with switch.pinned(i):
                    out.append(correct_per_example(switch, x_adv, self.y))
            return out
        clean = per_ticket(self.x)
        transfer = []
        for a in range(m):
            with switch.pinned(a):
                transfer.append(per_ticket(self.eval_attack(switch)(self.x, self.y)))
        eot_adv = self.eval_attack(switch, EOTPGD)(self.x, self.y)
        sampled = correct_per_example(switch, eot_adv, self.y)
        return {"clean": clean, "transfer": transfer, "eot": per_ticket(eot_adv), "eot_sampled": sampled,
                "draw_counts": switch.draw_counts}


def select_dense_lr(arms: "Arms", hidden: tuple[int, ...]) -> dict:
    """Train the dense AT baseline at every LR of ``cfg.dense_lrs`` on the train split and keep the one
    with the highest PGD accuracy on the VALIDATION split (ties: higher clean validation accuracy, then
    the smaller LR). Returns the kept model, its LR and the validation table (never the test split)."""
    table, best = [], None
    for lr in arms.cfg.dense_lrs:
        model, history = arms.train_dense(hidden, lr)
        clean, robust = arms.robust_correct(model, arms.val_x, arms.val_y)
        row = {"lr": lr, "val_pgd_acc": mean(robust), "val_clean_acc": mean(clean)}
        table.append(row)
        if best is None or (row["val_pgd_acc"], row["val_clean_acc"]) > (best[0]["val_pgd_acc"], best[0]["val_clean_acc"]):
            best = (row, model, history)
    row, model, history = best
    return {"model": model, "lr": row["lr"], "val_pgd_acc": row["val_pgd_acc"], "lr_table": table,
            "params": sum(p.numel() for p in model.parameters()), "loss": history}


def rst_name(k: float) -> str:
    return f"k{k:g}/rst"


def assemble(cfg: RSTConfig, parts: dict, ev: dict) -> dict[str, dict]:
    """Per-arm metrics; accuracies are per test image. R2S's are expectations over the uniform switch:
    per image, the mean over candidates (and, for the fixed-ticket attack, over the crafting candidate)."""
    m, arms = len(cfg.keep_ratios), {}
    for i, k in enumerate(cfg.keep_ratios):
        arms[rst_name(k)] = {"clean_acc": ev["clean"][i], "pgd_acc": ev["transfer"][i][i],
                             "density": parts[rst_name(k)]["density"], "train_s": parts[rst_name(k)]["train_s"]}
    transfer = ev["transfer"]
    arms["r2s"] = {"clean_acc": mean_lists(ev["clean"]),
                   "pgd_fixed_ticket_acc": mean_lists([row for rows in transfer for row in rows]),
                   "eot_acc": mean_lists(ev["eot"]), "eot_acc_sampled": ev["eot_sampled"],
                   "transfer_diagonal_acc": mean_lists([transfer[i][i] for i in range(m)]),
                   "transfer_offdiagonal_acc": mean_lists([transfer[a][b] for a in range(m) for b in range(m) if a != b])}
    for name in ("natural", "dense_at_matched", "dense_at_same"):
        if name in parts:
            arms[name] = {k: v for k, v in parts[name].items()
                          if k in ("clean_acc", "pgd_acc") or (isinstance(v, (int, float)) and not isinstance(v, bool))}
    return arms


@register_experiment
class RobustScratchTicketsExperiment(Experiment):
    id = "04-robust-scratch-tickets"
    title = "Robust Scratch Tickets (adversarial mask search on frozen random weights) + R2S"
    family = "robust"
    paper = ("Fu et al., Drawing Robust Scratch Tickets: Subnetworks with Inborn Robustness Are Found within "
             "Randomly Initialized Networks, NeurIPS 2021, arXiv:2110.14068")
    summary = ("Only a mask over frozen random weights is optimised, under a PGD min-max objective (edge-popup "
               "scores + straight-through top-k). Measured on digits 8x8 with a wide random MLP: clean and "
               "PGD-20 accuracy of RSTs at several remaining ratios, a natural scratch ticket, dense adversarial "
               "training at matched size and at the same architecture, the transfer matrix between RSTs, and "
               "R2S (random switching among the RSTs) under a fixed-ticket PGD and under EOT-PGD averaging "
               "the gradients of all candidates (the honest, adaptive number).")
    Config = RSTConfig
    method = ("rst", "r2s")
    baselines = ("natural", "dense_at_matched", "dense_at_same")
    components = ("honed.robust.scratch_tickets:extract_ticket",
                  "honed.robust.scratch_tickets:RandomTicketSwitch", "honed.robust.scratch_tickets:EOTPGD")
    reconstructed = (
        "weight init 'signed_constant' (sign(W0) * sqrt(2/fan_in)); 'kaiming_normal' is the option",
        "MLP 256-256 instead of a wide CNN (card's fallback MLP, narrowed from 512 for the CPU budget)",
        "score LR 1.0 (card 0.1) and 15 epochs: digits give ~9 SGD steps per epoch, CIFAR ~196",
        "search PGD crafted with BN in eval mode (running stats) via honed's PGD; the score step uses train mode",
        "each R2S candidate keeps its own BN running statistics (W is shared, masks and BN stats differ)",
        "R2S accuracies are exact expectations over the uniform switch (mean over candidates)",
        "dense AT baselines: the card gives no LR for weights on digits; each dense arm's LR is chosen per seed "
        "from dense_lrs by validation PGD accuracy (select_dense_lr), never on the test images",
    )
    claims_tested = (
        "RST at k_ref: PGD accuracy within 5 points of dense AT at comparable parameter count",
        "RST >> natural scratch ticket under PGD (>= 10 points)",
        "transfer between RSTs: off-diagonal accuracy > diagonal",
        "R2S > best single RST under a fixed-ticket (non-adaptive) PGD",
        "R2S > best single RST under EOT-PGD (adaptive; the honest test)",
    )

    def run_seed(self, cfg: RSTConfig, seed: int, ctx) -> SeedOutput:
        arms = Arms(cfg, seed, ctx)
        parts = {}
        for k in cfg.keep_ratios:
            name = rst_name(k)
            if not arms.ticket_path(name).exists():
                (ctx.dir / f"part_{name.replace('/', '_')}.json").unlink(missing_ok=True)
            parts[name] = ctx.cached(name.replace("/", "_"), lambda k=k, name=name: arms.search(name, k, adversarial=True))

        def natural():
            rec = arms.search("natural", cfg.reference_ratio, adversarial=False)
            net = arms.network(cfg.reference_ratio)
            switch = RandomTicketSwitch(net, [arms.load_ticket("natural")])
            with switch.pinned(0):
                clean, robust = arms.robust_correct(switch, arms.x, arms.y)
            return {**rec, "clean_acc": clean, "pgd_acc": robust}
        parts["natural"] = ctx.cached("natural", natural)
        width = matched_width(cfg, arms.in_features, arms.num_classes)
        parts["dense_at_matched"] = ctx.cached("dense_at_matched", lambda: arms.dense((width,) * len(cfg.hidden)))
        if cfg.dense_same:
            parts["dense_at_same"] = ctx.cached("dense_at_same", lambda: arms.dense(cfg.hidden))
        ev = ctx.cached("switch", lambda: arms.switch_eval([rst_name(k) for k in cfg.keep_ratios]))
        curves = {"search_loss": {n: p["loss"] for n, p in parts.items() if "loss" in p}}
        dense = [n for n in ("dense_at_matched", "dense_at_same") if n in parts]
        extra = {"transfer_matrix": [[mean(c) for c in row] for row in ev["transfer"]],
                 "eot_per_ticket": [mean(c) for c in ev["eot"]], "r2s_draw_counts": ev["draw_counts"],
                 "dense_matched_width": width, "dense_lr_tables": {n: parts[n]["lr_table"] for n in dense},
                 "weights_unchanged": float(all(p.get("weights_unchanged", True) for p in parts.values()))}
        return SeedOutput(arms=assemble(cfg, parts, ev), extra=extra, curves=curves)

    def claims(self, cfg: RSTConfig, result: Result) -> list[Claim]:
        m, ref = result.metric, rst_name(cfg.reference_ratio)
        single = smax(*(m(rst_name(k), "pgd_acc") for k in cfg.keep_ratios))  # the best single RST
        rsts = tuple(f"{rst_name(k)} above chance" for k in cfg.keep_ratios)
        return [
            Claim.check("rst_minus_dense_at_pgd", m(ref, "pgd_acc") - m("dense_at_matched", "pgd_acc"), ">=",
                        -CLOSE_MARGIN, "RST matches/surpasses AT of comparable size (card: within a few points)",
                        metric="pgd_acc", requires=(f"{ref} above chance", "dense_at_matched above chance",
                                                    "dense AT is robust")),
            Claim.check("rst_minus_natural_pgd", m(ref, "pgd_acc") - m("natural", "pgd_acc"), ">=", NATURAL_MARGIN,
                        "RST >> natural scratch ticket (near-zero robust accuracy)", metric="pgd_acc",
                        requires=(f"{ref} above chance", "natural above chance")),
            Claim.check("transfer_offdiag_minus_diag", m("r2s", "transfer_offdiagonal_acc")
                        - m("r2s", "transfer_diagonal_acc"), ">", 0.0,
                        "RSTs of different sparsity transfer attacks poorly", metric="transfer accuracy", requires=rsts),
            Claim.check("r2s_fixed_ticket_gain", m("r2s", "pgd_fixed_ticket_acc") - single, ">", 0.0,
                        "R2S > single RST (non-adaptive attack on one candidate)", metric="pgd accuracy",
                        requires=rsts),
            Claim.check("r2s_eot_gain", m("r2s", "eot_acc") - single, ">", 0.0,
                        "R2S > single RST, evaluated against the adaptive EOT attack", metric="pgd accuracy",
                        requires=rsts),
        ]

    def preconditions(self, cfg: RSTConfig, result: Result) -> list[Precondition]:
        trained = [rst_name(k) for k in cfg.keep_ratios] + [a for a in self.baselines if a in result.arms]
        return arms_above_chance(result, trained, "clean_acc", CHANCE, CLEAN_MARGIN) + [Precondition.check(
            "dense AT is robust", result.metric("dense_at_matched", "pgd_acc"), ">", CHANCE + ROBUST_MARGIN,
            "'RST matches adversarial training' needs an adversarially trained reference that resists PGD above "
            f"chance (bar = chance + {ROBUST_MARGIN:g}); against a reference at chance any ticket 'matches' it")]

    def invariants(self, cfg: RSTConfig, result: Result) -> list[Invariant]:
        out = [Invariant.check("frozen weights unchanged by every search (fraction of seeds)",
                               result.extra["weights_unchanged"]["mean"], ">=", 1.0,
                               "only the scores are parameters of the search; W is a buffer")]
        for k in cfg.keep_ratios:
            out.append(Invariant.check(f"{rst_name(k)}: |density - k|", abs(result.mean(rst_name(k), "density") - k),
                                       "<=", 0.01, "top-k keeps n - int((1 - k) n) entries per layer"))
        return out

    def notes(self, cfg: RSTConfig, result: Result) -> list[str]:
        mean_of = result.mean
        best = max(mean_of(rst_name(k), "pgd_acc") for k in cfg.keep_ratios)
        out = [f"R2S gain over the best single RST (seed means): {mean_of('r2s', 'pgd_fixed_ticket_acc') - best:+.3f} "
               f"under PGD on one fixed candidate, {mean_of('r2s', 'eot_acc') - best:+.3f} under EOT-PGD over all "
               "candidates (the adaptive, honest number)."]
        for name, tables in ((n, result.extra["dense_lr_tables"]["values"]) for n in ("dense_at_matched", "dense_at_same")
                             if n in result.arms):
            rows = "; ".join(" ".join(f"lr {r['lr']:g}: {r['val_pgd_acc']:.3f}" for r in t[name]) for t in tables)
            out.append(f"{name}: LR chosen per seed on validation PGD-{cfg.eval_steps} accuracy "
                       f"({', '.join(f'{v:g}' for v in result.arms[name]['lr']['values'])}); "
                       f"validation table per seed: {rows}")
        return out
