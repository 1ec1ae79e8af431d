"""19-force-regularization: Force Regularization, then PCA low-rank approximation of the regularised
layers, beside plain low-rank approximation of the same net trained without the force (Wen et al.,
"Coordinating Filters for Faster Deep Neural Networks", arXiv:1703.09746).

Card 19 at small scale: sklearn digits 8x8 (stratified split: the card's 70% for training is cut into
train and a validation part, test is the card's 30%) and the card's CNN
conv(1->c1)-ReLU-conv(c1->c2)-ReLU-maxpool2-fc(c2*16->128)-ReLU-fc(128->10), SGD lr 0.05, momentum
0.9, wd 5e-4. Per seed (trained models are checkpointed per seed):

* ``dense``: trained without the force;
* ``force_trained``: the same training plus the force term on the regularised layers (from scratch,
  or ``force_mode=retrain``: the dense net retrained with the force), at the ``lambda_s`` that
  :func:`select_force_decay` picks from ``force_decays`` on the VALIDATION split (the most compressed
  candidate whose decomposed, finetuned net stays within ``select_tolerance`` of dense there);
* ``plain_lra``: the dense net, each regularised layer replaced by its PCA factorisation at the
  card's energy ratio r (k-filter conv + 1x1 conv, two linears for the FC layer);
* ``force_lra`` (the method): the force-trained net decomposed the same way;
* ``plain_lra_matched_rank``: the dense net decomposed at ``force_lra``'s per-layer ranks.

Every decomposed net gets the same short finetune. Columns, all measured in this run: test accuracy
(before LRA, right after it, after the finetune), per-layer and total rank, params, MACs (torch
FlopCounterMode, one image) and latency at batch 1 and 64 of every model's deployed form: each
decomposed layer kept as its low-rank pair only where the pair measured faster than its rank-K product
(:func:`honed.compress.fuse.keep_faster_form`, batch 64; ranks unchanged), BN folded where there is
one, channels-last (dense too), timed in interleaved rounds on process CPU time (wall recorded), and
the speedup over dense (median of the per-round ratios). Each claim says which column it is about.
"""
import copy
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from honed.compress.deployed_latency import DEPLOYED_FORM, deployed_latency, keep_faster_pairs
from honed.compress.force_regularization import FORCE_EXPONENTS, ForceRegularization
from honed.compress.lowrank import LayerRank, decompose_model, plan_ranks
from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import (Claim, Experiment, Invariant, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.loop import CosineLR, correct_per_example, split_accuracy, train
from honed.core.measure import count_macs, count_params
from honed.data import Batches, Split, create_dataset

DECOMPOSED_ARMS = ("plain_lra", "force_lra", "plain_lra_matched_rank")
CHANCE_MARGIN = 0.3  # 10 classes: a net counts as trained above 0.4 test accuracy
FORCED_TRAINS = "force-trained net above chance before LRA"


@dataclass(frozen=True)
class ForceRegConfig(ExperimentConfig):
    channels: tuple[int, int] = (32, 64)  # card
    hidden: int = 128
    batch_size: int = 64
    epochs: int = 15  # dense and force-from-scratch training (card: 30)
    lr: float = 0.05  # cosine to 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    force_mode: Literal["scratch", "retrain"] = "scratch"
    retrain_epochs: int = 10  # force_mode=retrain: the dense net + these epochs with the force
    retrain_lr: float = 0.01
    # lambda_s candidates, a 1-2-5 log grid (card: 'the whole lambda_s sweep shows the rank/accuracy trade-off');
    # one value = fixed. The first small run's decade grid (1e-4, 1e-3, 1e-2) went on validation data from no
    # rank change straight to a net that LRA wrecks, so the grid was made finer; the choice stays on validation.
    force_decays: tuple[float, ...] = (1e-4, 2e-4, 5e-4, 1e-3, 1e-2)
    force_scale: Literal["mean", "sum"] = "sum"  # "sum": the reference's plain sum of forces (card's lambda_s)
    val_fraction: float = 0.15  # of all images, cut from the card's 70% training part: selects lambda_s
    select_tolerance: float = 0.01  # a candidate qualifies within 1 point of dense validation accuracy
    force_type: Literal["degradation", "constant", "linear", "gravity"] = "degradation"  # card default p = 0
    decay_type: Literal["fixed", "adaptive"] = "fixed"
    direction: Literal["all", "same"] = "all"
    layers: tuple[str, ...] = ("conv2", "fc1")  # regularised = decomposed; first conv and classifier left out
    energy: float = 0.95  # card --rankratio
    finetune_epochs: int = 3
    finetune_lr: float = 0.005  # "a lower lr", cosine to 0, same for every decomposed arm
    channels_last: bool = True  # memory format of every measured model (dense too)
    latency_rounds: int = 15
    latency_repeats: int = 5  # timed runs per model per round
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1  # small CNN: one torch thread; the latency columns are measured with it

    @classmethod
    def smoke(cls) -> "ForceRegConfig":
        return replace(cls(), channels=(16, 32), epochs=5, retrain_epochs=1, finetune_epochs=1,
                       force_decays=(1e-4, 1e-3), latency_rounds=3, latency_repeats=2, seeds=(0,))

    @classmethod
    def full(cls) -> "ForceRegConfig":
        return replace(cls(), epochs=30, finetune_epochs=5, latency_rounds=30, seeds=(0, 1, 2))

    def validate(self) -> None:
        if min(self.epochs, self.batch_size, self.latency_rounds, self.latency_repeats, self.hidden) < 1:
            raise ConfigError("epochs, batch_size, hidden, latency_rounds and latency_repeats must be >= 1")
        if min(self.channels) < 1 or self.finetune_epochs < 0 or self.retrain_epochs < 1:
            raise ConfigError("channels and retrain_epochs must be >= 1, finetune_epochs >= 0")
        if min(self.lr, self.retrain_lr, self.finetune_lr) <= 0 or not self.force_decays or min(self.force_decays) < 0:
            raise ConfigError("learning rates must be > 0 and force_decays a non-empty tuple of values >= 0")
        if not 0 < self.val_fraction < 0.7 or self.select_tolerance < 0:
            raise ConfigError("val_fraction must lie in (0, 0.7) (cut from the 70% training part) and "
                              "select_tolerance be >= 0")
        if not 0 < self.energy <= 1:
            raise ConfigError(f"energy must lie in (0, 1], got {self.energy}")
        if not self.layers or not set(self.layers) <= {"conv1", "conv2", "fc1", "fc2"}:
            raise ConfigError(f"layers must be a non-empty subset of conv1, conv2, fc1, fc2; got {self.layers}")
        if self.force_type not in FORCE_EXPONENTS:
            raise ConfigError(f"force_type must be one of {', '.join(FORCE_EXPONENTS)}")


def build_cnn(cfg: ForceRegConfig, device: torch.device) -> nn.Sequential:
    """The card's CNN on 8x8 digits with named layers; in-place ReLUs (an inference-friendly choice
    that changes no value)."""
    c1, c2 = cfg.channels
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, c1, 3, padding=1), relu1=nn.ReLU(inplace=True),
        conv2=nn.Conv2d(c1, c2, 3, padding=1), relu2=nn.ReLU(inplace=True), pool=nn.MaxPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(c2 * 16, cfg.hidden), relu3=nn.ReLU(inplace=True),
        fc2=nn.Linear(cfg.hidden, 10))).to(device)


