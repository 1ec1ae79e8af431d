"""14-transfer-gan: class-conditional GAN with conditional transferring features (LQ -> HQ) and rotation
self-supervision, trained on 70% of the HQ digits plus a 10% LQ pool ("Conditional Transferring Features:
Scaling GANs to Thousands of Classes with 30% Less High-Quality Data for Training", arXiv:1909.11308).

Per seed, five settings share the G/D sizes, initialisation, optimiser and step budget: (a) cGAN+SS on
100% HQ, (b) cGAN+SS on 70% HQ (= the card's (f), SS without CTF), (c) (b) + the LQ pool naively added
as real data, (d) CTF-GAN on 70% HQ + 10% LQ, (e) CTF-GAN without SS. The LQ pool is degrade() of REMOVED
training images; T's (x_L, x_H) pairs come only from degrading KEPT images. Quality is measured by a small
frozen CNN trained on all real training digits: "Digits-FID" of its 64-d penultimate features (generated
vs real test digits) and its accuracy on generated samples w.r.t. their conditioning label.
"""
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import (Claim, Experiment, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.data import create_dataset
from honed.generative.transfer_gan import (CTFGenerator, ProjectionDiscriminator, TransferNetwork, degrade,
                                           discriminator_loss, frechet_distance, generator_loss, split_hq_lq)
from honed.models import create_model

# arm -> (real data, uses CTFs, uses self-supervision)
SETTINGS = {
    "a_full_hq_ss": ("all", False, True),
    "b_70hq_ss": ("kept", False, True),
    "c_70hq_plus_lq_as_real": ("kept+lq", False, True),
    "d_ctf_ss": ("kept", True, True),
    "e_ctf_no_ss": ("kept", True, False),
}
CHANCE = 0.1  # ten digit classes
# a setting whose generator has not learned the class condition (conditional accuracy within this margin
# of chance) has not learned digits: FID gaps between such settings say nothing; fixed before any run
COND_MARGIN = 0.3


@dataclass(frozen=True)
class TransferGanConfig(ExperimentConfig):
    """Defaults are the ``small`` preset: 3 seeds x 5 settings x ``steps`` G updates with n_dis D updates
    each, sized to fit a few minutes on 2 cores, not to the card's budget: its preconditions (every
    setting's generator follows its class condition well above chance) decide whether its claims count,
    and where they fail the claims are inconclusive. ``full`` is the card's 2000 G steps x n_dis 5: estimated from a
    measured ~0.09 s of one core per G step at n_dis 2 (1200 steps: ~115 s incl. evaluation) as ~0.2 s
    per step at n_dis 5, ~7 min per setting, ~1.7 h for 15 settings on one idle core. (R): T is
    pre-trained on pairs from KEPT images, then frozen (the card's pre-train option)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1
    steps: int = 120
    n_dis: int = 2
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9
    z_dim: int = 32
    g_channels: tuple[int, ...] = (32, 16, 16)
    d_channels: tuple[int, ...] = (16, 32, 32)
    ctf_channels: int = 16
    injection: str = "add"  # (R) h_l + Conv1x1(c_l); "concat" is the card's alternative
    alpha: float = 0.2  # SS weight in L_G (fakes)
    beta: float = 1.0  # SS weight in L_D (real only)
    ss_subset: int = 16  # images of a batch rotated 4 ways for the SS loss (compute budget)
    keep_fraction: float = 0.7
    lq_fraction: float = 0.1
    transfer_steps: int = 150
    transfer_lr: float = 1e-3
    classifier_epochs: int = 8
    eval_samples: int = 2000
    eval_points: int = 3

    @classmethod
    def smoke(cls) -> "TransferGanConfig":
        return replace(cls(), seeds=(0,), steps=10, transfer_steps=10, classifier_epochs=1, eval_samples=200,
                       eval_points=1)

    @classmethod
    def full(cls) -> "TransferGanConfig":
        return replace(cls(), steps=2000, n_dis=5, transfer_steps=1000, threads=0)

    def validate(self) -> None:
        for name in ("steps", "n_dis", "batch_size", "z_dim", "ctf_channels", "transfer_steps",
                     "classifier_epochs", "eval_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_samples < 20:
            raise ConfigError(f"eval_samples must be >= 20, got {self.eval_samples}")
        if len(self.g_channels) != 3 or len(self.d_channels) != 3:
            raise ConfigError("g_channels and d_channels must have 3 entries (4x4, 8x8, 16x16)")
        if not (0 < self.keep_fraction < 1 and 0 < self.lq_fraction <= 1 - self.keep_fraction):
            raise ConfigError("need 0 < keep_fraction < 1 and 0 < lq_fraction <= 1 - keep_fraction")
        if self.injection not in ("add", "concat") or min(self.alpha, self.beta) < 0 or not self.lr > 0:
            raise ConfigError("injection must be add|concat, alpha and beta >= 0, lr > 0")


def load_digits_signed() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits 16x16 rescaled to [-1, 1], 80/20 stratified train/test split (split seed 0)."""
    data = create_dataset("digits", size=16, fractions=(0.8, 0.0, 0.2))
    return data.train.x * 2 - 1, data.train.y, data.test.x * 2 - 1, data.test.y


def train_classifier(cfg: TransferGanConfig, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.nn.Module:
    """The frozen metric network: SmallCNN (64-d penultimate) trained on the real training digits."""
    torch.manual_seed(seed + 11)
    net = create_model("cnn", in_channels=1, num_classes=10, channels=(16, 32), hidden=64)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed + 12)
    for _ in range(cfg.classifier_epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def penultimate(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(64-d penultimate features, logits) of the metric CNN."""
    h = net.classifier[:-1](net.features(x))
    return h, net.classifier[-1](h)


def train_transfer(cfg: TransferGanConfig, x_kept: torch.Tensor, y_kept: torch.Tensor, seed: int) -> TransferNetwork:
    """Pre-train T on (degrade(x_H), x_H) pairs of KEPT HQ images (a fresh degradation seed per step), then freeze."""
    torch.manual_seed(seed + 21)
    net = TransferNetwork(10, cfg.ctf_channels)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.transfer_lr)
    gen = torch.Generator().manual_seed(seed + 22)
    for step in range(cfg.transfer_steps):
        idx = torch.randint(0, len(x_kept), (cfg.batch_size,), generator=gen)
        x_low = degrade(x_kept[idx], seed=10_000 * (seed + 1) + step)
        opt.zero_grad()
        net.transfer_loss(x_low, x_kept[idx], y_kept[idx]).backward()
        opt.step()
    return net.eval().requires_grad_(False)


class CTFBank:
    """CTFs of every LQ pool image (T frozen, so computed once; no gradient reaches E_T). ``sample(y)``
    draws, per requested label, an independent random LQ image of that class (independent of z)."""

    def __init__(self, transfer: TransferNetwork, x_low: torch.Tensor, y_low: torch.Tensor, seed: int) -> None:
        with torch.no_grad():
            self.ctfs = transfer.encode(x_low, y_low)
        self.by_class = [torch.nonzero(y_low == c).flatten() for c in range(10)]
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self, y: torch.Tensor) -> list[torch.Tensor]:
        pick = torch.empty_like(y)
        for c in y.unique().tolist():
            where = torch.nonzero(y == c).flatten()
            pool = self.by_class[c]
            pick[where] = pool[torch.randint(0, len(pool), (len(where),), generator=self.gen)]
        return [c[pick] for c in self.ctfs]


@torch.no_grad()
def evaluate(gen_net, bank, metric_net, real_feats, cfg, seed) -> dict[str, Any]:
    """Digits-FID (generated vs real test features) and conditional accuracy on balanced labels, the
    latter as 0/1 per generated sample (the same z and label per sample index in every arm of a seed,
    so arms are compared sample by sample)."""
    rng = torch.Generator().manual_seed(seed + 31)
    y = torch.arange(cfg.eval_samples) % 10
    z = torch.randn(cfg.eval_samples, cfg.z_dim, generator=rng)
    feats, correct = [], []
    for zb, yb in zip(z.split(500), y.split(500)):
        fake = gen_net(zb, yb, bank.sample(yb) if bank is not None else None)
        h, logits = penultimate(metric_net, fake)
        feats.append(h)
        correct += (logits.argmax(1) == yb).float().tolist()
    return {"fid": frechet_distance(torch.cat(feats), real_feats), "cond_acc": correct}


def train_setting(cfg, arm, seed, data, metric_net, real_feats) -> dict[str, Any]:
    """Train one setting from the seed's shared initialisation; returns final metrics and FID curve."""
    source, use_ctf, use_ss = SETTINGS[arm]
    x_real, y_real = data[source]
    bank = CTFBank(data["transfer"], *data["lq"], seed + 41) if use_ctf else None
    torch.manual_seed(seed)
    gen_net = CTFGenerator(10, cfg.z_dim, tuple(cfg.g_channels), cfg.ctf_channels if use_ctf else None,
                           cfg.injection)
    disc = ProjectionDiscriminator(10, tuple(cfg.d_channels))
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=betas)
    alpha, beta = (cfg.alpha, cfg.beta) if use_ss else (0.0, 0.0)
    rng = torch.Generator().manual_seed(seed + 51)
    marks = {round(cfg.steps * (i + 1) / cfg.eval_points) for i in range(cfg.eval_points)}
    curve = []

    def fake_batch():
        y = torch.randint(0, 10, (cfg.batch_size,), generator=rng)
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=rng)
        return gen_net(z, y, bank.sample(y) if bank is not None else None), y

    for step in range(1, cfg.steps + 1):
        for _ in range(cfg.n_dis):
            idx = torch.randint(0, len(x_real), (cfg.batch_size,), generator=rng)
            with torch.no_grad():
                fake, y_fake = fake_batch()
            opt_d.zero_grad()
            discriminator_loss(disc, x_real[idx], y_real[idx], fake, y_fake, beta, cfg.ss_subset).backward()
            opt_d.step()
        opt_g.zero_grad()
        generator_loss(disc, *fake_batch(), alpha=alpha, ss_subset=cfg.ss_subset).backward()
        opt_g.step()
        if step in marks:
            curve.append(evaluate(gen_net, bank, metric_net, real_feats, cfg, seed)["fid"])
    final = evaluate(gen_net, bank, metric_net, real_feats, cfg, seed)
    params = {"g_params": sum(p.numel() for p in gen_net.parameters()),
              "d_params": sum(p.numel() for p in disc.parameters())}
    return {"metrics": {**final, **params, "real_images": len(x_real)}, "curve": curve}


def prepare(cfg: TransferGanConfig, seed: int) -> dict[str, Any]:
    """Seed's data regime: kept / removed split, LQ pool from REMOVED images only, T from KEPT pairs."""
    x, y, x_test, y_test = load_digits_signed()
    split = split_hq_lq(y, cfg.keep_fraction, cfg.lq_fraction, seed)
    x_lq = degrade(x[split.lq], seed=seed + 101)
    x_kept, y_kept = x[split.kept], y[split.kept]
    return {"all": (x, y), "kept": (x_kept, y_kept), "lq": (x_lq, y[split.lq]),
            "kept+lq": (torch.cat([x_kept, x_lq]), torch.cat([y_kept, y[split.lq]])),
            "transfer": train_transfer(cfg, x_kept, y_kept, seed), "test": (x_test, y_test)}


@register_experiment
class TransferGanExperiment(Experiment):
    id = "14-transfer-gan"
    title = "Conditional transferring features (LQ->HQ) + self-supervision for GANs with 30% less HQ data"
    family = "generative"
    paper = "Conditional Transferring Features (arXiv:1909.11308)"
    summary = ("Class-conditional hinge GAN (conditional-BN generator, spectral-norm projection discriminator "
               "with a rotation head, Adam 2e-4, betas (0, 0.9), batch 64) on sklearn digits 16x16 in [-1, 1]. "
               "30% of the training digits are removed; 10% (of the original size) return as LQ images "
               "(Gaussian blur sigma 1, x2 down/up-sampling, noise 0.1). A transfer network T (conditional BN) "
               "is pre-trained to map degrade(x_H) -> x_H on KEPT images; its encoder's 4x4/8x8/16x16 features "
               "of a random same-class LQ image are added to G's blocks through 1x1 convs. Five settings with "
               "the same G/D sizes and steps: cGAN+SS on 100% / 70% HQ, 70% HQ + LQ as real, CTF-GAN, CTF "
               "without SS. Metrics from a frozen digits CNN: Frechet distance of 64-d penultimate features "
               "(generated vs real test digits) and accuracy on generated samples w.r.t. their label.")
    Config = TransferGanConfig
    method = ("d_ctf_ss", "e_ctf_no_ss")
    baselines = ("a_full_hq_ss", "b_70hq_ss", "c_70hq_plus_lq_as_real")
    components = ("honed.generative.transfer_gan:CTFGenerator",
                  "honed.generative.transfer_gan:TransferNetwork",
                  "honed.generative.transfer_gan:ProjectionDiscriminator",
                  "honed.generative.transfer_gan:discriminator_loss",
                  "honed.generative.transfer_gan:generator_loss",
                  "honed.generative.transfer_gan:degrade",
                  "honed.generative.transfer_gan:frechet_distance")
    reconstructed = (
        "T = E_T + D_T with conditional BN, L1 loss, pre-trained on (degrade(kept), kept) pairs then frozen "
        "(the card's pre-train-then-freeze option; no adversarial term in L_T); so no gradient from G "
        "reaches E_T",
        "CTFs = E_T features at 4x4, 8x8, 16x16, injected as h_l + Conv1x1(c_l) (injection='add')",
        "one independent random same-class LQ image per generated sample (CTF bank of the LQ pool)",
        "losses: hinge + SS-GAN rotation CE, beta=1 on real images in L_D, alpha=0.2 on fakes in L_G",
        "G/D are 3-stage conv nets (not ResNets) to fit the CPU budget; n_dis=2 instead of 5 in small",
    )
    claims_tested = (
        "removing 30% of HQ images hurts: FID(b) > FID(a)",
        "CTF-GAN on 70% HQ + 10% LQ beats 70% HQ alone and LQ-as-real: FID(d) < FID(b), FID(d) < FID(c)",
        "ablations: CTF without SS (e) sits between (b) and (d); (f) = SS without CTF is (b)",
    )

    def run_seed(self, cfg: TransferGanConfig, seed: int, ctx: Any) -> SeedOutput:
        data = prepare(cfg, seed)
        metric_net = train_classifier(cfg, *data["all"], seed)
        real_feats, logits = penultimate(metric_net, data["test"][0])
        extra = {"classifier_test_acc": float((logits.argmax(1) == data["test"][1]).float().mean()),
                 "fid_real_train_vs_test": frechet_distance(penultimate(metric_net, data["all"][0])[0], real_feats),
                 "fid_lq_pool_vs_test": frechet_distance(penultimate(metric_net, data["lq"][0])[0], real_feats),
                 "test_images": len(data["test"][0])}
        arms, curves = {}, {"digits_fid": {}}
        for arm in SETTINGS:
            out = ctx.cached(arm, lambda a=arm: train_setting(cfg, a, seed, data, metric_net, real_feats))
            arms[arm] = out["metrics"]
            curves["digits_fid"][arm] = out["curve"]
        return SeedOutput(arms=arms, extra=extra, curves=curves)

    def claims(self, cfg: TransferGanConfig, result: Any) -> list[Claim]:
        fid = lambda arm: result.metric(arm, "fid")  # noqa: E731 - t interval over seeds (FID is no per-sample mean)
        a, b, c, d, e = SETTINGS
        return [
            Claim.check("FID(b 70% HQ) - FID(a 100% HQ)", fid(b) - fid(a), ">", 0,
                        "card: FID(b) > FID(a), removing 30% HQ hurts", metric="fid"),
            Claim.check("FID(b 70% HQ) - FID(d CTF-GAN)", fid(b) - fid(d), ">", 0,
                        "card: FID(d) < FID(b), mean over seeds", metric="fid"),
            Claim.check("FID(c LQ as real) - FID(d CTF-GAN)", fid(c) - fid(d), ">", 0,
                        "card: FID(d) < FID(c), mean over seeds", metric="fid"),
            Claim.check("FID(b 70% HQ) - FID(e CTF no SS)", fid(b) - fid(e), ">", 0,
                        "card: (e) sits between (b) and (d): FID(e) < FID(b)", metric="fid"),
            Claim.check("FID(e CTF no SS) - FID(d CTF-GAN)", fid(e) - fid(d), ">", 0,
                        "card: (e) sits between (b) and (d): FID(e) > FID(d)", metric="fid"),
        ]

    def preconditions(self, cfg: TransferGanConfig, result: Any) -> list[Precondition]:
        return arms_above_chance(result, tuple(SETTINGS), "cond_acc", CHANCE, COND_MARGIN)

    def notes(self, cfg: TransferGanConfig, result: Any) -> list[str]:
        ex = result.extra
        lines = [f"{arm}: Digits-FID {result.mean(arm, 'fid'):.2f} +- {result.arms[arm]['fid']['std']:.2f}, "
                 f"conditional accuracy {result.mean(arm, 'cond_acc'):.3f}, {result.mean(arm, 'real_images'):.0f} "
                 f"real images, G/D params {result.mean(arm, 'g_params'):.0f}/{result.mean(arm, 'd_params'):.0f}."
                 for arm in SETTINGS]
        lines.append(f"references: metric CNN test accuracy {ex['classifier_test_acc']['mean']:.3f}; FID of real "
                     f"training digits vs test {ex['fid_real_train_vs_test']['mean']:.2f}; FID of the LQ pool vs "
                     f"test {ex['fid_lq_pool_vs_test']['mean']:.2f}; real test features from "
                     f"{ex['test_images']['mean']:.0f} images (the card's 2000 exceed the 20% test split).")
        if cfg.steps < 2000 or cfg.n_dis < 5:
            lines.append(f"reduced scale: {cfg.steps} G steps x n_dis {cfg.n_dis} x {len(result.seeds)} seed(s) "
                         "per setting (card: 2000 x 5; that is the full preset).")
        falling = [arm for arm, ys in result.curves.get("digits_fid", {}).items() if len(ys) > 1 and ys[-1] < ys[-2]]
        if falling:
            lines.append("Digits-FID still falling at the last evaluation (not converged) for " + ", ".join(falling)
                         + ".")
        return lines
