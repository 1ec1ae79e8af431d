"""34-fewshot-seg-prior: few-shot segmentation with query priors from a global + local (SLIC) contrastive
prior extractor (Liu et al., "Few-Shot Segmentation with Global and Local Contrastive Learning",
arXiv:2108.05293; module internals reconstructed: "query-prior FSS (reconstructed)").

Per seed, on synthetic shapes-on-textures scenes (6 base shape classes, 4 novel): a frozen backbone B is
trained by supervised segmentation of the base classes (the stand-in for an ImageNet backbone: nothing
downloads); prior extractors E are trained WITHOUT labels on the base images - global + local InfoNCE
over SLIC superpixels (the method), global only, local over grid patches - or left at random
initialisation; K priors are k-means centres of each E's superpixel embeddings. The same FSS head
(PFENet-lite: prototype + support-query cosine prior) is trained on base-class 1-shot episodes with or
without the query's prior maps, then scored on the same 1- and 5-shot novel-class test episodes. Outcome:
per-episode foreground intersections and unions per novel class, so the standard FSS mIoU (per class
sum I / sum U, mean over classes) gets a paired bootstrap interval over episodes.
"""
import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import Claim, Experiment, Precondition, SeedOutput, register_experiment
from honed.data.segmentation_scenes import FEWSHOT_SHAPES, TEXTURED_STYLE, make_segmentation_scenes
from honed.vision.prior_extractor import (PriorExtractor, extractor_loss, fit_priors, grid_segments, prior_maps,
                                          slic_segments)
from honed.vision.query_prior_fss import QueryPriorFSS, class_index, episode_counts, fewshot_miou, sample_episode

BASE = tuple(range(1, 7))  # label values of the base classes (shapes 0-5)
NOVEL = tuple(range(7, 11))  # label values of the novel classes (shapes 6-9)
ARMS = ("full", "support_only", "global_only", "grid_patches", "random_extractor")
EXTRACTOR_OF = {"full": ("global_local", "slic"), "global_only": ("global", "slic"),
                "grid_patches": ("global_local", "grid"), "random_extractor": (None, "slic")}
SHOTS = (1, 5)
CHANCE_MARGIN = 0.05  # mIoU above the all-foreground prediction; fixed before any run
FIXED_BATCH = 128  # base images of the trained-extractor precondition (4 training batches at small)
TRAINED_ARMS = ("full", "global_only", "grid_patches")  # arms whose extractor is trained