def fit(model: nn.Module, data: Split, cfg: ForceRegConfig, epochs: int, lr: float, seed: int,
        callbacks=(), checkpoint=None, device="cpu") -> list[float]:
    """SGD (card momentum and weight decay) with a cosine lr; returns the per-epoch training loss."""
    if epochs == 0:
        return []
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history = train(model, Batches(data, cfg.batch_size, seed=seed), opt, epochs, device=device,
                    callbacks=[*callbacks, CosineLR()], checkpoint=checkpoint, progress=False)
    return history["train_loss"]


def measure_costs(models: dict[str, nn.Module], example: torch.Tensor, cfg: ForceRegConfig) -> dict[str, dict]:
    """params and MACs (one image) of each model, and the latency columns of its deployed form
    (:func:`deployed_latency`: ``latency_rounds`` interleaved rounds of ``latency_repeats`` forwards at
    batch 1 and 64, CPU time judged, wall recorded; speedups are medians of per-round ratios dense / model)."""
    table = deployed_latency(models, example, cfg.latency_rounds, cfg.latency_repeats, channels_last=cfg.channels_last)
    for name, model in models.items():
        table[name].update(params=float(count_params(model)), macs=float(count_macs(model, example[:1])))
    return table


def rank_columns(plan: list[LayerRank]) -> dict[str, float]:
    cols = {f"rank_{p.name}": float(p.rank) for p in plan}
    cols["total_rank"] = float(sum(p.rank for p in plan))
    cols["layers_decomposed"] = float(sum(p.decomposed for p in plan))
    return cols


