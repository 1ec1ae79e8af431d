"""The seed's data, networks and measured parts of 12-mvstylizer (MVStylizer: an efficient
edge-assisted video photorealistic style transfer system for mobile phones, arXiv:2005.11630), split
out of :mod:`honed.experiments.e12_mvstylizer`: the reference stylizer against its target, the
upscalers per scale, the five pipelines on the test clips (quality, warping error, interleaved
timing), the timing at ``timing_size`` and the federated retraining.
"""
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from honed.core.measure import timed
from honed.data.camera_videos import domain_clip, load_photo
from honed.generative.image_metrics import psnr_per_image, ssim_per_image
from honed.vision.flow_warp import FlowCache
from honed.vision.meta_upscale import MetaUpscaler
from honed.vision.mvstylizer import MVStylizer, nearest_key_copy, temporal_warping_error
from honed.vision.mvstylizer_training import Edge, federated_retrain, fit_stylizer, meta_training_pair, train_meta_upscaler
from honed.vision.photo_style import LabStats, SmallStylizer, photoreal_target

if TYPE_CHECKING:
    from honed.experiments.e12_mvstylizer import MVStylizerConfig

PIPELINES = ("per_frame", "keyframe_copy", "flow_bicubic", "mvstylizer", "mvstylizer_fixed")


class Setup:
    """One seed's data and networks, built on first use (a resumed seed rebuilds only what a missing
    part needs). Clips depend on the config only, so every seed scores the same frames."""

    def __init__(self, cfg: "MVStylizerConfig", seed: int, device: torch.device) -> None:
        self.cfg, self.seed, self.device = cfg, seed, device
        self.gen = torch.Generator().manual_seed(seed)

    @cached_property
    def style(self) -> LabStats:
        return LabStats.of(load_photo(self.cfg.style))

    @cached_property
    def test_clips(self) -> list[torch.Tensor]:
        return [domain_clip(d, self.cfg.frames, self.cfg.size, self.cfg.test_clip_seed + i)
                for i, d in enumerate(self.cfg.test_domains)]

    @cached_property
    def train_frames(self) -> torch.Tensor:
        cfg = self.cfg
        return torch.cat([domain_clip(d, cfg.train_frames, cfg.size, 2000 + i) for i, d in enumerate(cfg.train_domains)])

    @cached_property
    def content(self) -> LabStats:
        """Lab statistics of the training frames: the fixed content statistics of every Reinhard target."""
        return LabStats.of_many(self.train_frames)

    def target(self, frames: torch.Tensor, style: LabStats | None = None) -> torch.Tensor:
        return photoreal_target(frames, style or self.style, self.content)

    @cached_property
    def stylizer(self) -> SmallStylizer:
        """S fitted to the photorealistic target on the training clips' frames."""
        cfg, frames = self.cfg, self.train_frames
        torch.manual_seed(self.seed)
        model = SmallStylizer(cfg.stylizer_width, cfg.stylizer_layers).to(self.device)
        self.stylizer_losses = fit_stylizer(model, frames, self.target(frames), cfg.stylizer_steps,
                                            self.gen, cfg.batch, cfg.crop, cfg.lr)
        return model.eval()

    @cached_property
    def upscaler(self) -> MetaUpscaler:
        """The meta-smoothing upscaler trained on S's (downscaled, full) pairs."""
        cfg, stylizer = self.cfg, self.stylizer
        torch.manual_seed(self.seed + 1)
        model = MetaUpscaler(features=cfg.meta_features).to(self.device)
        self.meta_losses = train_meta_upscaler(model, stylizer, self.train_frames, cfg.meta_steps, self.gen,
                                               cfg.batch, cfg.crop, (1.0, 4.0), cfg.meta_lr)
        return model.eval()

    def pipeline(self, upscaler: MetaUpscaler | None, fixed_interval: int | None = None) -> MVStylizer:
        cfg = self.cfg
        return MVStylizer(self.stylizer, upscaler, cfg.downscale, cfg.tau_key, cfg.g_max, cfg.flow_scale, "dis",
                          cfg.fb_threshold, cfg.photometric_threshold, fixed_interval=fixed_interval)

    def per_frame(self, clip: torch.Tensor) -> torch.Tensor:
        """Pipeline (1): S on every frame at full resolution, one frame at a time (as a phone would)."""
        with torch.no_grad():
            return torch.cat([self.stylizer(frame[None]) for frame in clip])


