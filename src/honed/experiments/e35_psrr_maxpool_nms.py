"""35-psrr-maxpool-nms: PSRR-MaxpoolNMS, a parallel max-pooling replacement for GreedyNMS at every stage
(Zhang, Lin, Hu, Zhao, Aly, CVPR 2021, arXiv:2105.12990; base method MaxpoolNMS, arXiv:1904.12221).

Card 35 at small scale on synthetic 512x512 detection scenes (honed.data.synthetic_scenes): 1-30 GT
boxes (sides 16-256 px, ratios {0.5, 1, 2}, 3 classes), 20-60 candidates per GT with IoU-correlated
scores plus false positives, each candidate carrying its source anchor. Side by side on the same scenes:

* ``greedy``: GreedyNMS at IoU 0.5, per class (honed's reference of torchvision.ops.batched_nms: a Python
  loop over kept boxes, one vectorised IoU row each - the speed claim is against this, not a compiled NMS);
* ``maxpool``: MaxpoolNMS - source-anchor cell and channel, per-channel + cross-channel pools, no shift;
* ``psrr_no_shift``: Relationship Recovery + pyramid, unshifted grid only (ablation);
* ``psrr_no_rr``: source-anchor mapping + pyramid + shifted grid (ablation);
* ``psrr``: full PSRR-MaxpoolNMS.

Metrics: COCO-style AP@0.5 and AP@[.5:.95] (own implementation, max 100 detections per image) on the
final-stage simulation (regressed boxes off the anchor grid) and the first-stage one (proposals on anchor
centres, class-agnostic); agreement with greedy's kept set (precision, recall, keep-count ratio); and
runtime against the number of boxes (random class-agnostic boxes), all arms timed in one interleaved loop.
AP is not a mean over images, so its claims get a t interval over seeds; the speed-up is kept per timing
repeat (greedy / arm time of the same interleaved repeat), so it gets a bootstrap interval over repeats.
"""
import math
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.evidence import smin
from honed.core.experiment import Claim, Experiment, Precondition, SeedOutput, register_experiment
from honed.vision.detection_ap import COCO_THRESHOLDS, ImageDetections, box_iou, coco_average_precision
from honed.vision.nms import LEVELS, AnchorSet, greedy_nms, psrr_maxpool_nms
from honed.data.synthetic_scenes import Scene, SceneSpec, make_scenes, random_boxes

POOL_ARMS = {"maxpool": dict(relationship_recovery=False, shift=False),
             "psrr_no_shift": dict(relationship_recovery=True, shift=False),
             "psrr_no_rr": dict(relationship_recovery=False, shift=True),
             "psrr": dict(relationship_recovery=True, shift=True)}
ARMS = ("greedy", *POOL_ARMS)
SIZE_EDGES = (32.0, 64.0, 128.0)  # GT side buckets of the diagnostics: <32, 32-64, 64-128, >=128 px
SPEEDUP = "speedup_vs_python_greedy_at_max_n"
MIN_GREEDY_AP50 = 50.0  # precondition: the simulated detector + greedy reference finds most objects