def decompose_and_finetune(source: nn.Module, cfg: ForceRegConfig, train_split: Split, scored: Split, seed: int,
                           device, ranks: dict[str, int] | None = None) -> tuple[nn.Module, dict, list[float]]:
    """LRA of ``cfg.layers`` of ``source`` at ``cfg.energy`` (or fixed ``ranks``), then the finetune;
    accuracies on ``scored`` as per-example 0/1 lists (right after LRA and after the finetune)."""
    model, plan = decompose_model(source, cfg.energy, list(cfg.layers), ranks=ranks)
    cols = {"test_acc_after_lra": correct_per_example(model, scored.x, scored.y), **rank_columns(plan)}
    curve = fit(model, train_split, cfg, cfg.finetune_epochs, cfg.finetune_lr, seed, device=device)
    cols["test_acc"] = correct_per_example(model, scored.x, scored.y)
    return model, cols, curve


def run_arms(cfg: ForceRegConfig, seed: int, dense: nn.Module, forced: nn.Module, train_split: Split, test: Split,
             device) -> dict:
    """Every decomposed arm of one seed scored on ``test`` (per example) and put in its faster form
    (:func:`honed.compress.deployed_latency.keep_faster_pairs`), then one interleaved cost
    measurement of all models."""
    dense_plan = plan_ranks(dense, 1.0, list(cfg.layers), only_if_cheaper=False)  # full ranks
    models, arms, curves, forms = {"dense": dense}, {}, {}, {}
    arms["dense"] = {"test_acc": correct_per_example(dense, test.x, test.y), **rank_columns(dense_plan)}
    arms["dense"]["layers_decomposed"] = 0.0
    for arm, source in (("plain_lra", dense), ("force_lra", forced), ("plain_lra_matched_rank", dense)):
        ranks = None
        if arm == "plain_lra_matched_rank":
            ranks = {layer: int(arms["force_lra"][f"rank_{layer}"]) for layer in cfg.layers}
        models[arm], arms[arm], curves[arm] = decompose_and_finetune(source, cfg, train_split, test, seed, device,
                                                                     ranks)
        models[arm], cols, forms[arm] = keep_faster_pairs(models[arm].cpu(), test.x[:1].cpu(), cfg.layers,
                                                          cfg.latency_rounds, cfg.latency_repeats, cfg.channels_last)
        arms[arm].update(cols)
    arms["force_lra"]["test_acc_before_lra"] = correct_per_example(forced, test.x, test.y)
    arms["plain_lra"]["test_acc_before_lra"] = arms["dense"]["test_acc"]
    arms["plain_lra_matched_rank"]["test_acc_before_lra"] = arms["dense"]["test_acc"]
    costs = measure_costs({n: m.cpu() for n, m in models.items()}, test.x[:1].cpu(), cfg)
    for name in arms:
        arms[name].update(costs[name])
    return {"arms": arms, "curves": curves, "forms": forms}


