"""Dense optical flow (OpenCV DIS / Farneback), backward warping, forward-backward consistency and
key-frame selection: the phone side of MVStylizer (MVStylizer: edge-assisted video photorealistic
style transfer, arXiv:2005.11630).

Conventions: a frame is (C, H, W) float in [0, 1] with C = 1 or 3; a video is (T, C, H, W) with T >= 2.
A flow is (2, H, W) float (channel 0 horizontal, channel 1 vertical, in pixels): ``dense_flow(a, b)`` is
the flow F_{a->b} with a(p) ~= b(p + F(p)). ``backward_warp(image_b, F_{a->b})`` therefore brings b to
a's geometry. Flow is computed by OpenCV on the CPU (the ``video`` extra); results come back on the
device of the input.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from honed.core.errors import InputError, check_count, check_number, require_extra

FLOW_METHODS = ("dis", "farneback")


def check_frame(frame: torch.Tensor, name: str = "frame") -> None:
    """InputError unless ``frame`` is a finite (C, H, W) float tensor with C in (1, 3), H, W >= 8."""
    if not isinstance(frame, torch.Tensor) or not frame.is_floating_point() or frame.dim() != 3:
        raise InputError(f"{name} must be a float tensor (C, H, W), got "
                         f"{tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__}")
    if frame.shape[0] not in (1, 3) or min(frame.shape[1:]) < 8:
        raise InputError(f"{name} must have 1 or 3 channels and H, W >= 8, got {tuple(frame.shape)}")
    if not torch.isfinite(frame).all():
        raise InputError(f"{name} holds NaN or inf")


def check_video(video: torch.Tensor, name: str = "video") -> None:
    """InputError unless ``video`` is a finite (T, C, H, W) float tensor with T >= 2 and C in (1, 3)."""
    if not isinstance(video, torch.Tensor) or video.dim() != 4:
        raise InputError(f"{name} must be a float tensor (T, C, H, W), got "
                         f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
    if video.shape[0] < 2:
        raise InputError(f"{name} has {video.shape[0]} frame(s): a video needs at least 2")
    check_frame(video[0], f"{name}[0]")
    if not torch.isfinite(video).all():
        raise InputError(f"{name} holds NaN or inf")


def check_flow(flow: torch.Tensor, height: int, width: int, name: str = "flow") -> None:
    if not isinstance(flow, torch.Tensor) or flow.dim() not in (3, 4) or flow.shape[-3:] != (2, height, width):
        raise InputError(f"{name} must be (2, {height}, {width}) or (N, 2, {height}, {width}), got "
                         f"{tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__}")
    if not torch.isfinite(flow).all():
        raise InputError(f"{name} holds NaN or inf")


def to_grey_u8(frame: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) uint8 grey (ITU-R 601 luma for colour)."""
    grey = frame[0] if frame.shape[0] == 1 else 0.299 * frame[0] + 0.587 * frame[1] + 0.114 * frame[2]
    return (grey.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def dense_flow(source: torch.Tensor, target: torch.Tensor, method: str = "dis") -> torch.Tensor:
    """Flow F_{source->target} (2, H, W) in pixels, from OpenCV's DIS (preset MEDIUM) or Farneback on
    the grey frames; on ``source``'s device. Frames are (C, H, W) in [0, 1] of one shape."""
    check_frame(source, "source")
    check_frame(target, "target")
    if source.shape[1:] != target.shape[1:]:
        raise InputError(f"source and target differ in size: {tuple(source.shape)} vs {tuple(target.shape)}")
    if method not in FLOW_METHODS:
        raise InputError(f"method must be one of {FLOW_METHODS}, got {method!r}")
    return _flow(source, target, method)


def _flow(source: torch.Tensor, target: torch.Tensor, method: str) -> torch.Tensor:
    cv2 = require_extra("cv2", "video")
    a, b = to_grey_u8(source), to_grey_u8(target)
    if method == "dis":
        flow = _dis(cv2).calc(a, b, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return torch.from_numpy(flow).permute(2, 0, 1).contiguous().to(source.device)


_DIS = {}


def _dis(cv2):
    if "medium" not in _DIS:
        _DIS["medium"] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _DIS["medium"]


def _pixel_grid(flow: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 2) sampling grid of p + flow(p), normalised for ``grid_sample(align_corners=True)``."""
    n, _, height, width = flow.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=flow.device, dtype=flow.dtype),
                            torch.arange(width, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2 / max(width - 1, 1)) - 1
    gy = (ys + flow[:, 1]) * (2 / max(height - 1, 1)) - 1
    return torch.stack([gx, gy], dim=-1)


def backward_warp(image: torch.Tensor, flow: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """``image`` sampled at p + flow(p) (bilinear ``grid_sample``): with flow = F_{a->b} and image = b,
    the result is b seen from a. image (C, H, W) or (N, C, H, W); flow (2, H, W) or (N, 2, H, W)."""
    batched = image.dim() == 4
    if image.dim() not in (3, 4) or not image.is_floating_point():
        raise InputError(f"image must be a float tensor (C, H, W) or (N, C, H, W), got {tuple(image.shape)}")
    check_flow(flow, image.shape[-2], image.shape[-1])
    if padding not in ("border", "zeros", "reflection"):
        raise InputError(f"padding must be 'border', 'zeros' or 'reflection', got {padding!r}")
    if flow.dim() == 4 and flow.shape[0] != (image.shape[0] if batched else 1):
        raise InputError(f"image and flow batch sizes differ: {image.shape[0]} vs {flow.shape[0]}")
    return _warp(image, flow, padding)


def _warp(image: torch.Tensor, flow: torch.Tensor, padding: str = "border") -> torch.Tensor:
    batched = image.dim() == 4
    img = image if batched else image[None]
    flw = (flow if flow.dim() == 4 else flow[None]).to(img.dtype)
    out = F.grid_sample(img, _pixel_grid(flw), mode="bilinear", padding_mode=padding, align_corners=True)
    return out if batched else out[0]


def inside_mask(flow: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: p + flow(p) lies inside the frame (flow (2, H, W))."""
    height, width = flow.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, device=flow.device), torch.arange(width, device=flow.device),
                            indexing="ij")
    x, y = xs + flow[0], ys + flow[1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def consistency_mask(flow_ab: torch.Tensor, flow_ba: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """(H, W) bool forward-backward check (card step 4, (R) inferred): valid where
    |F_ab(p) + F_ba(p + F_ab(p))| <= ``threshold`` pixels. All valid for a pure translation."""
    check_flow(flow_ab, *flow_ab.shape[-2:], name="flow_ab")
    check_flow(flow_ba, *flow_ab.shape[-2:], name="flow_ba")
    check_number(threshold, "threshold", strict=True)
    return _consistent(flow_ab, flow_ba, threshold)


def _consistent(flow_ab: torch.Tensor, flow_ba: torch.Tensor, threshold: float) -> torch.Tensor:
    return (flow_ab + _warp(flow_ba, flow_ab)).square().sum(0) <= threshold * threshold


class FlowCache:
    """Flows F_{a->b} between frames of one ``video`` (T, C, H, W), each computed once by
    :func:`dense_flow` on the frames downscaled by ``scale`` (area) and kept. ``low(a, b)`` is the flow
    at that resolution; ``full(a, b)`` the same flow resized bilinearly to (H, W) and scaled to full-
    resolution pixels. Key-frame selection and interpolation share one cache, so a flow the selector
    computed is not computed again."""

    def __init__(self, video: torch.Tensor, method: str = "dis", scale: float = 0.5) -> None:
        check_video(video)
        if method not in FLOW_METHODS:
            raise InputError(f"method must be one of {FLOW_METHODS}, got {method!r}")
        if not 0 < scale <= 1:
            raise InputError(f"scale must lie in (0, 1], got {scale}")
        self.video, self.method, self.scale = video, method, scale
        small = video if scale == 1 else F.interpolate(video, scale_factor=scale, mode="area")
        if min(small.shape[-2:]) < 8:
            raise InputError(f"scale {scale} leaves frames of {tuple(small.shape[-2:])}: flow needs >= 8 px")
        self.small = small
        self._low: dict[tuple[int, int], torch.Tensor] = {}
        self._full: dict[tuple[int, int], torch.Tensor] = {}
        self._valid: dict[tuple[int, int, float], torch.Tensor] = {}

    def low(self, a: int, b: int) -> torch.Tensor:
        if (a, b) not in self._low:
            self._low[(a, b)] = _flow(self.small[a], self.small[b], self.method)
        return self._low[(a, b)]

    def full(self, a: int, b: int) -> torch.Tensor:
        if (a, b) not in self._full:
            flow, (height, width) = self.low(a, b), self.video.shape[-2:]
            if flow.shape[-2:] != (height, width):
                gain = torch.tensor([width / flow.shape[-1], height / flow.shape[-2]], device=flow.device)
                flow = F.interpolate(flow[None], size=(height, width), mode="bilinear",
                                     align_corners=False)[0] * gain.view(2, 1, 1).to(flow.dtype)
            self._full[(a, b)] = flow
        return self._full[(a, b)]

    def valid(self, a: int, b: int, fb_threshold: float = 1.0) -> torch.Tensor:
        """(H, W) bool at full resolution: the forward-backward check of F_{a->b} with F_{b->a} (threshold
        in pixels at the flow's resolution) and p + F_{a->b}(p) inside the frame, computed at the flow's
        resolution and resized (nearest)."""
        key = (a, b, float(fb_threshold))
        if key not in self._valid:
            low = _consistent(self.low(a, b), self.low(b, a), fb_threshold) & inside_mask(self.low(a, b))
            size = self.video.shape[-2:]
            if low.shape != size:
                low = F.interpolate(low[None, None].float(), size=tuple(size), mode="nearest")[0, 0] > 0.5
            self._valid[key] = low
        return self._valid[key]


@dataclass(frozen=True)
class KeyframeSelection:
    """Key-frame indices (ascending, frame 0 first) and the change score s_t of every frame (0 for
    frame 0; for a key frame t, the score against the previous key frame that made it one)."""

    keys: tuple[int, ...]
    scores: tuple[float, ...]


def change_score(frame: torch.Tensor, key: torch.Tensor, flow_tk: torch.Tensor, flow_kt: torch.Tensor,
                 fb_threshold: float = 1.0, photometric_threshold: float = 0.1) -> float:
    """s_t of card step 1 ((R) inferred): the fraction of pixels of ``frame`` whose forward-backward
    check of the flows F_{t->k}, F_{k->t} fails (> ``fb_threshold`` px) or whose grey value differs from
    the warped key frame by more than ``photometric_threshold``. frame, key (C, H, W); flows (2, H, W)."""
    bad_flow = ~_consistent(flow_tk, flow_kt, fb_threshold)
    error = (frame.mean(0, keepdim=True) - _warp(key.mean(0, keepdim=True), flow_tk)).abs()[0]
    return float((bad_flow | (error > photometric_threshold)).float().mean())


def select_keyframes(video: torch.Tensor, tau_key: float = 0.15, g_max: int = 10, scale: float = 0.5,
                     method: str = "dis", fb_threshold: float = 1.0, photometric_threshold: float = 0.1,
                     fixed_interval: int | None = None, flows: FlowCache | None = None) -> KeyframeSelection:
    """Card step 1 (MVStylizer arXiv:2005.11630): frame 0 is a key frame; frame t becomes one when its
    change score against the last key frame (on frames downscaled by ``scale``) exceeds ``tau_key`` or
    when ``g_max`` frames have passed. ``fixed_interval`` (the ablation) makes every n-th frame a key
    frame and computes no flow. ``flows`` (a :class:`FlowCache` of this video; its scale and method
    win) keeps the flows for interpolation. video: (T, C, H, W) in [0, 1], T >= 2."""
    if flows is None:
        check_video(video)
    elif flows.video is not video:
        raise InputError("flows must be a FlowCache of this video")
    check_number(tau_key, "tau_key")
    check_count(g_max, "g_max")
    check_number(fb_threshold, "fb_threshold", strict=True)
    if fixed_interval is not None:
        check_count(fixed_interval, "fixed_interval")
        keys = tuple(range(0, video.shape[0], fixed_interval))
        return KeyframeSelection(keys, tuple(0.0 for _ in range(video.shape[0])))
    flows = flows or FlowCache(video, method, scale)
    keys, scores, last = [0], [0.0], 0
    for t in range(1, video.shape[0]):
        score = change_score(flows.small[t], flows.small[last], flows.low(t, last), flows.low(last, t),
                             fb_threshold, photometric_threshold)
        scores.append(score)
        if score > tau_key or t - last >= g_max:
            keys.append(t)
            last = t
    return KeyframeSelection(tuple(keys), tuple(scores))
