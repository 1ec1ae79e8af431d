"""39-instance-search: DASR, Deeply Activated Salient Region instance features from layer-wise back-propagation
(Xiao, Zhao, Lin, Hong, Ngo, ACM TOMM 2022, arXiv:2002.00185).

Card 39 at small scale: no ImageNet weights offline, so a 5-stage CNN (~0.28M params) is pre-trained for
a few epochs on 20 synthetic shape classes (honed.data.instance_scenes), then frozen. Instance search on
cluttered 128x128 scenes with 1-3 pasted instances (12 sklearn photo crops + 8 procedural objects, never
seen in pre-training), one clean query crop per instance. Side by side on the same frozen net and scenes:

* ``dasr``: peaks of the last stage's channel-mean response, layer-wise (excitation) back-propagation,
  95th-percentile blob, +-2 sigma ellipse box, ROI-average pooling of a stage's map, max cosine per image;
* ``gap``: global average pooling of the whole image (no localisation);
* ``vanilla_grad``: the same pipeline with plain gradients (no patched convs);
* ``random_boxes``: as many random boxes per image as DASR found, same pooling;
* ``oracle_boxes``: the ground-truth boxes, same pooling (ceiling).

Metrics: retrieval mAP (points) and localisation recall@IoU0.5 of the best box per GT instance.
"""
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import Claim, Experiment, Precondition, SeedOutput, register_experiment
from honed.core.loop import evaluate_classifier, train
from honed.vision.dasr import DASR, pool_regions
from honed.data.instance_scenes import (NUM_SHAPE_CLASSES, make_instance_scenes, make_instances,
                                          make_shape_dataset, query_images)
from honed.vision.retrieval_metrics import average_precision, localisation_recall

ARMS = ("dasr", "gap", "vanilla_grad", "random_boxes", "oracle_boxes")


@dataclass(frozen=True)
class InstanceSearchConfig(ExperimentConfig):
    """Defaults are the ``small`` preset. ``descriptor_stage`` (0-based) is the pooled map: the card says
    "a certain layer" (R), layer3/layer4 as options. -1 (default) chooses it among
    ``descriptor_candidates`` (default: the card's layer3 / layer4 analogues, stages 3 and 4) on
    ``validation_images`` validation scenes (a scene seed the test database never uses): the stage whose
    pooled ground-truth boxes retrieve best (oracle-box mAP), shared by every arm. ``map_stage4`` (layer4
    analogue) is reported as a diagnostic."""

    seeds: tuple[int, ...] = (0,)  # one seed: the per-image backward passes of dasr / vanilla_grad dominate the cost
    threads: int = 2
    per_class: int = 150
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    widths: tuple[int, ...] = (16, 32, 64, 128, 160)
    database_images: int = 200
    queries: int = 20
    image_size: int = 128
    query_size: int = 48
    descriptor_stage: int = -1  # (R) card step 7: "a certain layer"; -1 = chosen on validation scenes
    descriptor_candidates: tuple[int, ...] = (3, 4)  # the card's layer3 / layer4 analogues
    validation_images: int = 100
    percentile: float = 0.95
    n_sigma: float = 2.0
    max_peaks: int = 8
    box_nms_iou: float = -1.0  # < 0: plain DASR (no NMS); 0.3 gives the card's DASR*

    @classmethod
    def smoke(cls) -> "InstanceSearchConfig":
        return replace(cls(), seeds=(0,), per_class=20, epochs=1, database_images=20, queries=5, validation_images=10)

    def validate(self) -> None:
        if len(self.widths) != 5 or not -1 <= self.descriptor_stage < 5 or self.validation_images < 1:
            raise ConfigError("widths needs 5 stages, descriptor_stage in [-1, 5) and validation_images >= 1")
        if not self.descriptor_candidates or not all(0 <= s < 5 for s in self.descriptor_candidates):
            raise ConfigError(f"descriptor_candidates must be stages in [0, 5), got {self.descriptor_candidates}")
        if self.per_class < 1 or self.epochs < 1 or self.database_images < 1 or not 1 <= self.queries <= 20:
            raise ConfigError("per_class, epochs, database_images >= 1 and queries in [1, 20]")