def reference_part(setup: Setup) -> dict[str, Any]:
    """S against its own target on the test frames, next to the unstylised frames (the identity)."""
    frames = torch.cat(setup.test_clips)
    target = setup.target(frames)
    with torch.no_grad():
        styled = torch.cat([setup.stylizer(f[None].to(setup.device)).cpu() for f in frames])
    return {"stylizer": psnr_per_image(styled, target), "identity": psnr_per_image(frames, target),
            "loss_first": setup.stylizer_losses[0] if setup.stylizer_losses else None,
            "loss_last": setup.stylizer_losses[-1] if setup.stylizer_losses else None}


def upscaler_part(setup: Setup) -> dict[str, Any]:
    """PSNR to S(frame) of bicubic and meta-smoothing upscaling of S(downscaled frame), per scale and
    test frame (every ``upscale_eval_stride``-th), and at the largest scale on training frames (does
    the upscaler fit what it was trained on?)."""
    cfg, upscaler = setup.cfg, setup.upscaler
    test = torch.cat([clip[::cfg.upscale_eval_stride] for clip in setup.test_clips])
    train = setup.train_frames[::max(1, len(setup.train_frames) // len(test))][:len(test)]
    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, frames in (("", test), ("train_", train)):
            for scale in (cfg.upscale_scales if name == "" else (max(cfg.upscale_scales),)):
                low, target, exact = meta_training_pair(setup.stylizer, frames.to(setup.device), scale)
                bicubic = F.interpolate(low, size=target.shape[-2:], mode="bicubic", align_corners=False)
                out[f"{name}x{scale:g}/bicubic"] = psnr_per_image(bicubic.clamp(0, 1), target)
                out[f"{name}x{scale:g}/meta"] = psnr_per_image(upscaler(low, exact).clamp(0, 1), target)
    return out


def timed_pair(setup: Setup, clip: torch.Tensor, repeats: int) -> tuple[list[float], list[float], Any]:
    """Wall times of pipelines (1) and (4) on ``clip``, interleaved (the order alternates per repeat),
    and the outputs of the first repeat ({"per_frame": frames, "mvstylizer": StylizedVideo})."""
    pipeline, device, outputs = setup.pipeline(setup.upscaler), setup.device, {}
    clip = clip.to(device)
    runs = {"per_frame": lambda: outputs.setdefault("per_frame", setup.per_frame(clip)),
            "mvstylizer": lambda: outputs.setdefault("mvstylizer", pipeline(clip))}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats):
        for name in (runs if rep % 2 == 0 else reversed(list(runs))):  # setdefault keeps the first output
            times[name].append(timed(runs[name], device))
    return times["per_frame"], times["mvstylizer"], outputs


def clip_arms(setup: Setup, clip: torch.Tensor, reference: torch.Tensor, mv: Any) -> dict[str, torch.Tensor]:
    """Outputs of pipelines (2), (3) and (5) on ``clip`` (the same key frames as (4) for (2) and (3); (5)
    gets as many key frames as (4) at a fixed interval)."""
    keys = list(mv.selection.keys)
    with torch.no_grad():
        key_full = setup.per_frame(clip[keys])
    interval = max(1, round(clip.shape[0] / len(keys)))
    return {"keyframe_copy": nearest_key_copy(clip.shape[0], keys, key_full),
            "flow_bicubic": setup.pipeline(None)(clip).frames,
            "mvstylizer_fixed": setup.pipeline(setup.upscaler, fixed_interval=interval)(clip).frames}


def pipelines_part(setup: Setup) -> dict[str, Any]:
    """Per test frame PSNR/SSIM to (1), per frame pair warping error and motion, per (clip, repeat)
    speed-up of (4) over (1), key-frame counts."""
    cfg = setup.cfg
    out: dict[str, Any] = {arm: {"mse": [], "ssim": [], "warp_error": []} for arm in PIPELINES}
    out |= {"motion_px": [], "speedup": [], "time_per_frame": [], "time_mvstylizer": [], "keys": [], "max_gap": []}
    for clip in setup.test_clips:
        t_ref, t_mv, outputs = timed_pair(setup, clip, cfg.timing_repeats)
        clip = clip.to(setup.device)
        reference, mv = outputs["per_frame"], outputs["mvstylizer"]
        frames = {"per_frame": reference, "mvstylizer": mv.frames} | clip_arms(setup, clip, reference, mv)
        original = clip.cpu()
        flows = FlowCache(original, "dis", 1.0)  # flow of the ORIGINAL frames, shared by every arm
        for arm, video in frames.items():
            out[arm]["warp_error"] += temporal_warping_error(video.cpu(), original, fb_threshold=cfg.fb_threshold,
                                                             flows=flows)
            if arm != "per_frame":  # MSE per frame: a key frame equal to (1) would make PSNR infinite
                out[arm]["mse"] += (video.clamp(0, 1) - reference).square().flatten(1).mean(1).tolist()
                out[arm]["ssim"] += ssim_per_image(video.clamp(0, 1), reference)
        out["motion_px"] += [float(flows.full(t, t + 1).norm(dim=0).mean()) for t in range(clip.shape[0] - 1)]
        out["speedup"] += [a / b for a, b in zip(t_ref, t_mv)]
        out["time_per_frame"] += [a / clip.shape[0] for a in t_ref]
        out["time_mvstylizer"] += [b / clip.shape[0] for b in t_mv]
        keys = list(mv.selection.keys) + [clip.shape[0]]
        out["keys"].append(len(keys) - 1)
        out["max_gap"].append(max(b - a for a, b in zip(keys, keys[1:])))
    return out


def timing_part(setup: Setup) -> dict[str, Any]:
    """Speed-up of (4) over (1) per repeat on one clip at ``timing_size`` (the largest resolution timed)."""
    cfg = setup.cfg
    clip = domain_clip(cfg.test_domains[0], cfg.timing_frames, cfg.timing_size, cfg.test_clip_seed)
    t_ref, t_mv, _ = timed_pair(setup, clip, cfg.timing_repeats)
    return {"speedup": [a / b for a, b in zip(t_ref, t_mv)], "time_per_frame": [a / len(clip) for a in t_ref],
            "time_mvstylizer": [b / len(clip) for b in t_mv]}


def federated_data(setup: Setup) -> tuple[list[Edge], torch.Tensor, torch.Tensor]:
    """The edges' collected frames with their new-style targets, and the held-out edges' frames and
    targets (every ``fed_stride``-th frame of the test clips of ``fed_heldout``)."""
    cfg, new_style = setup.cfg, LabStats.of(load_photo(setup.cfg.new_style))
    edges = []
    for i, (domain, clips) in enumerate(zip(cfg.fed_edges, cfg.fed_edge_clips)):
        frames = torch.cat([domain_clip(domain, cfg.frames, cfg.size, 3000 + 10 * i + c)[::cfg.fed_stride]
                            for c in range(clips)])
        edges.append(Edge(frames, setup.target(frames, new_style)))
    held = torch.cat([domain_clip(d, cfg.frames, cfg.size, 4000 + i)[::cfg.fed_stride]
                      for i, d in enumerate(cfg.fed_heldout)])
    return edges, held, setup.target(held, new_style)


def styled_psnr(model: torch.nn.Module, frames: torch.Tensor, target: torch.Tensor, device: torch.device) -> list[float]:
    with torch.no_grad():
        styled = torch.cat([model(f[None].to(device)).cpu() for f in frames])
    return psnr_per_image(styled, target)


def federated_part(setup: Setup) -> dict[str, Any]:
    """FedAvg (rounds x local steps, weighted by n_e) vs local-only (each edge alone for the same number
    of steps; per held-out frame the mean over the edges' models) vs no retraining, on held-out frames."""
    cfg, device, stylizer = setup.cfg, setup.device, setup.stylizer
    edges, held, target = federated_data(setup)
    gen = torch.Generator().manual_seed(setup.seed + 7)
    probe = slice(0, 4)  # a few held-out frames traced per round for the curve
    curve: list[float] = []
    fed = federated_retrain(stylizer, edges, cfg.fed_rounds, cfg.fed_local_steps, gen, cfg.batch, cfg.fed_crop,
                            cfg.lr, on_round=lambda r, m: curve.append(
                                sum(styled_psnr(m, held[probe], target[probe], device)) / len(held[probe])))
    local_scores = []
    for edge in edges:
        local = SmallStylizer(cfg.stylizer_width, cfg.stylizer_layers).to(device)
        local.load_state_dict(stylizer.state_dict())
        fit_stylizer(local, edge.frames, edge.targets, cfg.fed_rounds * cfg.fed_local_steps, gen, cfg.batch,
                     cfg.fed_crop, cfg.lr)
        local_scores.append(styled_psnr(local, held, target, device))
    return {"fedavg": styled_psnr(fed, held, target, device), "none": styled_psnr(stylizer, held, target, device),
            "local_only": [sum(v) / len(v) for v in zip(*local_scores)], "curve": curve,
            "edge_frames": [e.count for e in edges]}
