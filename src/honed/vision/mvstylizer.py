"""MVStylizer: key-frame stylisation at reduced resolution, meta-smoothing upscaling, optical-flow
interpolation of the other frames, and FedAvg retraining of the edge stylizers (MVStylizer: an efficient
edge-assisted video photorealistic style transfer system for mobile phones, arXiv:2005.11630).

A video is (T, 3, H, W) float RGB in [0, 1] with T >= 2; the stylizer is any module or callable mapping
(N, 3, h, w) in [0, 1] to the same shape. Flow comes from OpenCV (``video`` extra), always computed on
the ORIGINAL frames and always from a non-key frame to a key frame (no chaining).
"""
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count, check_number
from honed.vision.flow_warp import (FLOW_METHODS, FlowCache, KeyframeSelection, _warp, check_video,
                                    select_keyframes)
from honed.vision.meta_upscale import MetaUpscaler


def _neighbours(t: int, keys: Sequence[int], streaming: bool) -> tuple[int, int | None]:
    before = max(k for k in keys if k <= t)
    after = [k for k in keys if k > t]
    return before, (None if streaming or not after else after[0])


def _warp_from_key(flows: FlowCache, t: int, key: int, stylized_key: torch.Tensor,
                   fb_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    valid = flows.valid(t, key, fb_threshold)
    return _warp(stylized_key, flows.full(t, key)), valid.to(stylized_key.dtype)


def interpolate_frames(video: torch.Tensor, keys: Sequence[int], stylized_keys: torch.Tensor,
                       method: str = "dis", streaming: bool = False, fb_threshold: float = 1.0,
                       flows: FlowCache | None = None) -> torch.Tensor:
    """Card step 4 (MVStylizer arXiv:2005.11630): every non-key frame t is built from the stylised key
    frames k < t < k' backward-warped with F_{t->k} and F_{t->k'} (flow of the original frames),
    blended with weights (k'-t)/(k'-k) and (t-k)/(k'-k) times forward-backward validity masks ((R)
    inferred); where both are invalid, the nearer key frame's warp. ``streaming`` uses the previous key
    frame only. ``flows`` (a :class:`FlowCache` of this video, e.g. the selector's) supplies the flows;
    by default they are computed at full resolution with ``method``. video (T, 3, H, W); stylized_keys
    (len(keys), 3, H, W) in the order of ``keys``."""
    if flows is None:
        check_video(video)
        flows = FlowCache(video, method, 1.0)
    elif flows.video is not video:
        raise InputError("flows must be a FlowCache of this video")
    check_number(fb_threshold, "fb_threshold", strict=True)
    keys = list(keys)
    if not keys or keys[0] != 0 or sorted(set(keys)) != keys or keys[-1] >= video.shape[0]:
        raise InputError(f"keys must be ascending distinct frame indices starting at 0, got {keys}")
    if stylized_keys.shape != (len(keys), *video.shape[1:]):
        raise InputError(f"stylized_keys must be {(len(keys), *video.shape[1:])}, got {tuple(stylized_keys.shape)}")
    index = {k: i for i, k in enumerate(keys)}
    out = []
    for t in range(video.shape[0]):
        if t in index:
            out.append(stylized_keys[index[t]])
            continue
        k, k_next = _neighbours(t, keys, streaming)
        warp_k, valid_k = _warp_from_key(flows, t, k, stylized_keys[index[k]], fb_threshold)
        if k_next is None:
            out.append(warp_k)
            continue
        warp_n, valid_n = _warp_from_key(flows, t, k_next, stylized_keys[index[k_next]], fb_threshold)
        w_k, w_n = valid_k * (k_next - t) / (k_next - k), valid_n * (t - k) / (k_next - k)
        total = w_k + w_n
        nearer = warp_k if t - k <= k_next - t else warp_n
        blend = (w_k * warp_k + w_n * warp_n) / total.clamp_min(1e-8)
        out.append(torch.where(total > 0, blend, nearer))
    return torch.stack(out)


def nearest_key_copy(num_frames: int, keys: Sequence[int], stylized_keys: torch.Tensor) -> torch.Tensor:
    """Pipeline (2) of the card: every frame takes the stylised key frame nearest in time (no flow)."""
    keys = list(keys)
    nearest = [min(range(len(keys)), key=lambda i: (abs(keys[i] - t), keys[i])) for t in range(num_frames)]
    return stylized_keys[nearest]


@dataclass
class StylizedVideo:
    """The stylised frames (T, 3, H, W) and the key-frame selection that produced them."""

    frames: torch.Tensor
    selection: KeyframeSelection
    key_frames_low: torch.Tensor = field(repr=False, default=None)  # stylised key frames at low resolution


class MVStylizer:
    """The phone-side pipeline of MVStylizer (arXiv:2005.11630): select key frames, stylise them at
    1/``downscale`` resolution with ``stylizer`` (the edge server's DNN), upscale them with
    ``upscaler`` (a :class:`MetaUpscaler`; None = bicubic, the card's pipeline (3)), and interpolate the
    other frames by flow. Flows are computed once per frame pair on frames downscaled by ``flow_scale``
    ((R): the card fixes the downscaling for selection only; interpolation reuses those flows, resized). ``fixed_interval`` replaces adaptive key-frame selection (the card's ablation
    (5)). Call ``pipeline(video)`` with video (T, 3, H, W) in [0, 1] -> :class:`StylizedVideo`."""

    def __init__(self, stylizer: Callable[[torch.Tensor], torch.Tensor], upscaler: MetaUpscaler | None = None,
                 downscale: float = 4.0, tau_key: float = 0.15, g_max: int = 10, flow_scale: float = 0.5,
                 flow_method: str = "dis", fb_threshold: float = 1.0, photometric_threshold: float = 0.1,
                 streaming: bool = False, fixed_interval: int | None = None, guide: bool = False) -> None:
        check_number(downscale, "downscale", minimum=1.0)
        check_number(tau_key, "tau_key")
        check_count(g_max, "g_max")
        if flow_method not in FLOW_METHODS:
            raise InputError(f"flow_method must be one of {FLOW_METHODS}, got {flow_method!r}")
        if fixed_interval is not None:
            check_count(fixed_interval, "fixed_interval")
        if guide and (upscaler is None or upscaler.guide_channels != 3):
            raise InputError("guide=True needs a MetaUpscaler built with guide_channels=3")
        self.stylizer, self.upscaler, self.downscale = stylizer, upscaler, float(downscale)
        if not 0 < flow_scale <= 1:
            raise InputError(f"flow_scale must lie in (0, 1], got {flow_scale}")
        self.select = dict(tau_key=tau_key, g_max=g_max, fb_threshold=fb_threshold,
                           photometric_threshold=photometric_threshold, fixed_interval=fixed_interval)
        self.flow_method, self.flow_scale, self.fb_threshold = flow_method, flow_scale, fb_threshold
        self.streaming, self.guide = streaming, guide

    def stylize_keys(self, key_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key frames (K, 3, H, W) -> (upscaled stylised (K, 3, H, W), stylised low-res (K, 3, h, w))."""
        height, width = key_frames.shape[-2:]
        size = (max(1, round(height / self.downscale)), max(1, round(width / self.downscale)))
        low = F.interpolate(key_frames, size=size, mode="area")
        with torch.no_grad():
            styled = self.stylizer(low)
            if self.upscaler is None:
                up = F.interpolate(styled, size=(height, width), mode="bicubic", align_corners=False)
            else:
                scale = (height / size[0], width / size[1])
                up = self.upscaler(styled, scale, guide=low if self.guide else None)
        return up.clamp(0, 1), styled

    def __call__(self, video: torch.Tensor) -> StylizedVideo:
        if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[1] != 3:
            raise InputError(f"MVStylizer stylises RGB videos (T, 3, H, W), got "
                             f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
        flows = FlowCache(video, self.flow_method, self.flow_scale)  # checks the video once
        selection = select_keyframes(video, flows=flows, **self.select)
        up, low = self.stylize_keys(video[list(selection.keys)])
        frames = interpolate_frames(video, selection.keys, up, streaming=self.streaming,
                                    fb_threshold=self.fb_threshold, flows=flows)
        return StylizedVideo(frames, selection, low)


def temporal_warping_error(stylized: torch.Tensor, video: torch.Tensor, method: str = "dis",
                           fb_threshold: float = 1.0, flows: FlowCache | None = None) -> list[float]:
    """Per consecutive pair (t, t+1): mean |O_t - warp(O_{t+1}, F_{t->t+1})| over the pixels (and
    channels) whose forward-backward check on the ORIGINAL frames passes; T - 1 values, lower is more
    stable. stylized and video: (T, C, H, W) of one shape. ``flows``: a :class:`FlowCache` of ``video``
    to share between several stylisations of it (default: full-resolution flows with ``method``)."""
    if flows is None:
        check_video(video)
        flows = FlowCache(video, method, 1.0)
    elif flows.video is not video:
        raise InputError("flows must be a FlowCache of this video")
    if stylized.shape != video.shape:
        raise InputError(f"stylized {tuple(stylized.shape)} and video {tuple(video.shape)} must have one shape")
    errors = []
    for t in range(video.shape[0] - 1):
        valid = flows.valid(t, t + 1, fb_threshold).to(stylized.dtype)
        diff = (stylized[t] - _warp(stylized[t + 1], flows.full(t, t + 1))).abs().mean(0)
        errors.append(float((diff * valid).sum() / valid.sum().clamp_min(1)))
    return errors


def fedavg(states: Sequence[dict[str, torch.Tensor]], counts: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg (MVStylizer arXiv:2005.11630, step 5): theta_g = sum_e n_e theta_e / sum_e n_e over
    floating-point entries; integer buffers (e.g. BN's num_batches_tracked) are taken from the first
    state. ``states`` are state dicts with identical keys and shapes; ``counts`` the n_e (> 0)."""
    if not states or len(states) != len(counts):
        raise InputError(f"fedavg needs one count per state and at least one state, got {len(states)} states "
                         f"and {len(counts)} counts")
    weights = [check_number(c, "count", strict=True) for c in counts]
    keys = list(states[0])
    for i, state in enumerate(states[1:], 1):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise InputError(f"state {i} differs from state 0 in its keys or shapes")
    total = sum(weights)
    merged = {}
    for key in keys:
        first = states[0][key]
        if not first.is_floating_point():
            merged[key] = first.clone()
            continue
        merged[key] = sum(w * s[key].to(torch.float64) for w, s in zip(weights, states)).div(total).to(first.dtype)
    return merged


def fedavg_modules(models: Sequence[nn.Module], counts: Sequence[float]) -> dict[str, torch.Tensor]:
    """:func:`fedavg` of the models' state dicts."""
    return fedavg([m.state_dict() for m in models], counts)
