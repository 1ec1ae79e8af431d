"""20-convm-da: compact Conv-M network + unified unsupervised domain adaptation on digits -> coloured digits
(A Compact DNN: Approaching GoogLeNet-Level Accuracy of Classification and Domain Adaptation, arXiv:1703.04071).

Source: sklearn digits 16x16 grey (as RGB). Target: a disjoint half of the digits rendered on colour
textures (``honed.data.digit_domains``); its labels are guarded and read only for the final evaluation.
Arms: on Conv-M, source-only, DANN (adversarial only), DAN (MK-MMD only), entropy only and the unified
loss; on the plain CNN and the SqueezeNet-style net (matched ~75k parameters), source-only and unified.
Every arm trains from the seed's initialisation with SGD momentum 0.9, the DANN lr and GRL schedules and
half-source/half-target batches; the final iterate is evaluated (no model selection on target labels).
"""
import dataclasses
from dataclasses import dataclass, replace
from typing import Any

import torch

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import (Claim, Experiment, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.loop import correct_per_example
from honed.vision.convm import NET_NAMES, count_parameters, create_compact_net
from honed.data.digit_domains import DigitDomains, make_digit_domains
from honed.vision.domain_adaptation import (UnifiedDALoss, annealed_learning_rate, domain_classifier_accuracy,
                                            prediction_entropy)

LOSS_NAMES = ("source_only", "dann", "dan", "entropy", "unified")
SINGLE_COMPONENTS = ("dann", "dan", "entropy")
ALL_ARMS = tuple(f"convm/{loss}" for loss in LOSS_NAMES) + tuple(
    f"{net}/{loss}" for net in ("plain", "squeeze") for loss in ("source_only", "unified"))
CLAIMED_ARMS = tuple(f"convm/{loss}" for loss in LOSS_NAMES) + ("squeeze/unified",)  # the small preset's arms
METHOD_ARMS = ("convm/unified", "plain/unified", "squeeze/unified")
WIDE_MARGIN = 0.05  # the card's "by a wide margin" read as >= 5 accuracy points, fixed before any run
CHANCE = 0.1  # ten digit classes
# target renderings, hardest first (the card's unconstrained colours first); the run picks one on labeled
# target-VALIDATION images (see choose_rendering), never on the test images
TARGET_RENDERINGS = {
    "card": {"colour_gap": (0.0, 1.0), "texture_amplitude": 0.6},
    "contrast": {"colour_gap": (0.25, 0.75), "texture_amplitude": 0.3},
    "mild": {"colour_gap": (0.35, 0.65), "texture_amplitude": 0.15},
}
RENDERING_BAR = 0.2  # source-only target-validation accuracy a rendering needs (chance + 0.1), fixed before any run
SIMILAR_SOURCE = 0.02  # the card's "similar source accuracy" read as within 2 points
CURVE_POINTS = 20


@dataclass(frozen=True)
class ConvMDAConfig(ExperimentConfig):
    """Defaults are the ``small`` preset: the card's 2000 iterations x (64 + 64) for 9 arms do not fit
    6 min on 2 cores, so ``small`` runs 3 seeds x 400 iterations x (32 + 32) of the six claimed arms;
    ``full`` runs all 9 arms at the card's 2000 x (64 + 64), 3 seeds (estimate from a measured ~15 s of
    one core per 400 x (32 + 32) arm: ~2.5 min per arm, ~70 min on one idle core). Loss weights, warm-up
    and schedules are the card's defaults. ``target_rendering`` "auto" picks the hardest of
    ``TARGET_RENDERINGS`` whose source-only Conv-M (the run's first seed) reaches ``RENDERING_BAR`` on
    labeled target-validation images (``target_val_fraction`` of the target half, held out from adapt
    and test); every seed of the run uses that one rendering."""

    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1
    arms: tuple[str, ...] = CLAIMED_ARMS
    iterations: int = 400
    batch_size: int = 32  # per domain: each step sees batch_size source + batch_size target images
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    adversarial_weight: float = 1.0
    mmd_weight: float = 1.0
    entropy_weight: float = 0.1
    entropy_warmup: float = 0.2
    mmd_on_logits: bool = False
    domain_seed: int = 0  # fixed rendering of the target domain
    split_seed: int = 0
    probe_steps: int = 300
    target_rendering: str = "auto"  # "auto" (chosen on target validation) or a key of TARGET_RENDERINGS
    target_val_fraction: float = 0.2

    @classmethod
    def smoke(cls) -> "ConvMDAConfig":
        return replace(cls(), seeds=(0,), arms=("convm/source_only", "convm/unified"), iterations=40, probe_steps=50)

    @classmethod
    def full(cls) -> "ConvMDAConfig":
        return replace(cls(), arms=ALL_ARMS, iterations=2000, batch_size=64)

    def validate(self) -> None:
        unknown = [a for a in self.arms if a not in ALL_ARMS]
        if unknown or not self.arms:
            raise ConfigError(f"arms must be a non-empty subset of {', '.join(ALL_ARMS)}, got {unknown or 'none'}")
        for name in ("iterations", "batch_size", "probe_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("adversarial_weight", "mmd_weight", "entropy_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.momentum < 1 or not 0 <= self.entropy_warmup <= 1:
            raise ConfigError("need lr > 0, 0 <= momentum < 1 and 0 <= entropy_warmup <= 1")
        if self.target_rendering != "auto" and self.target_rendering not in TARGET_RENDERINGS:
            raise ConfigError(f"target_rendering must be 'auto' or one of {', '.join(TARGET_RENDERINGS)}, "
                              f"got {self.target_rendering!r}")
        if not 0 < self.target_val_fraction < 0.6:
            raise ConfigError(f"target_val_fraction must lie in (0, 0.6), got {self.target_val_fraction}")

    def loss_weights(self, loss: str) -> dict[str, float]:
        """(adversarial, mmd, entropy) weights of one DA arm; absent components weigh 0."""
        use = {"source_only": (), "dann": ("adv",), "dan": ("mmd",), "entropy": ("ent",),
               "unified": ("adv", "mmd", "ent")}[loss]
        full = {"adv": self.adversarial_weight, "mmd": self.mmd_weight, "ent": self.entropy_weight}
        return {"adversarial": full["adv"] * ("adv" in use), "mmd": full["mmd"] * ("mmd" in use),
                "entropy": full["ent"] * ("ent" in use)}


def adapt(cfg: ConvMDAConfig, domains: DigitDomains, net: str, loss_name: str, seed: int,
          device: torch.device) -> tuple[torch.nn.Module, dict[str, list[float]]]:
    """Train one arm. Reads source images+labels and target IMAGES only (``target_adapt.x``). Both domains
    go through the network as one batch, so BatchNorm statistics are shared over the mixed batch in
    every arm (and the eval-time running statistics are those of the mixture)."""
    torch.manual_seed(seed)  # same initialisation for every arm of a seed and net
    model = create_compact_net(net, in_channels=3, num_classes=domains.num_classes).to(device)
    objective = UnifiedDALoss(model.feature_dim, entropy_warmup=cfg.entropy_warmup,
                              mmd_on_logits=cfg.mmd_on_logits, **cfg.loss_weights(loss_name)).to(device)
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed + 7919)
    source, target_x, b = domains.source_train, domains.target_adapt.x, cfg.batch_size
    every = max(1, cfg.iterations // CURVE_POINTS)
    curves: dict[str, list[float]] = {"cls": [], "target_entropy": []}
    model.train()
    for it in range(cfg.iterations):
        progress = it / cfg.iterations
        for group in optimizer.param_groups:
            group["lr"] = annealed_learning_rate(cfg.lr, progress)
        s_idx = torch.randint(len(source), (b,), generator=gen)
        t_idx = torch.randint(len(target_x), (b,), generator=gen)
        features = model.features(torch.cat([source.x[s_idx], target_x[t_idx]]))
        logits = model.classifier(features)
        terms = objective(features[:b], features[b:], logits[:b], logits[b:], source.y[s_idx], progress)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        if it % every == 0 or it == cfg.iterations - 1:
            curves["cls"].append(float(terms["cls"].detach()))
            curves["target_entropy"].append(float(prediction_entropy(logits[b:].detach())))
    return model, curves


@torch.no_grad()
def evaluate_arm(cfg: ConvMDAConfig, model: torch.nn.Module, domains: DigitDomains, seed: int) -> dict[str, Any]:
    """Final-iterate metrics: per-image 0/1 correctness on source and target test (paired outcomes), params,
    A-distance proxy on frozen features."""
    model.eval()
    source_correct = correct_per_example(model, domains.source_test.x, domains.source_test.y)
    with domains.target_test.labels_unlocked():
        target_correct = correct_per_example(model, domains.target_test.x, domains.target_test.y)
    probe = domain_classifier_accuracy(model.features(domains.source_test.x), model.features(domains.target_test.x),
                                       steps=cfg.probe_steps, seed=seed)
    return {"target_acc": target_correct, "source_acc": source_correct, "params": count_parameters(model),
            "domain_probe_acc": probe["accuracy"], "a_distance": probe["a_distance"]}


def run_arm(cfg: ConvMDAConfig, domains: DigitDomains, arm: str, seed: int, device: torch.device) -> dict[str, Any]:
    net, loss_name = arm.split("/")
    model, curves = adapt(cfg, domains, net, loss_name, seed, device)
    out = {"metrics": evaluate_arm(cfg, model, domains, seed), "curves": curves}
    if domains.target_val is not None:  # read only by choose_rendering
        with domains.target_val.labels_unlocked():
            out["target_val_acc"] = float(torch.tensor(correct_per_example(model, domains.target_val.x,
                                                                           domains.target_val.y)).mean())
    return out


def build_domains(cfg: ConvMDAConfig, rendering: str, device: torch.device) -> DigitDomains:
    return make_digit_domains(seed=cfg.domain_seed, split_seed=cfg.split_seed, device=device,
                              target_val_fraction=cfg.target_val_fraction, **TARGET_RENDERINGS[rendering])


def choose_rendering(cfg: ConvMDAConfig, ctx: Any) -> tuple[str, dict[str, float], dict[str, Any]]:
    """The target rendering of this run, one for every seed: ``cfg.target_rendering``, or for "auto" the
    hardest of TARGET_RENDERINGS on which the source-only Conv-M, trained with the run's FIRST seed and the
    arms' budget, reaches RENDERING_BAR accuracy on the labeled target-VALIDATION images (the easiest when
    none does). Returns the name, the validation accuracy of every candidate tried, and the chosen
    candidate's source-only training (the first seed's ``convm/source_only`` arm, so it is reused there)."""
    names = [cfg.target_rendering] if cfg.target_rendering != "auto" else list(TARGET_RENDERINGS)
    first = cfg.seeds[0]
    store = first_seed_context(ctx, first)
    tried: dict[str, float] = {}
    for name in names:
        out = store.cached(f"selection_seed{first}_{name}",
                         lambda n=name: run_arm(cfg, build_domains(cfg, n, ctx.device), "convm/source_only",
                                                first, ctx.device))
        tried[name] = out["target_val_acc"]
        if out["target_val_acc"] >= RENDERING_BAR or name == names[-1]:
            return name, tried, out
    raise AssertionError("unreachable")


def first_seed_context(ctx: Any, first: int) -> Any:
    """``ctx`` pointed at the run's first seed's folder, so the selection runs are computed once per run
    (seeds run in order: later seeds read the parts the first seed stored)."""
    if getattr(ctx, "seed", first) == first:
        return ctx
    folder = ctx.dir.parent / f"seed_{first}"
    folder.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(ctx, dir=folder)


@register_experiment
class ConvMDAExperiment(Experiment):
    id = "20-convm-da"
    title = "Conv-M compact network + unified unsupervised domain adaptation"
    family = "vision"
    paper = ("A Compact DNN: Approaching GoogLeNet-Level Accuracy of Classification and Domain Adaptation "
             "(arXiv:1703.04071)")
    summary = ("Digits (16x16 grey) -> held-out digits rendered on random colour textures (random colour, 30% "
               "inverted, noise, rotation). A Conv-M CNN (parallel regular / dilated / transposed 3x3 conv "
               "branches) is adapted with source-only, DANN, DAN (MK-MMD), target-entropy and the unified loss "
               "CE + GRL adversarial + MK-MMD + 0.1 entropy; a plain CNN and a SqueezeNet-style fire-module net "
               "at matched ~75k parameters run source-only and unified (full preset; small runs SqueezeNet-style "
               "unified only). The target rendering is chosen on held-out labeled target-validation images. "
               "Measured: per-image target and source test correctness (paired intervals), parameters and the "
               "A-distance proxy (linear domain probe on frozen features).")
    Config = ConvMDAConfig
    method = METHOD_ARMS
    baselines = tuple(a for a in ALL_ARMS if a not in METHOD_ARMS)
    components = ("honed.vision.convm:ConvM", "honed.vision.convm:convm_net",
                  "honed.vision.domain_adaptation:UnifiedDALoss", "honed.vision.domain_adaptation:GradientReversal",
                  "honed.vision.domain_adaptation:multi_kernel_mmd",
                  "honed.vision.domain_adaptation:domain_classifier_accuracy",
                  "honed.data.digit_domains:make_digit_domains")
    reconstructed = (
        "Conv-M: 1x1 reductions (to half the input width) before the dilated and deconv branches "
        "(Inception-style, inferred by the card)",
        "DA losses: the standard DANN / MK-MMD / entropy instantiations, not checked against the paper's "
        "equations; MMD on the penultimate (pooled) features only (mmd_on_logits=False)",
        "BatchNorm: source and target share one forward pass, so statistics are mixed in every arm",
        f"'beats source-only by a wide margin' read as >= {100 * WIDE_MARGIN:g} target-accuracy points",
        "target texture: base colour + smooth RGB noise at 2/4/8 px scales (no natural-image patches offline)",
        "target rendering chosen on held-out labeled target-validation images (target_rendering='auto'): the "
        "hardest of 'card' (unconstrained random foreground colour, texture 0.6), 'contrast' (foreground >= 0.25 "
        f"per channel from the background colour, texture 0.3) and 'mild' on which source-only Conv-M (the run's "
        f"first seed) reaches "
        f"{RENDERING_BAR:g} validation accuracy. An earlier version switched 'card' -> 'contrast' after looking "
        "at target TEST accuracy; this rule replaces that choice",
    )
    claims_tested = (
        "unified loss beats DANN, DAN and entropy-only on target accuracy by >= 1 point (Conv-M)",
        "unified loss beats source-only by a wide margin (Conv-M)",
        "with the unified loss, Conv-M >= SqueezeNet-style + 1 point on target accuracy",
    )

    def run_seed(self, cfg: ConvMDAConfig, seed: int, ctx: Any) -> SeedOutput:
        rendering, tried, selection_run = choose_rendering(cfg, ctx)
        domains = build_domains(cfg, rendering, ctx.device)
        arms, curves = {}, {"source CE loss": {}, "target prediction entropy": {}}
        for arm in cfg.arms:
            reuse = arm == "convm/source_only" and seed == cfg.seeds[0]
            out = selection_run if reuse else ctx.cached(
                f"{arm.replace('/', '_')}_{rendering}", lambda a=arm: run_arm(cfg, domains, a, seed, ctx.device))
            arms[arm] = out["metrics"]
            curves["source CE loss"][arm] = out["curves"]["cls"]
            curves["target prediction entropy"][arm] = out["curves"]["target_entropy"]
        extra = {"source_train": len(domains.source_train), "source_test": len(domains.source_test),
                 "target_adapt": len(domains.target_adapt), "target_val": len(domains.target_val),
                 "target_test": len(domains.target_test), "target_rendering": rendering,
                 "rendering_val_acc": tried}
        return SeedOutput(arms=arms, extra=extra, curves=curves)

    def claims(self, cfg: ConvMDAConfig, result: Any) -> list[Claim]:
        def gap(a: str, b: str) -> Any:
            if a not in result.arms or b not in result.arms:
                return None
            return result.metric(a, "target_acc") - result.metric(b, "target_acc")

        above = tuple(f"{a} above chance" for a in ("convm/source_only",) if a in result.arms)
        claims = [Claim.check(f"convm: unified - {single} target accuracy", gap("convm/unified", f"convm/{single}"),
                              ">=", 0.01, f"card: the unified loss beats {single} (single component) on target "
                              "accuracy by >= 1 point on average", metric="target_acc", requires=above)
                  for single in SINGLE_COMPONENTS]
        claims.append(Claim.check("convm: unified - source_only target accuracy",
                                  gap("convm/unified", "convm/source_only"), ">=", WIDE_MARGIN,
                                  f"card: the unified loss beats source-only by a wide margin (read as >= "
                                  f"{100 * WIDE_MARGIN:g} points)", metric="target_acc", requires=above))
        claims.append(Claim.check("unified: convm - squeeze target accuracy", gap("convm/unified", "squeeze/unified"),
                                  ">=", 0.01, "card: with the unified loss, Conv-M >= SqueezeNet-style + 1 point on "
                                  "target accuracy at similar source accuracy (compression hurts DA)",
                                  metric="target_acc", requires=above + ("similar source accuracy",)))
        return claims

    def preconditions(self, cfg: ConvMDAConfig, result: Any) -> list[Precondition]:
        pre = []
        if "convm/source_only" in result.arms:
            pre += arms_above_chance(result, ("convm/source_only",), "target_acc", CHANCE, 0.1)
        if "convm/unified" in result.arms and "squeeze/unified" in result.arms:
            src = result.metric("convm/unified", "source_acc") - result.metric("squeeze/unified", "source_acc")
            pre.append(Precondition.check(
                "similar source accuracy", abs(src), "<", SIMILAR_SOURCE,
                f"the card compares target accuracy at similar source accuracy (read as within "
                f"{100 * SIMILAR_SOURCE:g} points, |Conv-M - SqueezeNet-style| with the unified loss)"))
        return pre

    def notes(self, cfg: ConvMDAConfig, result: Any) -> list[str]:
        mean = result.mean
        lines = [f"{len(result.seeds)} seed(s) x {cfg.iterations} iterations x ({cfg.batch_size} + {cfg.batch_size}) "
                 "images per step (card: 3 seeds x 2000 x (64 + 64); that is the full preset)."]
        renderings = result.extra.get("target_rendering", {}).get("values", [])
        tried = result.extra.get("rendering_val_acc", {}).get("values", [])
        lines.append(f"target rendering {renderings[0] if renderings else '?'} "
                     f"(target_rendering={cfg.target_rendering!r}); source-only target-validation accuracy of "
                     f"each rendering tried (seed {cfg.seeds[0]}): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in (tried[0] if tried else {}).items())
                     + f" (bar {RENDERING_BAR:g}; test labels are never read for this choice).")
        for arm in (a for a in ALL_ARMS if a in result.arms):
            lines.append(f"{arm}: target {100 * mean(arm, 'target_acc'):.1f}%, "
                         f"source {100 * mean(arm, 'source_acc'):.1f}%, "
                         f"domain probe {100 * mean(arm, 'domain_probe_acc'):.1f}% (A-distance "
                         f"{mean(arm, 'a_distance'):.2f}), {int(mean(arm, 'params'))} params")
        if "convm/unified" in result.arms and "convm/source_only" in result.arms:
            shift = mean("convm/unified", "a_distance") - mean("convm/source_only", "a_distance")
            lines.append(f"A-distance proxy, unified - source-only (Conv-M): {shift:+.2f} (negative: the unified "
                         "loss brought the domains' features closer).")
        return lines