@dataclass(frozen=True)
class PSRRConfig(ExperimentConfig):
    """Defaults are the ``small`` preset: 8 seeds x 200 scenes per stage (AP gets a t interval over seeds,
    so seeds, not images, narrow it), timing with 5 interleaved repeats per size."""

    images: int = 200
    image_size: int = 512
    max_objects: int = 30
    num_classes: int = 3
    candidates_min: int = 20
    candidates_max: int = 60
    centre_jitter: float = 0.1
    size_jitter: float = 0.15
    score_noise: float = 0.1
    label_noise: float = 0.1
    fp_per_object: float = 3.0
    anchor_spread: float = 0.2  # (R) source anchors within +-20% of the GT size (anchor IoU ~>= 0.5)
    neighbour_channel: float = 0.5  # (R) chance the source anchor has an adjacent scale or ratio
    iou_threshold: float = 0.5
    alpha: float = 0.75
    stride: float = 16.0
    anchor_sides: tuple[float, ...] = (16.0, 32.0, 64.0, 128.0, 256.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    channel_distance: Literal["log", "raw"] = "log"  # (R) card step 1
    levels: tuple[str, ...] = LEVELS  # (R) card step 3 grouping
    max_dets: int = 100
    first_stage: bool = True
    timing_sizes: tuple[int, ...] = (100, 300, 1000, 3000, 10000, 20000)
    timing_repeats: int = 5
    slope_from: int = 1000  # runtime log-log slope fitted over sizes >= this
    seeds: tuple[int, ...] = tuple(range(8))
    threads: int = 1

    @classmethod
    def smoke(cls) -> "PSRRConfig":
        return replace(cls(), images=20, timing_sizes=(100, 1000, 4000), timing_repeats=2, seeds=(0,))

    def validate(self) -> None:
        if self.images < 1 or self.timing_repeats < 1 or self.max_dets < 1 or not self.timing_sizes:
            raise ConfigError("images, timing_repeats, max_dets must be >= 1 and timing_sizes non-empty")
        if sum(n >= self.slope_from for n in self.timing_sizes) < 2:
            raise ConfigError(f"need >= 2 timing_sizes >= slope_from={self.slope_from} to fit a slope")
        if not 0 <= self.iou_threshold <= 1 or self.alpha <= 0 or self.stride <= 0:
            raise ConfigError("iou_threshold in [0, 1], alpha > 0, stride > 0")
        if any(lv not in LEVELS for lv in self.levels):
            raise ConfigError(f"levels must be names from {LEVELS}")

    def anchor_set(self) -> AnchorSet:
        return AnchorSet(tuple(self.anchor_sides), tuple(self.anchor_ratios), self.stride, self.alpha)

    def scene_spec(self, stage: str) -> SceneSpec:
        return SceneSpec(self.image_size, self.max_objects, (16.0, 256.0), (0.5, 1.0, 2.0), self.num_classes,
                         (self.candidates_min, self.candidates_max), self.centre_jitter, self.size_jitter,
                         self.score_noise, self.label_noise, self.fp_per_object, 0.5, self.anchor_spread,
                         self.neighbour_channel, stage)


def run_nms(arm: str, boxes, scores, classes, anchors, cfg: PSRRConfig) -> torch.Tensor:
    if arm == "greedy":
        return greedy_nms(boxes, scores, cfg.iou_threshold, classes=classes)
    return psrr_maxpool_nms(boxes, scores, classes=classes, anchors=anchors,
                            anchor_set=cfg.anchor_set(), image_size=(cfg.image_size, cfg.image_size),
                            levels=tuple(cfg.levels), channel_distance=cfg.channel_distance, **POOL_ARMS[arm])


def keep_lists(arm: str, scenes: list[Scene], cfg: PSRRConfig, per_class: bool) -> dict[str, Any]:
    start = time.perf_counter()
    keeps = [run_nms(arm, s.boxes, s.scores, s.labels if per_class else None, s.anchors, cfg).tolist()
             for s in scenes]
    return {"keep": keeps, "ms_per_image": 1e3 * (time.perf_counter() - start) / len(scenes)}


def accuracy(scenes: list[Scene], keeps: list[list[int]], cfg: PSRRConfig, per_class: bool) -> dict[str, float]:
    """AP@0.5 and AP@[.5:.95] in points; class-agnostic scenes use label 0 for everything."""
    def labels(t):
        return t if per_class else torch.zeros_like(t)
    images = [ImageDetections(s.boxes[k], s.scores[k], labels(s.labels[k]), s.gt_boxes, labels(s.gt_labels))
              for s, k in zip(scenes, (torch.tensor(k, dtype=torch.long) for k in keeps))]
    ap = coco_average_precision(images, COCO_THRESHOLDS, cfg.max_dets)
    return {"ap50": 100 * ap[0.5], "ap50_95": 100 * statistics.fmean(ap.values())}


def agreement(keeps: list[list[int]], greedy: list[list[int]]) -> dict[str, float]:
    both = sum(len(set(a) & set(g)) for a, g in zip(keeps, greedy))
    kept, ref = sum(map(len, keeps)), sum(map(len, greedy))
    return {"agree_precision": both / max(kept, 1), "agree_recall": both / max(ref, 1), "keep_ratio": kept / max(ref, 1)}


def duplicates_and_misses(scenes: list[Scene], keeps: list[list[int]]) -> dict[str, float]:
    """Per GT side bucket: kept same-class boxes with IoU >= 0.5 beyond the first (duplicates per GT)
    and the share of GT with none (misses)."""
    n, dup, miss = [0] * 4, [0] * 4, [0] * 4
    for s, k in zip(scenes, keeps):
        k = torch.tensor(k, dtype=torch.long)
        hits = ((box_iou(s.gt_boxes, s.boxes[k]) >= 0.5) & (s.gt_labels[:, None] == s.labels[k][None])).sum(1)
        sides = ((s.gt_boxes[:, 2:] - s.gt_boxes[:, :2]).prod(1)).sqrt()
        for side, h in zip(sides.tolist(), hits.tolist()):
            b = sum(side >= e for e in SIZE_EDGES)
            n[b], dup[b], miss[b] = n[b] + 1, dup[b] + max(h - 1, 0), miss[b] + (h == 0)
    out = {f"dup_per_gt_b{b}": dup[b] / max(n[b], 1) for b in range(4)}
    out.update({f"miss_rate_b{b}": miss[b] / max(n[b], 1) for b in range(4)})
    return out


def timing(cfg: PSRRConfig, seed: int) -> dict[str, list[list[float]]]:
    """ms per call for every arm, size and repeat (``times[arm][size][repeat]``), arms interleaved within
    each repeat so a repeat's arms see the same machine load."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    spec = cfg.scene_spec("final")
    times = {arm: [] for arm in ARMS}
    for n in cfg.timing_sizes:
        boxes = random_boxes(gen, n, spec).float()
        scores = torch.rand(n, generator=gen)
        samples = {arm: [] for arm in ARMS}
        for _ in range(cfg.timing_repeats):
            for arm in ARMS:
                start = time.perf_counter()
                run_nms(arm, boxes, scores, None, boxes, cfg)
                samples[arm].append(1e3 * (time.perf_counter() - start))
        for arm in ARMS:
            times[arm].append(samples[arm])
    return times


def repeat_speedups(samples: dict[str, list[list[float]]], arm: str) -> list[float]:
    """Greedy time / ``arm`` time at the largest size, one ratio per interleaved repeat (both timed in
    the same repeat), so the mean speed-up gets a bootstrap interval over repeats."""
    return [g / max(a, 1e-9) for g, a in zip(samples["greedy"][-1], samples[arm][-1])]


def loglog_slope(sizes, ms) -> float:
    xs, ys = [math.log(n) for n in sizes], [math.log(max(t, 1e-9)) for t in ms]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def stage_metrics(stage: str, cfg: PSRRConfig, seed: int, ctx) -> dict[str, dict[str, float]]:
    per_class = stage == "final"
    scenes = make_scenes(cfg.images, seed * 7919 + (1 if per_class else 2), cfg.scene_spec(stage), cfg.anchor_set())
    parts = {arm: ctx.cached(f"{stage}_{arm}", lambda arm=arm: keep_lists(arm, scenes, cfg, per_class))
             for arm in ARMS}
    out = {}
    for arm in ARMS:
        keeps = parts[arm]["keep"]
        metrics = {"ms_per_image": parts[arm]["ms_per_image"], **accuracy(scenes, keeps, cfg, per_class),
                   **agreement(keeps, parts["greedy"]["keep"])}
        if per_class:
            metrics.update(duplicates_and_misses(scenes, keeps))
        out[arm] = metrics
    return out


@register_experiment
class PSRRMaxpoolNMSExperiment(Experiment):
    id = "35-psrr-maxpool-nms"
    title = "PSRR-MaxpoolNMS: parallel max-pool NMS with relationship recovery and shifted pyramid pools"
    family = "vision"
    paper = "PSRR-MaxpoolNMS (arXiv:2105.12990)"
    summary = ("Replaces sequential GreedyNMS by max-pooling over (class, anchor channel, cell) score maps: boxes "
               "are re-mapped by their own centre and shape (Relationship Recovery) and pooled in a pyramid of "
               "channel groups, in the original and a half-window-shifted grid. Measured on synthetic final- and "
               "first-stage detection scenes beside GreedyNMS, MaxpoolNMS and the two ablations.")
    Config = PSRRConfig
    method = ("psrr", "psrr_no_shift", "psrr_no_rr")
    baselines = ("greedy", "maxpool")
    components = ("honed.vision.nms:psrr_maxpool_nms", "honed.vision.nms:maxpool_nms",
                  "honed.vision.nms:greedy_nms", "honed.vision.nms:AnchorSet",
                  "honed.vision.detection_ap:coco_average_precision")
    reconstructed = (
        "channel recovery distance: |log area - log A_s| and |log(h/w) - log r| normalised by the anchor "
        "log-spacing (channel_distance='log'; the third-party raw squared difference is 'raw')",
        "pyramid grouping: per channel, all ratios of a scale, all scales of a ratio, all channels, each with the "
        "per-axis minimum kernel of its channels (levels=channel,cross_ratio,cross_scale,all)",
        "MaxpoolNMS baseline uses the same pyramid as PSRR (its original pooled neighbouring channels)",
        "synthetic detector: source anchors within +-anchor_spread=0.2 of the GT size around its centre, adjacent "
        "channel with probability neighbour_channel=0.5; false positives 3 per object with scores U(0, 0.5)",
        "iou_threshold is used by greedy only; the pool methods' suppression radius is alpha=0.75 x anchor size",
    )
    claims_tested = (
        "PSRR-MaxpoolNMS within 1 AP@0.5 point of GreedyNMS on the final-stage simulation",
        "MaxpoolNMS >= 3 AP@0.5 points below GreedyNMS at the final stage",
        "both ablations (no shift, no RR) sit between MaxpoolNMS and full PSRR",
        "PSRR runtime grows ~linearly in the number of boxes and is faster than GreedyNMS",
    )

    def run_seed(self, cfg: PSRRConfig, seed: int, ctx: Any) -> SeedOutput:
        arms = {arm: {} for arm in ARMS}
        stages = ("final", "first") if cfg.first_stage else ("final",)
        for stage in stages:
            prefix = "" if stage == "final" else "first_"
            for arm, metrics in stage_metrics(stage, cfg, seed, ctx).items():
                arms[arm].update({prefix + k: v for k, v in metrics.items()
                                  if stage == "final" or k in ("ap50", "ap50_95", "agree_precision", "agree_recall")})
        samples = ctx.cached("timing_repeats", lambda: timing(cfg, seed))
        times = {arm: [statistics.median(reps) for reps in samples[arm]] for arm in ARMS}
        fit = [i for i, n in enumerate(cfg.timing_sizes) if n >= cfg.slope_from]
        for arm in ARMS:
            arms[arm]["runtime_slope"] = loglog_slope([cfg.timing_sizes[i] for i in fit], [times[arm][i] for i in fit])
            for n, ms in zip(cfg.timing_sizes, times[arm]):
                arms[arm][f"ms_n{n}"] = ms
            arms[arm][SPEEDUP] = repeat_speedups(samples, arm)
        return SeedOutput(arms=arms, curves={"runtime ms vs boxes": times})

    def claims(self, cfg: PSRRConfig, result: Any) -> list[Claim]:
        ap = {arm: result.metric(arm, "ap50") for arm in ARMS}
        reference = ("greedy reference detects",)
        claims = [
            Claim.check("greedy - psrr AP@0.5 (points)", ap["greedy"] - ap["psrr"], "<=", 1.0,
                        "card: PSRR within 1 AP@0.5 point of GreedyNMS (one-sided: PSRR may be higher)", metric="ap50",
                        requires=reference),
            Claim.check("greedy - maxpool AP@0.5 (points)", ap["greedy"] - ap["maxpool"], ">=", 3.0,
                        "card: MaxpoolNMS >= 3 points below GreedyNMS at the final stage", metric="ap50",
                        requires=reference),
        ]
        for arm in ("psrr_no_shift", "psrr_no_rr"):
            claims.append(Claim.check(
                f"{arm} AP@0.5 between maxpool and psrr (min of both margins)",
                smin(ap[arm] - ap["maxpool"], ap["psrr"] - ap[arm]), ">=", 0.0,
                "card: both ablations sit in between MaxpoolNMS and full PSRR", metric="ap50", requires=reference))
        claims.append(Claim.check(
            "psrr runtime log-log slope", result.metric("psrr", "runtime_slope"),
            "<=", 1.2, "card: PSRR runtime grows ~linearly (slope of log time vs log boxes; 1.2 = ~linear)",
            metric="runtime_slope", requires=()))
        claims.append(Claim.check(
            f"python-loop greedy / psrr time at {cfg.timing_sizes[-1]} boxes", result.metric("psrr", SPEEDUP),
            ">=", 1.0, "card headline: PSRR-MaxpoolNMS is faster than GreedyNMS - measured here against honed's "
            "Python-loop greedy_nms (one IoU row per kept box); the compiled torchvision.ops.nms needs another torch "
            "and is measured by `make bench-torchvision` (benchmarks/bench_nms.py)",
            metric=SPEEDUP, requires=()))
        return claims

    def preconditions(self, cfg: PSRRConfig, result: Any) -> list[Precondition]:
        return [Precondition.check(
            "greedy reference detects", result.metric("greedy", "ap50"), ">", MIN_GREEDY_AP50,
            f"the AP gaps are measured against GreedyNMS on the simulated detector: a reference at or below "
            f"{MIN_GREEDY_AP50:g} AP@0.5 points would mean the scenes, not the NMS, set the AP")]

    def notes(self, cfg: PSRRConfig, result: Any) -> list[str]:
        mean = result.mean
        lines = ["final stage AP@0.5 / AP@[.5:.95] (points): " + ", ".join(
            f"{a} {mean(a, 'ap50'):.2f} / {mean(a, 'ap50_95'):.2f}" for a in ARMS) + "."]
        lines.append("agreement with greedy's kept set (precision / recall / keep ratio): " + ", ".join(
            f"{a} {mean(a, 'agree_precision'):.3f} / {mean(a, 'agree_recall'):.3f} / {mean(a, 'keep_ratio'):.2f}"
            for a in POOL_ARMS) + ".")
        if cfg.first_stage:
            lines.append("first stage (proposals on anchor centres, class-agnostic) AP@0.5: " + ", ".join(
                f"{a} {mean(a, 'first_ap50'):.2f}" for a in ARMS) + ".")
        buckets = ("<32", "32-64", "64-128", ">=128")
        for arm in ("greedy", "psrr"):
            lines.append(f"{arm}: duplicates per GT / miss rate by GT side " + ", ".join(
                f"{b} px {mean(arm, f'dup_per_gt_b{i}'):.3f} / {mean(arm, f'miss_rate_b{i}'):.3f}"
                for i, b in enumerate(buckets)) + ".")
        kernels = cfg.anchor_set().kernels()
        ones = sum(k == (1, 1) for k in kernels)
        gap = mean("greedy", "ap50") - mean("psrr", "ap50")
        dups = sum(mean("psrr", f"dup_per_gt_b{i}") - mean("greedy", f"dup_per_gt_b{i}") for i in range(4))
        misses = sum(mean("psrr", f"miss_rate_b{i}") - mean("greedy", f"miss_rate_b{i}") for i in range(4))
        if gap > 1.0 and dups > misses:
            cross = [k for chans, k in cfg.anchor_set().groups(("cross_scale",))]
            lines.append(f"PSRR is {gap:.2f} AP@0.5 points below greedy, by extra duplicates (per GT, by size, "
                         f"above) more than misses: with one stride beta={cfg.stride:g} px for every scale, {ones} of "
                         f"{len(kernels)} channels have a 1x1 kernel and the cross-scale groups take the minimum "
                         f"kernel over scales, {cross}, so copies of one object that land in adjacent cells of a "
                         "small-anchor channel, or in two scale channels (size jitter across a scale boundary), are "
                         "never in one window; the shift cannot widen a 1-cell window. The card leaves the exact "
                         "grouping unverified (e.g. adjacent scales only); the card's default is what is measured.")
        times = ", ".join(f"{a} " + "/".join(f"{mean(a, f'ms_n{n}'):.1f}" for n in cfg.timing_sizes) for a in ARMS)
        lines.append(f"median ms per call at {'/'.join(map(str, cfg.timing_sizes))} boxes (1 thread): {times}; "
                     "log-log slopes: " + ", ".join(f"{a} {mean(a, 'runtime_slope'):.2f}" for a in ARMS) + ".")
        return lines

    def plot(self, result: Any, fig: Any) -> bool:
        ax_time, ax_ap = fig.subplots(1, 2)
        sizes = result.config["timing_sizes"]
        for arm, ms in result.curves.get("runtime ms vs boxes", {}).items():
            ax_time.loglog(sizes[:len(ms)], ms, "-o" if result.is_method_arm(arm) else "--o", label=arm, ms=3)
        ax_time.set(title="runtime vs boxes", xlabel="boxes", ylabel="ms")
        ax_time.legend(fontsize=7)
        ax_time.grid(alpha=0.3, which="both")
        for i, metric in enumerate(("ap50", "ap50_95")):
            stats = [result.arms[a][metric] for a in ARMS]
            ax_ap.bar([k + 0.4 * i for k in range(len(ARMS))], [s["mean"] for s in stats], 0.4,
                      yerr=[s["std"] for s in stats], label=metric)
        ax_ap.set_xticks([k + 0.2 for k in range(len(ARMS))], ARMS, fontsize=7)
        ax_ap.set(title="final stage AP (points)")
        ax_ap.legend(fontsize=7)
        return True
