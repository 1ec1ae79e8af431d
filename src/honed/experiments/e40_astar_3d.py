"""40-astar-3d: the A*3D attribute benchmark (Pham et al., "A*3D Dataset: Towards Autonomous Driving in
Challenging Environments", ICRA 2020, arXiv:1909.07541): how object density and time of day change a 3D
detector, with training and test sets sliced by attribute at equal size.

Card 40 at small scale: synthetic BEV driving scenes (honed.data.bev_scenes; LiDAR with range-dependent
density and ray occlusion, a camera raster on the BEV grid, night = 0.2 contrast + strong noise) written in
KITTI format and read back through honed.data.kitti (honed.data.bev_kitti). One detector for every arm, the
shared CenterNet with a yaw head on the BEV grid (honed.vision.bev_detector), LiDAR-only (3 channels) or
fusion (+ the camera raster), cars only; the same iterations for every arm.

* density (LiDAR-only): train on ``n_train`` low-density frames, ``n_train`` high-density frames, or a
  half/half mix; test on the low- and the high-density test frames;
* time (fusion): the mix's scenes with day cameras, night cameras, or half and half; test on every test
  scene by day and by night (the same scenes: only the camera differs). The LiDAR-only mix model is the
  control: its night and day inputs are identical by construction (an invariant, not a claim).

Metric: KITTI-style BEV AP (rotated IoU >= 0.5, 11 recall points, honed.vision.bev_ap) per difficulty, with
Easy / Moderate / Hard from occlusion level and LiDAR points in the box; the claims use Moderate. AP is not a
mean over frames, so claims get a t interval over seeds (3 at least). Only the attribute effects are
claimed, not A*3D's absolute numbers; the KITTI <-> A*3D cross-dataset table needs real data and is not run.
"""
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.evidence import smax
from honed.core.experiment import Claim, Experiment, Invariant, Precondition, SeedOutput, register_experiment
from honed.data.bev_kitti import read_frame, read_frame_index, write_bev_dataset
from honed.data.bev_scenes import SceneSpec, attribute_split, make_bev_scene
from honed.data.kitti_boxes import points_in_boxes
from honed.vision.bev_ap import LEVELS, BevFrameResult, bev_average_precision, difficulty_mask
from honed.vision.bev_detector import BevGrid, bev_targets, detections_to_bev, rasterize_points
from honed.vision.centernet import CenterNet, centernet_loss, decode_detections, stack_targets

DENSITY_ARMS = {"lidar/low": {"low": 1.0}, "lidar/high": {"high": 1.0}, "lidar/mix": {"low": 0.5, "high": 0.5}}
TIME_ARMS = {"fusion/day": {"day": 1.0}, "fusion/night": {"night": 1.0}, "fusion/both": {"day": 0.5, "night": 0.5}}
DETECTS_ON = {"lidar/low": "low", "lidar/high": "high", "lidar/mix": "all", "fusion/day": "day",
              "fusion/night": "night", "fusion/both": "day"}
DETECTOR_BAR = 0.3  # precondition: each arm's Moderate AP on its own slice
DROP = 0.05  # card: >= 5 AP
BOTH_MARGIN = 0.02  # card: training on both within 1-2 AP of the best per slice