def load_data(cfg: ForceRegConfig, device) -> tuple[Split, Split, Split]:
    """sklearn digits 8x8, stratified: the card's 70% training part cut into train and ``val_fraction``
    validation (lambda_s selection only), and the card's 30% test split (claims only)."""
    data = create_dataset("digits", size=8, fractions=(0.7 - cfg.val_fraction, cfg.val_fraction, 0.3))
    to = lambda split: Split(split.x.to(device), split.y.to(device))  # noqa: E731
    return to(data.train), to(data.val), to(data.test)


def train_force(cfg: ForceRegConfig, dense: nn.Module, train_split: Split, seed: int, ctx,
                force_decay: float) -> tuple[nn.Module, list]:
    """The net trained with the force at ``force_decay``: from scratch like ``dense`` plus the force,
    or (retrain) ``dense`` retrained with the force; checkpointed per seed and lambda_s."""
    if cfg.force_mode == "retrain":
        model, epochs, lr = copy.deepcopy(dense), cfg.retrain_epochs, cfg.retrain_lr
    else:
        torch.manual_seed(seed)
        model, epochs, lr = build_cnn(cfg, ctx.device), cfg.epochs, cfg.lr
    force = ForceRegularization(model, force_decay, cfg.force_type, layers=list(cfg.layers),
                                decay_type=cfg.decay_type, direction=cfg.direction, force_scale=cfg.force_scale)
    curve = fit(model, train_split, cfg, epochs, lr, seed, callbacks=[force],
                checkpoint=ctx.checkpoint(f"force_{cfg.force_mode}_{force_decay:g}"), device=ctx.device)
    return model.eval(), curve


def select_force_decay(rows: list[dict], dense_val_acc: float, tolerance: float) -> dict:
    """The lambda_s choice, made on VALIDATION data only: of the sweep ``rows`` ({force_decay, val_acc,
    total_rank}: the force-trained net decomposed at the config's energy and finetuned, scored on the
    validation split), the one with the lowest total rank among those whose val_acc >= dense_val_acc -
    tolerance (ties: the smaller lambda_s); when none qualifies, the one with the highest val_acc."""
    if not rows:
        raise ConfigError("the lambda_s sweep needs at least one candidate")
    qualified = [r for r in rows if r["val_acc"] >= dense_val_acc - tolerance]
    if qualified:
        return min(qualified, key=lambda r: (r["total_rank"], r["force_decay"]))
    return max(rows, key=lambda r: (r["val_acc"], -r["force_decay"]))


def sweep_force_decay(cfg: ForceRegConfig, dense: nn.Module, train_split: Split, val: Split, seed: int,
                      ctx) -> list[dict]:
    """Each candidate of ``cfg.force_decays``: train with the force, decompose, finetune, score on val."""
    rows = []
    for decay in cfg.force_decays:
        def score(decay=decay):
            forced, _ = train_force(cfg, dense, train_split, seed, ctx, decay)
            _, cols, _ = decompose_and_finetune(forced, cfg, train_split, val, seed, ctx.device)
            return {"force_decay": decay, "val_acc": sum(cols["test_acc"]) / len(cols["test_acc"]),
                    "val_acc_before_lra": split_accuracy(forced, val), "total_rank": cols["total_rank"]}
        rows.append(ctx.cached(f"sweep_{decay:g}", score))
    return rows


def arm_note(cfg: ForceRegConfig, result, arm: str) -> str:
    """One sentence of measured columns for ``arm`` (means over seeds)."""
    m = result.mean
    ranks = ", ".join(f"{layer} {m(arm, f'rank_{layer}'):.1f}" for layer in cfg.layers)
    accs = "" if arm == "dense" else (f" (before LRA {m(arm, 'test_acc_before_lra'):.4f}, right after "
                                      f"{m(arm, 'test_acc_after_lra'):.4f})")
    factored = "" if arm == "dense" else (f" (every pair factored: MACs "
                                          f"{m(arm, 'macs_all_factored') / m('dense', 'macs'):.3f})")
    return (f"{arm}: test acc {m(arm, 'test_acc'):.4f}{accs}; ranks {ranks} "
            f"({m(arm, 'layers_decomposed'):.1f} of {len(cfg.layers)} layers kept as low-rank pairs, mean over seeds); "
            f"deployed params {m(arm, 'params') / m('dense', 'params'):.3f} and MACs "
            f"{m(arm, 'macs') / m('dense', 'macs'):.3f} of dense{factored}; speedup (process CPU time) "
            f"{m(arm, 'speedup_b1'):.2f}x at batch 1, {m(arm, 'speedup_b64'):.2f}x at batch 64 (wall "
            f"{m(arm, 'speedup_b1_wall'):.2f}x, {m(arm, 'speedup_b64_wall'):.2f}x).")