@dataclass(frozen=True)
class FewShotPriorConfig(ExperimentConfig):
    """Defaults are the ``small`` preset. Card scale except (compute, 2 CPU cores): 48x48 scenes instead of
    64x64 (stride-4 features 12x12), the extractor 16-32 channels wide, 200 extractor iterations of batch
    32 over the 2000 unlabeled base images, one seed. How small was set: in a first run (one seed, a
    4-layer backbone of 300 iterations, background textures at full contrast) every head predicted
    background only (validation and test alike: every above-chance precondition failed). Development runs
    on 600 base images, read on the novel-class validation episodes only, then gave the support-only head
    an mIoU above the all-foreground map with the six-layer dilated backbone (400 iterations) and the
    background textures at 0.4 contrast, and not at full contrast. Measured cost of ``small``: 8.5 minutes
    wall (2.7 minutes of user CPU) on the shared 2-core machine at load average ~7. ``full``: 64x64, 600
    extractor iterations, 3 seeds, 1000 episodes (an estimate scaled from small's measured time by pixels x
    iterations x seeds: ~20x)."""

    seeds: tuple[int, ...] = (0,)
    threads: int = 1
    data_seed: int = 0
    size: int = 48
    n_base: int = 2000
    n_test_pool: int = 600
    n_val_pool: int = 300  # novel-class validation episodes: for design decisions, never the test episodes
    val_episodes: int = 200
    objects: tuple[int, int] = (1, 3)
    radius: tuple[float, float] = (0.15, 0.3)
    min_pixels: int = 20
    n_segments: int = 32  # (R) SLIC superpixels per image (card: ~32-64 at 64x64)
    grid_cells: int = 6  # grid-patch ablation: 6 x 6 patches, about as many as the superpixels
    extractor_width: int = 16
    extractor_dim: int = 32
    extractor_iterations: int = 200
    extractor_batch: int = 32
    tau: float = 0.2  # (R) tau_global = tau_local
    lambda_local: float = 1.0  # (R)
    num_priors: int = 16
    backbone_width: int = 32
    backbone_iterations: int = 400
    backbone_batch: int = 32
    head_hidden: int = 32
    head_iterations: int = 600
    head_batch: int = 16
    lr: float = 1e-3
    test_episodes: int = 500

    @classmethod
    def smoke(cls) -> "FewShotPriorConfig":
        return replace(cls(), size=32, n_base=100, n_test_pool=60, n_val_pool=40, val_episodes=10,
                       extractor_iterations=3, extractor_batch=8,
                       backbone_iterations=3, head_iterations=3, test_episodes=20, n_segments=16, grid_cells=4,
                       min_pixels=8, num_priors=4)

    @classmethod
    def full(cls) -> "FewShotPriorConfig":
        return replace(cls(), seeds=(0, 1, 2), size=64, extractor_iterations=600, backbone_iterations=600,
                       head_iterations=1000, test_episodes=1000, n_segments=48, grid_cells=7)

    def validate(self) -> None:
        for name in ("n_base", "n_test_pool", "extractor_iterations", "backbone_iterations", "head_iterations",
                     "test_episodes", "num_priors", "extractor_batch", "head_batch", "n_segments", "grid_cells"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.size % 4 or self.size < 16:
            raise ConfigError(f"size must be a multiple of 4 and >= 16, got {self.size}")
        if self.extractor_batch < 2:
            raise ConfigError("extractor_batch must be >= 2 (InfoNCE needs negatives)")


def make_data(cfg: FewShotPriorConfig, device: torch.device) -> dict[str, Any]:
    """Base pool (only base shapes; its labels train B and the FSS head, never E) and the test pool (all
    shapes; episodes on novel classes only), with SLIC and grid segments of the base pool."""
    base = make_segmentation_scenes(cfg.n_base, cfg.data_seed * 1000, TEXTURED_STYLE, FEWSHOT_SHAPES, cfg.size,
                                    cfg.objects, cfg.radius, classes=tuple(c - 1 for c in BASE))
    test = make_segmentation_scenes(cfg.n_test_pool, cfg.data_seed * 1000 + 1, TEXTURED_STYLE, FEWSHOT_SHAPES,
                                    cfg.size, cfg.objects, cfg.radius)
    val = make_segmentation_scenes(cfg.n_val_pool, cfg.data_seed * 1000 + 3, TEXTURED_STYLE, FEWSHOT_SHAPES,
                                   cfg.size, cfg.objects, cfg.radius)
    segments = {"slic": slic_segments(base.x, cfg.n_segments),
                "grid": grid_segments(cfg.n_base, cfg.size, cfg.size, cfg.grid_cells)}
    gen = torch.Generator().manual_seed(cfg.data_seed * 1000 + 2)
    index, val_index = class_index(test.y, NOVEL, cfg.min_pixels), class_index(val.y, NOVEL, cfg.min_pixels)
    episodes = [sample_episode(index, max(SHOTS), gen) for _ in range(cfg.test_episodes)]
    return {"base_x": base.x.to(device), "base_y": base.y.to(device), "test_x": test.x.to(device),
            "test_y": test.y.to(device), "val_x": val.x.to(device), "val_y": val.y.to(device),
            "segments": {k: v.to(device) for k, v in segments.items()},
            "train_index": class_index(base.y, BASE, cfg.min_pixels), "episodes": episodes,
            "val_episodes": [sample_episode(val_index, 1, gen) for _ in range(cfg.val_episodes)]}


class BaseBackbone(torch.nn.Module):
    """Backbone B: six 3x3 conv-BN-ReLU layers (strides 2, 1, 2, 1, 1, 1; the last two dilated 2 and 4 for
    a receptive field of 67 px), features (N, 2 * width, H/4, W/4) and a 1x1 head over background + the
    base classes. Trained once per seed on base-class segmentation, then frozen."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c_out, stride, dilation in ((width, 2, 1), (width, 1, 1), (2 * width, 2, 1), (2 * width, 1, 1),
                                        (2 * width, 1, 2), (2 * width, 1, 4)):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation=dilation, bias=False),
                       torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]
            c_in = c_out
        self.body, self.head = torch.nn.Sequential(*layers), torch.nn.Conv2d(c_in, len(BASE) + 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(self.body(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


def train_backbone(cfg: FewShotPriorConfig, data: dict, seed: int) -> BaseBackbone:
    """B trained by supervised segmentation of background + the 6 base classes on the base pool, then frozen."""
    torch.manual_seed(seed)
    net = BaseBackbone(cfg.backbone_width).to(data["base_x"].device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed + 10)
    for _ in range(cfg.backbone_iterations):
        pick = torch.randint(len(data["base_x"]), (cfg.backbone_batch,), generator=gen).to(data["base_x"].device)
        loss = F.cross_entropy(net(data["base_x"][pick]), data["base_y"][pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def backbone_features(net: BaseBackbone, x: torch.Tensor, batch: int = 200) -> torch.Tensor:
    return torch.cat([net.body(x[i:i + batch]) for i in range(0, len(x), batch)])


def train_extractor(cfg: FewShotPriorConfig, data: dict, arm: str,
                    seed: int) -> tuple[PriorExtractor, dict[str, float]]:
    """E for ``arm`` (see EXTRACTOR_OF), trained without labels on the base images; its loss log, with its
    loss on one fixed batch of fixed views before and after training (the precondition that E trained)."""
    mode, segments = EXTRACTOR_OF[arm]
    torch.manual_seed(seed + 20)
    net = PriorExtractor(width=cfg.extractor_width, dim=cfg.extractor_dim).to(data["base_x"].device)
    log: dict[str, float] = {}
    if mode is not None:
        log["extractor_fixed_batch_before"] = fixed_batch_loss(net, cfg, data, arm, seed)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(seed + 30)
        for step in range(cfg.extractor_iterations):
            pick = torch.randint(len(data["base_x"]), (cfg.extractor_batch,), generator=gen).to(data["base_x"].device)
            out = extractor_loss(net, data["base_x"][pick], data["segments"][segments][pick], gen, mode,
                                 cfg.lambda_local, cfg.tau, cfg.tau)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            if step == 0 or step == cfg.extractor_iterations - 1:
                when = "first" if step == 0 else "last"
                log.update({f"extractor_{k}_{when}": float(v.detach()) for k, v in out.items()})
        log["extractor_fixed_batch_after"] = fixed_batch_loss(net, cfg, data, arm, seed)
    return net.eval().requires_grad_(False), log


@torch.no_grad()
def fixed_batch_loss(net: PriorExtractor, cfg: FewShotPriorConfig, data: dict, arm: str, seed: int) -> float:
    """The arm's extractor loss on the first ``FIXED_BATCH`` base images with the same random views every
    time it is called (a generator seeded from ``seed``), on a copy in training mode (batch statistics, as
    in training; the copy keeps E's running statistics untouched). Training lowers it if E learned."""
    mode, segments = EXTRACTOR_OF[arm]
    n = min(FIXED_BATCH, len(data["base_x"]))
    gen = torch.Generator().manual_seed(seed + 60)
    out = extractor_loss(copy.deepcopy(net).train(), data["base_x"][:n], data["segments"][segments][:n], gen, mode,
                         cfg.lambda_local, cfg.tau, cfg.tau)
    return float(out["loss"])


def episode_batch(feats: torch.Tensor, labels: torch.Tensor, priors: torch.Tensor | None, episodes: list,
                  shots: int) -> tuple:
    """Tensors of a list of episodes (class, query, supports): query features, support features (N, S, ...),
    binary support masks, the query's binary target and its prior maps (or None)."""
    queries = torch.tensor([q for _, q, _ in episodes], device=feats.device)
    supports = torch.tensor([s[:shots] for _, _, s in episodes], device=feats.device)
    classes = torch.tensor([c for c, _, _ in episodes], device=feats.device)
    s_mask = (labels[supports] == classes[:, None, None, None]).float()
    target = (labels[queries] == classes[:, None, None]).long()
    return feats[queries], feats[supports], s_mask, target, None if priors is None else priors[queries]


def train_head(cfg: FewShotPriorConfig, data: dict, feats: torch.Tensor, priors: torch.Tensor | None,
               seed: int) -> QueryPriorFSS:
    """The FSS head on 1-shot base-class episodes (the same episode stream for every arm); B and E frozen
    (their features and prior maps are precomputed, so no gradient can reach them)."""
    torch.manual_seed(seed + 40)
    head = QueryPriorFSS(feats.shape[1], 0 if priors is None else cfg.num_priors, cfg.head_hidden).to(feats.device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed + 50)
    for _ in range(cfg.head_iterations):
        episodes = [sample_episode(data["train_index"], 1, gen) for _ in range(cfg.head_batch)]
        q, s, s_mask, target, r = episode_batch(feats, data["base_y"], priors, episodes, 1)
        loss = F.cross_entropy(head(q, s, s_mask, r), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def val_miou(head: QueryPriorFSS, data: dict, feats: torch.Tensor, priors: torch.Tensor | None) -> float:
    """1-shot FSS mIoU on the novel-class validation episodes (a separate scene pool)."""
    q, s, s_mask, target, r = episode_batch(feats, data["val_y"], priors, data["val_episodes"], 1)
    counts = episode_counts(head(q, s, s_mask, r).argmax(1), target)
    return fewshot_miou(torch.tensor([c for c, _, _ in data["val_episodes"]]), counts[0].cpu(), counts[1].cpu())


@torch.no_grad()
def score_head(head: QueryPriorFSS, data: dict, feats: torch.Tensor, priors: torch.Tensor | None) -> dict[str, list]:
    """Per test episode and shot count: foreground intersection and union (fractions of the image) per novel
    class (0 for episodes of other classes) and the episode's own IoU."""
    out: dict[str, Any] = {}
    classes = torch.tensor([c for c, _, _ in data["episodes"]])
    for shots in SHOTS:
        inter, union = [], []
        for i in range(0, len(data["episodes"]), 100):
            q, s, s_mask, target, r = episode_batch(feats, data["test_y"], priors, data["episodes"][i:i + 100], shots)
            counts = episode_counts(head(q, s, s_mask, r).argmax(1), target)
            inter.append(counts[0].cpu())
            union.append(counts[1].cpu())
        inter, union = torch.cat(inter) / target[0].numel(), torch.cat(union) / target[0].numel()
        for c in NOVEL:
            out[f"inter{shots}_c{c}"] = torch.where(classes == c, inter, 0.0).tolist()
            out[f"union{shots}_c{c}"] = torch.where(classes == c, union, 0.0).tolist()
        out[f"episode_iou{shots}"] = (inter / union.clamp_min(1e-12)).tolist()
    return out


def run_arm(cfg: FewShotPriorConfig, data: dict, arm: str, seed: int, backbone: dict) -> dict[str, Any]:
    """Extractor (unless support-only), priors, prior maps of the base and test pools, head, scores."""
    if arm == "support_only":
        head = train_head(cfg, data, backbone["base"], None, seed)
        return score_head(head, data, backbone["test"], None) | {
            "val_miou1": val_miou(head, data, backbone["val"], None)}
    extractor, log = train_extractor(cfg, data, arm, seed)
    priors = fit_priors(extractor, data["base_x"], data["segments"]["slic"], cfg.num_priors, seed)
    maps = {pool: prior_maps(extractor, data[f"{pool}_x"], priors) for pool in ("base", "test", "val")}
    head = train_head(cfg, data, backbone["base"], maps["base"], seed)
    return score_head(head, data, backbone["test"], maps["test"]) | log | {
        "val_miou1": val_miou(head, data, backbone["val"], maps["val"])}


def chance_miou(data: dict) -> float:
    """FSS mIoU of the all-foreground prediction on the test episodes (the chance level; shot-free)."""
    classes = torch.tensor([c for c, _, _ in data["episodes"]])
    queries = torch.tensor([q for _, q, _ in data["episodes"]])
    share = (data["test_y"][queries].cpu() == classes[:, None, None]).float().flatten(1).mean(1)
    return fewshot_miou(classes, share, torch.ones_like(share))


def miou_stat(result: Any, arm: str, shots: int):
    """Standard FSS mIoU of ``arm`` as a statistic of per-episode terms: mean over novel classes of
    mean(I_c) / mean(U_c) = sum I_c / sum U_c (paired bootstrap over the shared episodes)."""
    ratios = [result.metric(arm, f"inter{shots}_c{c}") / result.metric(arm, f"union{shots}_c{c}") for c in NOVEL]
    return sum(ratios[1:], ratios[0]) / len(NOVEL)


@register_experiment
class FewShotPriorExperiment(Experiment):
    id = "34-fewshot-seg-prior"
    title = "Query-prior few-shot segmentation (reconstructed): global + local (SLIC) contrastive prior extractor"
    family = "vision"
    paper = "Few-Shot Segmentation with Global and Local Contrastive Learning (Liu et al., arXiv:2108.05293)"
    summary = ("48x48 synthetic shapes-on-textures scenes with 6 base and 4 novel shape classes. A backbone is trained "
               "on base-class segmentation and frozen; prior extractors are trained without labels on 2000 base "
               "images (global + local InfoNCE over SLIC superpixels; global only; local over grid patches) or left "
               "random, and K = 16 k-means priors of their superpixel embeddings give each query K prior maps. The "
               "same PFENet-lite head (support prototype + support-query cosine prior) is trained on 1-shot base "
               "episodes with or without the prior maps and scored on the same 500 novel-class episodes, 1- and "
               "5-shot. Metric: standard FSS mIoU (per class sum I / sum U) with a paired bootstrap over episodes.")
    Config = FewShotPriorConfig
    method = ("full",)
    baselines = ("support_only", "global_only", "grid_patches", "random_extractor")
    components = ("honed.vision.prior_extractor:PriorExtractor", "honed.vision.prior_extractor:extractor_loss",
                  "honed.vision.prior_extractor:slic_segments", "honed.vision.prior_extractor:fit_priors",
                  "honed.vision.prior_extractor:prior_maps", "honed.vision.query_prior_fss:QueryPriorFSS",
                  "honed.vision.query_prior_fss:sample_episode", "honed.vision.query_prior_fss:fewshot_miou")
    reconstructed = (
        "query-prior FSS (reconstructed): module internals are rebuilt from the abstract and the card",
        "the frozen ImageNet backbone is replaced by a six-layer dilated CNN (stride 4) trained on base-class "
        "segmentation of the base pool and then frozen (nothing downloads); its features feed every head",
        "tau_global = tau_local = 0.2, lambda_local = 1, K = 16 k-means priors, SLIC n_segments = 32 at 48x48",
        "local negatives: every other region of the batch in the other view; views: nearest-sampled square crops "
        "(0.4-1 of the side) with a flip, then colour jitter and blur",
        "priors are k-means centres of SLIC-superpixel embeddings for every extractor (grid_patches changes only "
        "the patches of the local loss)",
        "prior maps enter as K channels through a 1x1 conv and gate the query features (gate=True)",
        "the head trains with Adam 1e-3 on 1-shot episodes only (card: SGD 0.0025 poly, a model per shot); "
        "5-shot averages the prototypes and support-query priors of the same head",
        "the novel classes L and T of the card are pentagon and crescent (instance_scenes.shape_mask outlines)",
        "deviation (compute): 48x48 scenes, a 16-32 channel extractor and 200 extractor iterations at small",
    )
    claims_tested = ("query priors + prototype beat support-only guidance by >= 2 mIoU (1-shot)",
                     "global + local beats global-only; global-only >= random extractor (1-shot)",
                     "SLIC patches beat grid patches (1-shot)", "query priors help at 5-shot too")

    def run_seed(self, cfg: FewShotPriorConfig, seed: int, ctx: Any) -> SeedOutput:
        data = make_data(cfg, ctx.device)
        shared: dict[str, torch.Tensor] = {}

        def backbone() -> dict[str, torch.Tensor]:  # trained only when some arm still has to run
            if not shared:
                net = train_backbone(cfg, data, seed)
                shared.update({pool: backbone_features(net, data[f"{pool}_x"]) for pool in ("base", "test", "val")})
            return shared

        arms = {arm: ctx.cached(arm, lambda a=arm: run_arm(cfg, data, a, seed, backbone())) for arm in ARMS}
        extra = {"all_foreground_miou": chance_miou(data),
                 "mean_superpixels": float((data["segments"]["slic"].flatten(1).amax(1) + 1).float().mean())}
        return SeedOutput(arms=arms, extra=extra)

    def claims(self, cfg: FewShotPriorConfig, result: Any) -> list[Claim]:
        m = lambda arm, shots=1: miou_stat(result, arm, shots)  # noqa: E731

        def needs(*arms: str, shots: int = 1) -> tuple[str, ...]:
            return (tuple(f"{a} above chance ({shots}-shot)" for a in arms)
                    + tuple(f"{a} extractor trained" for a in arms if a in TRAINED_ARMS))

        return [
            Claim.check("full - support_only, 1-shot mIoU", m("full") - m("support_only"), ">=", 0.02,
                        "card: (a) > (b) by >= 2 mIoU (query priors help over support-only guidance)",
                        metric="fss_miou_1shot", requires=needs("full", "support_only")),
            Claim.check("full - global_only, 1-shot mIoU", m("full") - m("global_only"), ">", 0.0,
                        "card: (a) > (c) (local patch contrast helps over global only)", metric="fss_miou_1shot",
                        requires=needs("full", "global_only")),
            Claim.check("global_only - random_extractor, 1-shot mIoU", m("global_only") - m("random_extractor"), ">=",
                        0.0, "card: (c) >= (d) (a trained extractor is no worse than a random one)",
                        metric="fss_miou_1shot", requires=needs("global_only", "random_extractor")),
            Claim.check("full - grid_patches, 1-shot mIoU", m("full") - m("grid_patches"), ">", 0.0,
                        "paper TL;DR: SLIC-based patches beat grid patches", metric="fss_miou_1shot",
                        requires=needs("full", "grid_patches")),
            Claim.check("full - support_only, 5-shot mIoU", m("full", 5) - m("support_only", 5), ">", 0.0,
                        "paper: state of the art at 1- and 5-shot (query priors help at 5-shot too)",
                        metric="fss_miou_5shot", requires=needs("full", "support_only", shots=5)),
        ]

    def preconditions(self, cfg: FewShotPriorConfig, result: Any) -> list[Precondition]:
        chance = result.extra["all_foreground_miou"]["mean"]
        above = [Precondition.check(f"{arm} above chance ({shots}-shot)", miou_stat(result, arm, shots), ">",
                                    chance + CHANCE_MARGIN,
                                    f"the all-foreground map scores {chance:.3g} mIoU on these episodes; a head at "
                                    f"chance cannot show the effect (bar = chance + {CHANCE_MARGIN:g})")
                 for shots in SHOTS for arm in ARMS]
        trained = [Precondition.check(
            f"{arm} extractor trained",
            result.metric(arm, "extractor_fixed_batch_before") - result.metric(arm, "extractor_fixed_batch_after"),
            ">", 0.0, f"its unsupervised loss on {FIXED_BATCH} fixed base images with fixed views fell during "
            "training (before - after > 0; an exact function of the extractor, mean over seeds); an extractor "
            "that did not learn makes a comparison of extractors a comparison of initialisations",
            exact=True) for arm in TRAINED_ARMS]
        return above + trained

    def notes(self, cfg: FewShotPriorConfig, result: Any) -> list[str]:
        from honed.core.evidence import estimate

        table = lambda shots: ", ".join(f"{a} {100 * estimate(miou_stat(result, a, shots)).value:.2f}"  # noqa: E731
                                        for a in ARMS)
        lines = [f"novel-class FSS mIoU (points, {len(result.seeds)} seed(s), {cfg.test_episodes} episodes): "
                 f"1-shot: {table(1)}; 5-shot: {table(5)}.",
                 f"1-shot mIoU on {cfg.val_episodes} novel-class validation episodes (a separate scene pool): "
                 + ", ".join(f"{a} {100 * result.mean(a, 'val_miou1'):.2f}" for a in ARMS) + ".",
                 f"all-foreground prediction: {100 * result.extra['all_foreground_miou']['mean']:.2f} mIoU points "
                 f"(the chance level); SLIC gave {result.extra['mean_superpixels']['mean']:.1f} superpixels per image "
                 f"on average (n_segments={cfg.n_segments})."]
        loss = lambda a, part: (f"{part} {result.mean(a, f'extractor_{part}_first'):.3f} -> "  # noqa: E731
                                f"{result.mean(a, f'extractor_{part}_last'):.3f}")
        losses = [f"{a} {loss(a, 'global')}, {loss(a, 'local')}"
                  for a in ("full", "global_only", "grid_patches")]
        fixed = ", ".join(f"{a} {result.mean(a, 'extractor_fixed_batch_before'):.3f} -> "
                          f"{result.mean(a, 'extractor_fixed_batch_after'):.3f}" for a in TRAINED_ARMS)
        lines.append("extractor InfoNCE, first -> last iteration: " + "; ".join(losses) + f"; on {FIXED_BATCH} "
                     f"fixed base images with fixed views, before -> after training: {fixed}.")
        if len(result.seeds) < 3:
            lines.append(f"{len(result.seeds)} seed(s): the intervals resample episodes only; seed-to-seed spread "
                         "(extractor, backbone and head initialisation) is not in them.")
        return lines