class FiveStageCNN(nn.Module):
    """Small classifier standing in for ImageNet ResNet-50 (DASR reproduction, arXiv:2002.00185): 5 stages
    of conv3x3-BN-ReLU, max-pool after stages 0-2 (stride 8), global average pool + linear head."""

    def __init__(self, widths=(16, 32, 64, 128, 160), classes: int = NUM_SHAPE_CLASSES):
        super().__init__()
        stages, prev = [], 3
        for i, w in enumerate(widths):
            layers = [nn.Conv2d(prev, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            stages.append(nn.Sequential(*layers, *([nn.MaxPool2d(2)] if i < 3 else [])))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(prev, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages((x - 0.5) / 0.25)
        return self.head(x.mean((2, 3)))


class ShuffledBatches:
    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size, self.seed, self.epoch = x, y, batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def pretrain(cfg: InstanceSearchConfig, seed: int, ctx: Any) -> tuple[FiveStageCNN, dict[str, float]]:
    x, y = make_shape_dataset(cfg.per_class, seed)
    n_test = len(x) // 10
    torch.manual_seed(seed)
    model = FiveStageCNN(cfg.widths)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    history = train(model, ShuffledBatches(x[n_test:], y[n_test:], cfg.batch_size, seed), opt, cfg.epochs,
                    checkpoint=ctx.checkpoint("cnn"), progress=False)
    acc = evaluate_classifier(model, x[:n_test], y[:n_test])["accuracy"]
    return model.eval(), {"pretrain_acc": acc, "pretrain_loss": history["train_loss"][-1]}


def random_boxes(gen: torch.Generator, count: int, size: int) -> torch.Tensor:
    """``count`` boxes with sides U(10%, 50%) of the image, uniformly placed inside it."""
    sides = (0.1 + 0.4 * torch.rand(count, 2, generator=gen)) * size
    corner = torch.rand(count, 2, generator=gen) * (size - sides)
    return torch.cat([corner, corner + sides], 1)


def arm_boxes(arm: str, model, cfg, scenes, seed, stage: int) -> list[list[list[float]]]:
    """Boxes per database image of a localising arm (JSON-able)."""
    size = cfg.image_size
    if arm == "gap":
        return [[[0.0, 0.0, float(size), float(size)]] for _ in scenes.images]
    if arm == "oracle_boxes":
        return [b.tolist() for b in scenes.boxes]
    dasr = DASR(model, model.stages[4], model.stages[stage], percentile=cfg.percentile,
                n_sigma=cfg.n_sigma, max_peaks=cfg.max_peaks, excitation=arm == "dasr",
                box_nms_iou=None if cfg.box_nms_iou < 0 else cfg.box_nms_iou)
    return [dasr.regions(image)[0].tolist() for image in scenes.images]


def search(model, stage: int, boxes: list, scenes, queries: torch.Tensor, relevant: torch.Tensor) -> list[float]:
    """AP per query (points; their mean is the mAP): query = whole-crop pooled descriptor; image score =
    max cosine over its regions. Per-query APs are the claims' per-example outcomes."""
    with torch.no_grad():
        qmaps = model.stages[:stage + 1]((queries - 0.5) / 0.25)
        dmaps = model.stages[:stage + 1]((scenes.images - 0.5) / 0.25)
    q = F.normalize(qmaps.mean((2, 3)), dim=1)
    scores = torch.full((len(queries), len(scenes.images)), -2.0)
    for n, b in enumerate(boxes):
        if b:
            desc = pool_regions(dmaps[n], torch.tensor(b), tuple(scenes.images.shape[-2:]))
            scores[:, n] = (q @ desc.t()).max(1).values
    return [100 * average_precision(s, r) for s, r in zip(scores, relevant)]


def search_queries(instances: list, scenes, count: int, query_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` instances present in ``scenes``: their clean query crops and (Q, N) relevance."""
    relevant = scenes.relevance(len(instances))
    present = [q for q in range(len(instances)) if relevant[q].any()][:count]
    return query_images(instances, query_size)[present], relevant[present]


def choose_descriptor_stage(model, instances: list, cfg: InstanceSearchConfig, seed: int) -> tuple[int, dict]:
    """The card's "a certain layer" (R), chosen among ``cfg.descriptor_candidates`` on VALIDATION scenes
    (scene seed 30_000 + seed; the test database uses 10_000 + seed): the stage whose pooled ground-truth
    boxes give the highest mAP. The oracle is the neutral criterion (it uses no arm's boxes). Returns
    (stage, {stage: validation mAP})."""
    if cfg.descriptor_stage >= 0:
        return cfg.descriptor_stage, {}
    scenes = make_instance_scenes(instances, cfg.validation_images, 30_000 + seed, cfg.image_size)
    queries, relevant = search_queries(instances, scenes, cfg.queries, cfg.query_size)
    boxes = [b.tolist() for b in scenes.boxes]
    val = {stage: sum(search(model, stage, boxes, scenes, queries, relevant)) / len(queries)
           for stage in cfg.descriptor_candidates}
    return max(val, key=val.get), val


@register_experiment
class InstanceSearchExperiment(Experiment):
    id = "39-instance-search"
    title = "DASR: instance search with regions from layer-wise back-propagated response peaks"
    family = "vision"
    paper = "DASR instance features (arXiv:2002.00185)"
    summary = ("A frozen classification CNN localises unseen object instances: peaks of its channel-mean response "
               "are back-propagated with a positive-weight mass-conserving conv rule, each peak's salient blob gives "
               "a +-2 sigma ellipse box, and the box pools a feature map into the instance descriptor. Measured on "
               "synthetic cluttered scenes beside global pooling, vanilla gradients, random boxes and GT boxes.")
    Config = InstanceSearchConfig
    method = ("dasr",)
    baselines = ("gap", "vanilla_grad", "random_boxes", "oracle_boxes")
    components = ("honed.vision.dasr:DASR", "honed.vision.dasr:layerwise_backprop", "honed.vision.dasr:find_peaks",
                  "honed.vision.dasr:peak_response_map", "honed.vision.dasr:ellipse_box",
                  "honed.vision.dasr:pool_regions", "honed.vision.retrieval_metrics:mean_average_precision",
                  "honed.vision.retrieval_metrics:localisation_recall")
    reconstructed = (
        "backbone: a 5-stage CNN pre-trained on 20 synthetic shape classes stands in for ImageNet ResNet-50",
        "descriptor layer (card: 'a certain layer', layer3/layer4 as options): chosen per seed between the "
        "layer3 / layer4 analogues (stages 3, 4) by the oracle-box mAP on validation scenes (the first version "
        "fixed stage 3); descriptor_candidates can widen the choice to lower stages, but that is not the "
        "default: widening was considered only after reading the first version's test mAP, so it would be a "
        "choice informed by test; stage 4 is reported as a diagnostic",
        "no PCA whitening; the query descriptor pools the whole clean query crop",
        "scikit-image is not installed: its sample images are replaced by 8 procedural textured objects",
        "random_boxes: sides U(10%, 50%) of the image, as many per image as DASR found",
    )
    claims_tested = (
        "DASR beats global average pooling by >= 10 mAP points (card)",
        "DASR beats vanilla gradients and random boxes by a clear margin, fixed here before running as >= 5 mAP points",
        "oracle GT boxes are the ceiling (oracle >= DASR)",
    )

    def run_seed(self, cfg: InstanceSearchConfig, seed: int, ctx: Any) -> SeedOutput:
        torch.set_flush_denormal(True)  # plain gradients underflow to denormals, which are ~6x slower on CPU
        try:
            return self.measure(cfg, seed, ctx)
        finally:
            torch.set_flush_denormal(False)  # torch's default

    def measure(self, cfg: InstanceSearchConfig, seed: int, ctx: Any) -> SeedOutput:
        model, pre = pretrain(cfg, seed, ctx)
        instances = make_instances(seed)
        stage, val_map = ctx.cached("descriptor_stage", lambda: choose_descriptor_stage(model, instances, cfg, seed))
        scenes = make_instance_scenes(instances, cfg.database_images, 10_000 + seed, cfg.image_size)
        queries, relevant = search_queries(instances, scenes, cfg.queries, cfg.query_size)
        boxes = {arm: ctx.cached(f"boxes_{arm}", lambda arm=arm: arm_boxes(arm, model, cfg, scenes, seed, stage))
                 for arm in ARMS if arm != "random_boxes"}
        gen = torch.Generator().manual_seed(20_000 + seed)
        boxes["random_boxes"] = [random_boxes(gen, max(len(b), 1), cfg.image_size).tolist() for b in boxes["dasr"]]
        arms = {}
        for arm in ARMS:
            pred = [torch.tensor(b).reshape(-1, 4) for b in boxes[arm]]
            arms[arm] = {"map": search(model, stage, boxes[arm], scenes, queries, relevant),
                         "map_stage4": search(model, 4, boxes[arm], scenes, queries, relevant),
                         "loc_recall50": localisation_recall(pred, scenes.boxes, 0.5),
                         "boxes_per_image": sum(map(len, pred)) / len(pred)}
        extra = {**pre, "descriptor_stage": stage,
                 "validation_oracle_map_by_stage": {str(k): v for k, v in val_map.items()}}
        return SeedOutput(arms=arms, extra=extra)

    def claims(self, cfg: InstanceSearchConfig, result: Any) -> list[Claim]:
        m = lambda arm: result.metric(arm, "map")  # noqa: E731 - per-query AP (points): paired over queries
        return [
            Claim.check("DASR - global pooling mAP (points)", m("dasr") - m("gap"), ">=", 10.0,
                        "card: (a) DASR > (b) global average pooling by >= 10 mAP points", metric="map"),
            Claim.check("DASR - vanilla gradient mAP (points)", m("dasr") - m("vanilla_grad"), ">=", 5.0,
                        "card: (a) > (c) vanilla gradient by a clear margin (fixed as 5 points)", metric="map"),
            Claim.check("DASR - random boxes mAP (points)", m("dasr") - m("random_boxes"), ">=", 5.0,
                        "card: (a) > (d) random boxes by a clear margin (fixed as 5 points)", metric="map"),
            Claim.check("oracle boxes - DASR mAP (points)", m("oracle_boxes") - m("dasr"), ">=", 0.0,
                        "card: (e) oracle GT boxes as the ceiling", metric="map"),
        ]

    def preconditions(self, cfg: InstanceSearchConfig, result: Any) -> list[Precondition]:
        m = lambda arm: result.metric(arm, "map")  # noqa: E731
        return [Precondition.check(
            "oracle boxes beat global pooling by the claimed margin", m("oracle_boxes") - m("gap"), ">", 10.0,
            "localisation can only help as far as the descriptors allow: if even ground-truth boxes gain less "
            "than the claimed 10 mAP points over global pooling, the backbone's descriptors, not DASR, decide")]

    def notes(self, cfg: InstanceSearchConfig, result: Any) -> list[str]:
        mean = result.mean
        stages = result.extra.get("descriptor_stage", {}).get("values", [])
        val = result.extra.get("validation_oracle_map_by_stage", {}).get("values", [])
        lines = [f"descriptor stage per seed {[int(st) for st in stages]}, chosen on validation scenes by "
                 "oracle-box mAP per stage: "
                 + "; ".join(", ".join(f"stage {k} {v:.1f}" for k, v in by.items()) for by in val if by) + "."]
        lines += ["mAP (chosen stage / stage 4 descriptors), recall@IoU0.5, boxes per image: " + "; ".join(
            f"{a} {mean(a, 'map'):.1f} / {mean(a, 'map_stage4'):.1f}, {mean(a, 'loc_recall50'):.2f}, "
            f"{mean(a, 'boxes_per_image'):.1f}" for a in ARMS) + "."]
        acc = result.extra.get("pretrain_acc")
        if isinstance(acc, dict) and "mean" in acc:
            lines.append(f"pre-training accuracy on held-out synthetic shapes: {acc['mean']:.3f} (mean over seeds).")
        gap_c = mean("dasr", "map") - mean("vanilla_grad", "map")
        if gap_c < 5.0:
            lines.append(f"DASR vs vanilla gradients differ by {gap_c:.1f} mAP points, localisation recall "
                         f"{mean('dasr', 'loc_recall50'):.2f} vs {mean('vanilla_grad', 'loc_recall50'):.2f} (oracle boxes "
                         f"reach {mean('oracle_boxes', 'map'):.1f} mAP): the patched rule does not localise these "
                         "pasted instances better than plain gradients on this small shape-trained net.")
        return lines

    def plot(self, result: Any, fig: Any) -> bool:
        ax_map, ax_loc = fig.subplots(1, 2)
        for ax, metric, title in ((ax_map, "map", "retrieval mAP (points)"),
                                  (ax_loc, "loc_recall50", "localisation recall@IoU0.5")):
            stats = [result.arms[a][metric] for a in ARMS]
            ax.bar(range(len(ARMS)), [s["mean"] for s in stats], yerr=[s["std"] for s in stats],
                   color=["C0" if result.is_method_arm(a) else "C7" for a in ARMS])
            ax.set_xticks(range(len(ARMS)), ARMS, fontsize=7, rotation=20)
            ax.set(title=title)
        return True