def forms_note(result) -> str:
    """The measured form choice of every decomposed layer, per seed and arm."""
    form = lambda f: (f"{f['name']} rank {f['rank']} pair/product {f['pair_over_product']:.2f} "  # noqa: E731
                      f"[{f['q25']:.2f}, {f['q75']:.2f}] -> {f['form']}")
    seeds = [f"seed {seed}: " + "; ".join(f"{arm} " + (", ".join(map(form, forms)) or "no pair")
                                           for arm, forms in by_arm.items())
             for seed, by_arm in zip(result.seeds, result.extra["layer_forms"]["values"])]
    return ("deployed form of each decomposed layer (median CPU time ratio pair / rank-K product at batch 64 over "
            "interleaved rounds, quartiles; the product is kept where it exceeds 1): " + " | ".join(seeds) + ".")


def sweep_note(cfg: ForceRegConfig, result) -> str:
    """The validation sweep of lambda_s per seed and the value each seed selected."""
    seeds = []
    for seed, rows, chosen, dense_val in zip(result.seeds, result.extra["sweep"]["values"],
                                             result.extra["force_decay_selected"]["values"],
                                             result.extra["dense_val_acc"]["values"]):
        table = ", ".join(f"{r['force_decay']:g}: val acc {r['val_acc']:.4f} (before LRA "
                          f"{r['val_acc_before_lra']:.4f}), total rank {r['total_rank']:.0f}" for r in rows)
        seeds.append(f"seed {seed} (dense val acc {dense_val:.4f}) selected {chosen:g} from {table}")
    return (f"lambda_s chosen on the validation split only (lowest total rank within {cfg.select_tolerance:g} of "
            f"dense validation accuracy after LRA + finetune): " + "; ".join(seeds) + ".")