@dataclass(frozen=True)
class AStar3DConfig(ExperimentConfig):
    """Defaults are the ``small`` preset: 3 seeds (AP's claims need a t interval over seeds), 300 frames per
    training set, 200 test frames (half low, half high density), a 64 x 64 m grid of 1 m cells."""

    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1
    data_seed: int = 0
    n_train: int = 300  # frames per training set (every arm the same)
    n_test: int = 200
    area: float = 64.0
    cell: float = 1.0
    stride: int = 2
    width: int = 16
    iters: int = 300
    batch: int = 8
    lr: float = 2e-3
    iou_threshold: float = 0.5  # card: BEV AP@0.5 for cars
    recall_points: int = 11
    claim_level: str = "Moderate"
    max_dets: int = 50

    @classmethod
    def smoke(cls) -> "AStar3DConfig":
        return replace(cls(), seeds=(0,), n_train=12, n_test=8, iters=2, batch=4, width=4)

    @classmethod
    def full(cls) -> "AStar3DConfig":
        """The card's 3,000 frames (1,200 per density pool, 600 test), 0.5 m cells and 5 seeds: an estimate
        from the small preset's per-iteration time, about 30x its runtime."""
        return replace(cls(), seeds=(0, 1, 2, 3, 4), n_train=1200, n_test=600, cell=0.5, stride=4, iters=3000)

    def validate(self) -> None:
        for name in ("n_train", "n_test", "iters", "batch", "width", "max_dets"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_train % 2 or self.n_test % 2:
            raise ConfigError("n_train and n_test must be even (half/half attribute splits)")
        if self.claim_level not in LEVELS:
            raise ConfigError(f"claim_level must be one of {LEVELS}, got {self.claim_level!r}")
        if self.recall_points not in (11, 40) or not 0 < self.iou_threshold <= 1 or self.lr <= 0:
            raise ConfigError("recall_points must be 11 or 40, iou_threshold in (0, 1], lr > 0")
        if round(self.area / self.cell) % self.stride:
            raise ConfigError("the grid side (area / cell) must be a multiple of stride")


def frame_plan(cfg: AStar3DConfig) -> dict[str, list[int]]:
    """Frame indices of each pool: train_low, train_high, test_low, test_high (in writing order)."""
    n, t = cfg.n_train, cfg.n_test // 2
    return {"train_low": list(range(n)), "train_high": list(range(n, 2 * n)),
            "test_low": list(range(2 * n, 2 * n + t)), "test_high": list(range(2 * n + t, 2 * n + 2 * t))}


def ensure_dataset(cfg: AStar3DConfig, root: Path) -> Path:
    """Write the run's scenes as a KITTI-format folder once (reused while ``frames.json`` is complete)."""
    plan = frame_plan(cfg)
    total = sum(len(v) for v in plan.values())
    index = read_frame_index(root)
    if index is not None and len(index) == total:
        return root
    rng = np.random.default_rng(cfg.data_seed)
    spec = SceneSpec(area=cfg.area, cell=cfg.cell)
    scenes = [make_bev_scene(rng, "high" if pool.endswith("high") else "low", spec) for pool, ids in plan.items() for _ in ids]
    return write_bev_dataset(root, scenes, spec)


@dataclass
class Loaded:
    """Every frame read back: LiDAR rasters (N, 3, S, S), camera rasters {time: (N, 1, S, S)}, CenterNet
    targets, and per frame the cars' BEV boxes (G, 5), occlusion levels and LiDAR point counts."""

    lidar: torch.Tensor
    camera: dict[str, torch.Tensor]
    targets: list
    cars: list[np.ndarray]
    occluded: list[np.ndarray]
    points: list[np.ndarray]


def load_dataset(cfg: AStar3DConfig, root: Path, grid: BevGrid) -> Loaded:
    lidar, camera, targets, cars, occluded, points = [], {"day": [], "night": []}, [], [], [], []
    for entry in read_frame_index(root):
        frame = read_frame(root, entry["frame"])
        is_car = np.array([t == "Car" for t in frame.types], dtype=bool)
        boxes = frame.boxes[is_car]
        lidar.append(rasterize_points(frame.points, grid))
        for time in camera:
            camera[time].append(torch.from_numpy(frame.camera[time])[None])
        targets.append(bev_targets(boxes[:, [0, 1, 3, 4, 6]], grid, cfg.stride))
        cars.append(boxes[:, [0, 1, 3, 4, 6]])
        occluded.append(frame.occluded[is_car])
        points.append(points_in_boxes(frame.points, boxes))
    return Loaded(torch.stack(lidar), {t: torch.stack(v) for t, v in camera.items()}, targets, cars, occluded, points)


def inputs(data: Loaded, index: list[int], times: list[str] | None) -> torch.Tensor:
    """Detector inputs of frames ``index``: LiDAR channels, plus the camera of ``times[k]`` for fusion."""
    x = data.lidar[index]
    if times is None:
        return x
    cam = torch.stack([data.camera[t][i] for i, t in zip(index, times)])
    return torch.cat([x, cam], 1)


def train_arm(cfg: AStar3DConfig, data: Loaded, plan: list[tuple[int, str]], fusion: bool, seed: int,
              device: torch.device) -> CenterNet:
    """One detector trained ``iters`` iterations on ``plan`` (frame, attribute) (init and order from ``seed``)."""
    torch.manual_seed(seed)
    model = CenterNet(4 if fusion else 3, 1, width=cfg.width, stride=cfg.stride, yaw=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), cfg.lr)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(cfg.iters):
        pick = [plan[k] for k in torch.randint(len(plan), (cfg.batch,), generator=gen).tolist()]
        index = [i for i, _ in pick]
        x = inputs(data, index, [a for _, a in pick] if fusion else None).to(device)
        targets = stack_targets([data.targets[i] for i in index])
        targets = type(targets)(*(getattr(targets, f).to(device) for f in ("heatmap", "index", "size", "offset", "yaw", "mask")))
        loss = centernet_loss(model(x), targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def slice_ap(cfg: AStar3DConfig, model: CenterNet, data: Loaded, index: list[int], time: str | None,
             grid: BevGrid, device: torch.device) -> dict[str, float]:
    """{level: BEV AP} of ``model`` on frames ``index`` (camera of ``time`` for a fusion model)."""
    model.eval()
    results = {level: [] for level in LEVELS}
    for start in range(0, len(index), 50):
        part = index[start:start + 50]
        x = inputs(data, part, None if time is None else [time] * len(part)).to(device)
        for i, det in zip(part, decode_detections(model(x), cfg.stride, k=cfg.max_dets, threshold=0.01)):
            boxes = detections_to_bev(det, grid)
            gt = torch.tensor(data.cars[i]).reshape(-1, 5)
            for level in LEVELS:
                counts = torch.from_numpy(difficulty_mask(level, data.occluded[i], data.points[i], rule="points"))
                results[level].append(BevFrameResult(boxes, det.scores.double().cpu(), gt, counts))
    return {level: bev_average_precision(r, cfg.iou_threshold, cfg.recall_points) for level, r in results.items()}


def arm_plans(cfg: AStar3DConfig) -> dict[str, list[tuple[int, str]]]:
    """Each arm's training set as (frame, attribute) pairs, every one ``n_train`` frames: the density arms
    draw exactly their share from the low / high pools; the time arms all use the mix's scenes, with the
    camera of each frame by day or by night (the "both" arm: exactly half and half)."""
    plan = frame_plan(cfg)
    pools = {"low": plan["train_low"], "high": plan["train_high"]}
    arms = {arm: attribute_split(pools, {a: round(f * cfg.n_train) for a, f in share.items()}, cfg.data_seed + k)
            for k, (arm, share) in enumerate(DENSITY_ARMS.items())}
    scenes = [i for i, _ in arms["lidar/mix"]]
    for k, (arm, share) in enumerate(TIME_ARMS.items()):
        n_day = round(share.get("day", 0.0) * cfg.n_train)
        day = set(np.random.default_rng(cfg.data_seed + 10 + k).permutation(cfg.n_train)[:n_day].tolist())
        arms[arm] = [(frame, "day" if pos in day else "night") for pos, frame in enumerate(scenes)]
    return arms


def measure_arm(cfg: AStar3DConfig, arm: str, plan: list[tuple[int, str]], data: Loaded, seed: int,
                grid: BevGrid, device: torch.device) -> dict[str, float]:
    """Train ``arm`` and return its AP per test slice and level as ``ap_<slice>_<level>``: LiDAR-only arms on
    the low / high / all test frames, fusion arms on all test frames by day and by night."""
    fusion = arm.startswith("fusion")
    model = train_arm(cfg, data, plan, fusion, seed, device)
    tests = frame_plan(cfg)
    everything = tests["test_low"] + tests["test_high"]
    slices = ({"day": (everything, "day"), "night": (everything, "night")} if fusion else
              {"low": (tests["test_low"], None), "high": (tests["test_high"], None), "all": (everything, None)})
    out = {}
    for name, (index, time) in slices.items():
        for level, ap in slice_ap(cfg, model, data, index, time, grid, device).items():
            out[f"ap_{name}_{level.lower()}"] = ap
    return out


@register_experiment
class AStar3DExperiment(Experiment):
    id = "40-astar-3d"
    title = "A*3D attribute benchmark: object density and day/night slices of a BEV 3D detector"
    family = "vision"
    paper = ("A*3D Dataset: Towards Autonomous Driving in Challenging Environments (Pham et al., ICRA 2020, "
             "arXiv:1909.07541)")
    summary = ("Synthetic BEV driving scenes (LiDAR with range-dependent density and ray occlusion, a BEV camera "
               "raster that night degrades) are written in KITTI format and read back. One CenterNet BEV detector "
               "(cars, yaw head) is trained on attribute slices of equal size: low- vs high-density vs mixed "
               "(LiDAR-only), and day vs night vs both cameras on the same scenes (LiDAR + camera fusion). "
               "Measured: KITTI-style BEV AP (rotated IoU 0.5, 11-point) per difficulty on each test slice.")
    Config = AStar3DConfig
    method = ("lidar/mix", "fusion/both")
    baselines = ("lidar/low", "lidar/high", "fusion/day", "fusion/night")
    components = ("honed.vision.bev_ap:bev_average_precision", "honed.vision.bev_ap:difficulty_mask",
                  "honed.vision.bev_ap:evaluate_kitti_bev", "honed.vision.rotated_iou:rotated_iou",
                  "honed.vision.bev_detector:rasterize_points", "honed.vision.bev_detector:bev_targets",
                  "honed.vision.bev_detector:detections_to_bev", "honed.data.bev_kitti:read_frame",
                  "honed.data.kitti_boxes:lidar_boxes", "honed.data.bev_scenes:make_bev_scene",
                  "honed.data.bev_scenes:attribute_split")
    reconstructed = (
        "difficulty: Easy / Moderate / Hard by occlusion level (<= 0 / 1 / 2) and LiDAR points in the box "
        "(>= 50 / 20 / 5), the card's small-scale rule (KITTI's height / occlusion / truncation rule is the "
        "'kitti' option of difficulty_mask, for real data)",
        "occlusion level from the fraction of an object's azimuth rays that another object stops first "
        "(<= 0.1: 0, <= 0.5: 1, else 2)",
        "camera: a raster already on the BEV grid (visible footprints in each object's brightness over a "
        "ground texture), not a front-view image lifted by a learned view transform",
        "yaw coded as (sin 2 phi, cos 2 phi): a box and its reverse are the same BEV box",
        "the small preset: 1 m cells, 300 frames per training set, 300 iterations (card: 3,000 frames; the "
        "full preset) so that 6 detectors x 3 seeds fit the CPU budget",
    )

    def run_seed(self, cfg: AStar3DConfig, seed: int, ctx: Any) -> SeedOutput:
        root = ensure_dataset(cfg, Path(ctx.dir).parent / "kitti_scenes")
        grid = BevGrid(x_range=(0.0, cfg.area), y_range=(-cfg.area / 2, cfg.area / 2), cell=cfg.cell)
        data = load_dataset(cfg, root, grid)
        plans = arm_plans(cfg)
        arms = {arm: ctx.cached(arm.replace("/", "_"), lambda a=arm: measure_arm(
            cfg, a, plans[a], data, 1000 * seed, grid, ctx.device)) for arm in plans}
        day_share = sum(t == "day" for _, t in plans["fusion/both"]) / cfg.n_train
        extra = {"train_set_sizes": sorted({len(p) for p in plans.values()}), "both_day_share": day_share}
        return SeedOutput(arms=arms, extra=extra)

    def claims(self, cfg: AStar3DConfig, result: Any) -> list[Claim]:
        m, lv = result.metric, cfg.claim_level.lower()

        def ap(arm: str, test: str):
            return m(arm, f"ap_{test}_{lv}")

        density_need = ("lidar/low detects", "lidar/high detects", "lidar/mix detects")
        time_need = ("fusion/day detects", "fusion/night detects", "fusion/both detects")
        low_loss = ap("lidar/high", "high") - ap("lidar/low", "high")
        high_loss = ap("lidar/low", "low") - ap("lidar/high", "low")
        average = {arm: (ap(arm, "low") + ap(arm, "high")) / 2 for arm in DENSITY_ARMS}
        claims = [
            Claim.check(f"density: low-trained loss on high-density test - high-trained loss on low-density test ({lv})",
                        low_loss - high_loss, ">=", DROP,
                        "card: the low-density-trained model loses >= 5 AP on high-density test more than the "
                        "reverse", metric=f"ap_{lv}", requires=density_need + ("high density is harder",)),
            Claim.check(f"density: mix - best single-density model, mean AP over both tests ({lv})",
                        average["lidar/mix"] - smax(average["lidar/low"], average["lidar/high"]), ">=", 0.0,
                        "card: mixing high and low density gives the best average mAP at equal training size",
                        metric=f"ap_{lv}", requires=density_need),
            Claim.check(f"time: day-trained fusion AP by day - at night ({lv})",
                        ap("fusion/day", "day") - ap("fusion/day", "night"), ">=", DROP,
                        "card: the day-trained fusion model drops >= 5 AP at night (F-PointNet 67.47 vs night-trained "
                        "73.62 moderate)", metric=f"ap_{lv}", requires=time_need + ("the camera helps by day",))]
        for test in ("day", "night"):
            claims.append(Claim.check(
                f"time: both - best single-time model on the {test} test ({lv})",
                ap("fusion/both", test) - smax(ap("fusion/day", test), ap("fusion/night", test)), ">=", -BOTH_MARGIN,
                "card: training on both is within 1-2 AP of the best per slice", metric=f"ap_{lv}", requires=time_need))
        return claims

    def preconditions(self, cfg: AStar3DConfig, result: Any) -> list[Precondition]:
        m, lv = result.metric, cfg.claim_level.lower()
        checks = [Precondition.check(f"{arm} detects", m(arm, f"ap_{test}_{lv}"), ">", DETECTOR_BAR,
                                     f"BEV AP ({lv}) on its own slice above {DETECTOR_BAR}: attribute effects of a "
                                     "detector that does not detect mean nothing") for arm, test in DETECTS_ON.items()]
        checks.append(Precondition.check(
            "high density is harder", m("lidar/mix", f"ap_low_{lv}") - m("lidar/mix", f"ap_high_{lv}"), ">", 0.0,
            "the density attribute must change the task (crowding, occlusion) for training density to matter"))
        checks.append(Precondition.check(
            "the camera helps by day", m("fusion/day", f"ap_day_{lv}") - m("lidar/mix", f"ap_all_{lv}"), ">", 0.0,
            "a fusion model that gains nothing from the camera has nothing to lose at night (same scenes, same "
            "budget as the LiDAR-only mix model)"))
        return checks

    def invariants(self, cfg: AStar3DConfig, result: Any) -> list[Invariant]:
        sizes = (result.extra.get("train_set_sizes") or {}).get("values") or []
        share = (result.extra.get("both_day_share") or {}).get("mean")
        equal = all(s == [cfg.n_train] for s in sizes) and bool(sizes)
        return [Invariant.check("every training set has n_train frames", float(equal), ">=", 1.0,
                                "the attribute studies fix the training-set size (attribute_split draws exact counts)"),
                Invariant.check("the both-arm is half day, half night", None if share is None else abs(share - 0.5),
                                "<=", 0.0, "exact split of the camera attribute")]

    def notes(self, cfg: AStar3DConfig, result: Any) -> list[str]:
        mean = result.mean
        lines = []
        for arm in DENSITY_ARMS:
            lines.append(f"{arm}: " + "; ".join(f"{t} test " + "/".join(f"{mean(arm, f'ap_{t}_{lv.lower()}'):.3f}"
                                                                         for lv in LEVELS) for t in ("low", "high", "all"))
                         + " (Easy/Moderate/Hard)")
        for arm in TIME_ARMS:
            lines.append(f"{arm}: " + "; ".join(f"{t} test " + "/".join(f"{mean(arm, f'ap_{t}_{lv.lower()}'):.3f}"
                                                                         for lv in LEVELS) for t in ("day", "night"))
                         + " (Easy/Moderate/Hard)")
        lines.append("LiDAR-only control: the generator leaves the LiDAR unchanged at night, so the LiDAR-only "
                     "model's night AP equals its day AP (lidar/mix 'all') by construction; it is not claimed.")
        lines.append("not run: the KITTI <-> A*3D cross-dataset table (needs the real data sets).")
        return lines