@register_experiment
class ForceRegularizationExperiment(Experiment):
    id = "19-force-regularization"
    title = "Force Regularization: coordinate filters toward a low-rank space, then low-rank approximation"
    family = "compress"
    paper = "Coordinating Filters for Faster Deep Neural Networks (Force Regularization, arXiv:1703.09746)"
    summary = ("Pairwise attractive forces between the normalised filters of conv2 and fc1 of a small CNN on "
               "digits, added to the gradient during training; then each of those layers is replaced by its "
               "uncentred-PCA factorisation at 95% energy (k-filter conv + 1x1 conv; two linears) and finetuned. "
               "Compared with plain decomposition of the net trained without the force, at the same energy and "
               "at matched ranks, on accuracy, rank, params, MACs and measured CPU latency at batch 1 and 64.")
    Config = ForceRegConfig
    method = ("force_lra",)
    baselines = ("dense", "plain_lra", "plain_lra_matched_rank")
    components = ("honed.compress.force_regularization:ForceRegularization",
                  "honed.compress.lowrank:decompose_model")
    reconstructed = (
        "changed (issue 10): the CNN has the card's channels (32, 64) again; an earlier version widened it to "
        "(64, 128) after seeing the measured speedup, which is choosing the setting by the outcome",
        "honed's: cosine lr to 0 for training and finetuning; finetune lr 0.005 ('a lower lr')",
        "honed's: force and LRA on conv2 and fc1 only (the authors leave out the first conv; the classifier too)",
        "honed's: a layer whose factorisation would not save MACs is kept dense (only_if_cheaper)",
        "honed's: every measured model runs in channels_last memory format with in-place ReLUs (dense too)",
        "changed (issue 10): lambda_s is chosen per seed by select_force_decay from a sweep over "
        "force_decays (a 1-2-5 log grid, honed's) on a validation split cut from the card's 70% training part (the most compressed "
        "candidate within select_tolerance of dense validation accuracy after LRA + finetune); the test split "
        "is read only for the claims (an earlier version read a sweep's test accuracy to fix lambda_s = 4e-4)",
        "the force is the reference's plain sum over filters (force_scale='sum'), the scale the card's "
        "lambda_s values refer to",
        f"honed's (issue 15): {DEPLOYED_FORM}; and each decomposed layer is deployed as its low-rank pair only "
        "where the pair measured faster than its rank-K product at batch 64 (keep_faster_form: median per-round "
        "CPU time ratio pair / product > 1 keeps the product), else as that product: the same rank and function, "
        "only a MACs saving that did not become speed is given back; layers_decomposed counts the pairs kept",
    )
    claims_tested = (
        "measured CPU speedup of the force-regularised decomposed net >= 2x at batch 64 (issue target)",
        "its test accuracy after the finetune within 1 point of dense",
        "at r = 0.95 it needs >= 25% fewer basis filters on average than plain decomposition",
        "force-regularised net within 1 point of dense before LRA",
        "at matched ranks it loses less accuracy right after LRA and recovers at least as well",
    )

    def run_seed(self, cfg: ForceRegConfig, seed: int, ctx) -> SeedOutput:
        train_split, val, test = load_data(cfg, ctx.device)
        torch.manual_seed(seed)
        dense = build_cnn(cfg, ctx.device)
        dense_curve = fit(dense, train_split, cfg, cfg.epochs, cfg.lr, seed, checkpoint=ctx.checkpoint("dense"),
                          device=ctx.device)
        dense.eval()
        sweep = sweep_force_decay(cfg, dense, train_split, val, seed, ctx)
        chosen = select_force_decay(sweep, split_accuracy(dense, val), cfg.select_tolerance)
        forced, force_curve = train_force(cfg, dense, train_split, seed, ctx, chosen["force_decay"])
        part = ctx.cached("arms", lambda: run_arms(cfg, seed, dense, forced, train_split, test, ctx.device))
        curves = {"train_loss": {"dense": dense_curve, "force_trained": force_curve},
                  "finetune_loss": part["curves"]}
        extra = {"torch_threads": torch.get_num_threads(), "force_decay_selected": chosen["force_decay"],
                 "dense_val_acc": split_accuracy(dense, val), "sweep": sweep, "layer_forms": part["forms"]}
        return SeedOutput(arms=part["arms"], curves=curves, extra=extra)

    def claims(self, cfg: ForceRegConfig, result) -> list[Claim]:
        m = result.metric
        ranks = [f"rank_{layer}" for layer in cfg.layers]
        reduction = sum(1 - m("force_lra", r) / m("plain_lra", r) for r in ranks) / len(ranks)
        loss_force = m("force_lra", "test_acc_before_lra") - m("force_lra", "test_acc_after_lra")
        loss_matched = m("dense", "test_acc") - m("plain_lra_matched_rank", "test_acc_after_lra")
        dense, forced = ("dense above chance",), ("dense above chance", FORCED_TRAINS)
        return [
            Claim.check("speedup_b64", m("force_lra", "speedup_b64_rounds"), ">=", 2.0,
                        "issue target: >= 2x measured CPU speedup (process CPU time, batch 64, deployed forms of "
                        "both; mean of per-round ratios over interleaved rounds); paper: AlexNet 4.05x on CPU",
                        metric="speedup_b64", requires=()),
            Claim.check("accuracy_loss_vs_dense", m("dense", "test_acc") - m("force_lra", "test_acc"), "<=", 0.01,
                        "issue target: <= 1 point accuracy loss after finetuning", metric="test_acc", requires=dense),
            Claim.check("basis_filter_reduction_vs_plain", reduction, ">=", 0.25,
                        f"card: at r = {cfg.energy} >= 25% fewer basis filters on average than the baseline (t "
                        "interval over seeds)", metric="rank", requires=forced),
            Claim.check("accuracy_loss_before_lra", m("dense", "test_acc") - m("force_lra", "test_acc_before_lra"),
                        "<=", 0.01, "card: force-regularised net within 1 point of dense before LRA",
                        metric="test_acc_before_lra", requires=dense),
            Claim.check("matched_rank_lra_loss_advantage", loss_matched - loss_force, ">=", 0.0,
                        "card: at a matched K the force-regularised net loses less accuracy right after LRA",
                        metric="test_acc_after_lra", requires=forced),
            Claim.check("matched_rank_finetuned_advantage",
                        m("force_lra", "test_acc") - m("plain_lra_matched_rank", "test_acc"), ">=", 0.0,
                        "card: ... and recovers at least as well after fine-tuning", metric="test_acc",
                        requires=forced),
        ]

    def preconditions(self, cfg: ForceRegConfig, result) -> list[Precondition]:
        return arms_above_chance(result, ("dense",), "test_acc", 0.1, CHANCE_MARGIN) + [Precondition.check(
            FORCED_TRAINS, result.metric("force_lra", "test_acc_before_lra"), ">", 0.1 + CHANCE_MARGIN,
            "a force that wrecks the net before LRA makes any rank reduction meaningless")]

    def invariants(self, cfg: ForceRegConfig, result) -> list[Invariant]:
        rank = lambda arm, layer: result.mean(arm, f"rank_{layer}")  # noqa: E731
        gap = max(abs(rank("force_lra", layer) - rank("plain_lra_matched_rank", layer)) for layer in cfg.layers)
        return [Invariant.check("matched-rank arm uses force_lra's ranks (max |difference|)", gap, "<=", 0.0,
                                "plain_lra_matched_rank is decomposed at force_lra's per-layer ranks by construction")]

    def notes(self, cfg: ForceRegConfig, result) -> list[str]:
        m = result.mean
        threads = result.extra["torch_threads"]["mean"]
        notes = [sweep_note(cfg, result)] + [arm_note(cfg, result, arm) for arm in ("dense", *DECOMPOSED_ARMS)]
        notes.append(forms_note(result))
        notes.append(f"latency: medians over {cfg.latency_rounds} interleaved rounds of {cfg.latency_repeats} runs, "
                     f"torch threads {threads:.0f}, {'channels_last' if cfg.channels_last else 'NCHW'} for every "
                     "model, process CPU time judged.")
        gap = m("plain_lra", "test_acc") - m("force_lra", "test_acc")
        notes.append(f"rank at equal energy r = {cfg.energy}: force {m('force_lra', 'total_rank'):.1f} vs plain "
                     f"{m('plain_lra', 'total_rank'):.1f} (total over {', '.join(cfg.layers)}), with plain ahead by "
                     f"{gap:+.4f} in accuracy after the same finetune.")
        collapsed = [layer for layer in cfg.layers if m("force_lra", f"rank_{layer}") <= 2]
        drop = m("force_lra", "test_acc_before_lra") - m("force_lra", "test_acc_after_lra")
        if collapsed and drop > 0.05:
            notes.append(f"the force collapsed {', '.join(collapsed)} to rank <= 2 at r = {cfg.energy} while the "
                         f"force-trained net still scored {m('force_lra', 'test_acc_before_lra'):.4f}: the p = 0 force "
                         f"pulls filters toward their mean, which then carries most of the energy, and the class "
                         f"information sits in the small residual that LRA drops (accuracy fell {drop:.4f} at LRA); "
                         "the validation sweep above gives the rank at each candidate lambda_s.")
        factored_cut = m("dense", "macs") / m("force_lra", "macs_all_factored")
        if m("force_lra", "speedup_b64") < 2.0 <= factored_cut:
            notes.append(f"the decomposition cut MACs {factored_cut:.2f}x (deployed form "
                         f"{m('dense', 'macs') / m('force_lra', 'macs'):.2f}x) but the measured batch-64 latency did "
                         "not follow: the undecomposed layers, pooling, the 1x1 convs' memory traffic and per-op "
                         "overhead are not reduced, and a shared machine adds noise.")
        return notes
