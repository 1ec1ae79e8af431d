"""The two-stream search space of Auto-TSNet (Searching for Two-Stream Models in Multivariate Space for
Video Recognition, arXiv:2108.12957), as one weight-sharing network.

Layout (SlowFast style): the slow stream sees every ``alpha``-th frame, the fast stream all frames.
Each stream: stem (3x3 spatial, stride 2) then ``stages`` x ``blocks`` super MBConv3D blocks (1x1x1
expand by e -> t x 3 x 3 depthwise -> 1x1x1 project to C_out, BN; residual when shapes match; stride 2
in space at the first block of every later stage). After each stage an optional squeeze-excitation
(attention) on both streams and a fast -> slow fusion, added to the slow stream. Head: global average
pooling of both streams, concatenated, linear.

Search variables (6 kinds) per location: ``t`` (temporal kernel), ``e`` (expansion), ``c`` (output
channels) of every block of both streams; ``fusion.sK`` in {none, lateral (time-strided 5x1x1 conv),
pool (temporal average pool + 1x1x1 conv)} [R: the candidate list]; ``attention.sK`` in {off, se} [R].
An architecture is a dict {variable: value}. :class:`TwoStreamNet` holds the largest tensors and slices
them for the architecture it is given, so one set of weights serves every architecture (supernet);
:class:`FixedArchNet` wraps it with one architecture as a plain ``nn.Module`` (retraining, FLOPs).
Input clips: (B, 3, frames, size, size) float.
"""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError

STREAMS = ("slow", "fast")


@dataclass(frozen=True)
class TwoStreamSpace:
    """The tiny space of the card's small-scale plan (defaults) and the clip geometry it expects."""

    frames: int = 16
    alpha: int = 4
    size: int = 32
    num_classes: int = 12
    slow_stem: int = 8
    fast_stem: int = 2
    slow_channels: tuple[int, ...] = (8, 16)
    fast_channels: tuple[int, ...] = (2, 4)
    temporal: tuple[int, ...] = (1, 3)
    expansion: tuple[int, ...] = (1, 2)
    stages: int = 2
    blocks: int = 2
    fusions: tuple[str, ...] = ("none", "lateral", "pool")
    attention: tuple[str, ...] = ("off", "se")

    def __post_init__(self) -> None:
        if self.frames < 2 or self.alpha < 1 or self.frames % self.alpha:
            raise InputError(f"frames ({self.frames}) must be >= 2 and a multiple of alpha ({self.alpha})")
        if any(t % 2 == 0 for t in self.temporal) or min(self.expansion + self.slow_channels + self.fast_channels) < 1:
            raise InputError("temporal kernels must be odd; expansions and channels >= 1")

    def channels(self, stream: str) -> tuple[int, ...]:
        return self.slow_channels if stream == "slow" else self.fast_channels

    def variables(self) -> list[tuple[str, tuple]]:
        """Every search variable with its choices, in a fixed order."""
        out: list[tuple[str, tuple]] = []
        for stream in STREAMS:
            for s in range(self.stages):
                for b in range(self.blocks):
                    p = f"{stream}.s{s}.b{b}"
                    out += [(p + ".t", self.temporal), (p + ".e", self.expansion), (p + ".c", self.channels(stream))]
        return out + [(f"fusion.s{s}", self.fusions) for s in range(self.stages)] + [
            (f"attention.s{s}", self.attention) for s in range(self.stages)]

    def scaled(self, factor: int) -> "TwoStreamSpace":
        """The same space with every channel choice and stem multiplied by ``factor`` (single streams at
        a matched FLOPs budget)."""
        return replace(self, slow_stem=self.slow_stem * factor, fast_stem=self.fast_stem * factor,
                       slow_channels=tuple(c * factor for c in self.slow_channels),
                       fast_channels=tuple(c * factor for c in self.fast_channels))

    def check_arch(self, arch: dict) -> None:
        choices = dict(self.variables())
        missing = [v for v in choices if v not in arch]
        bad = [v for v in choices if v in arch and arch[v] not in choices[v]]
        if missing or bad or set(arch) - set(choices):
            raise InputError(f"architecture does not fit the space: missing {missing[:3]}, bad values {bad[:3]}, "
                             f"unknown {sorted(set(arch) - set(choices))[:3]}")


def slowfast_tiny(space: TwoStreamSpace) -> dict:
    """The hand-designed SlowFast-tiny: slow stream t=1 in the first stage and the largest t later, fast
    stream the largest t throughout; the larger expansion; the smaller channel choice in the first stage
    and the larger one later; lateral (time-strided conv) fusion after every stage; no attention."""
    arch = {}
    for name, choices in space.variables():
        if name.endswith(".t"):
            arch[name] = choices[0] if name.startswith("slow.s0") else choices[-1]
        elif name.endswith(".e"):
            arch[name] = choices[-1]
        elif name.endswith(".c"):
            arch[name] = choices[0] if ".s0." in name else choices[-1]
        else:
            arch[name] = "lateral" if name.startswith("fusion") else "off"
    return arch


class SlicedConv3d(nn.Module):
    """A Conv3d holding its largest weight; forward(x, cout, t) uses the first ``cout`` filters, the
    input's channel count and the central ``t`` temporal taps (depthwise: groups = channels)."""

    def __init__(self, cin: int, cout: int, t: int, k: int, stride: tuple = (1, 1, 1), depthwise: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, 1 if depthwise else cin, t, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.k, self.t_max, self.stride, self.depthwise = k, t, stride, depthwise

    def forward(self, x: torch.Tensor, cout: int, t: int | None = None) -> torch.Tensor:
        t = self.t_max if t is None else t
        lo = (self.t_max - t) // 2
        cin = x.shape[1]
        w = self.weight[:cin, :, lo:lo + t] if self.depthwise else self.weight[:cout, :cin, lo:lo + t]
        padding = (t // 2, self.k // 2, self.k // 2)
        return F.conv3d(x, w, None, self.stride, padding, groups=cin if self.depthwise else 1)


class SlicedBN(nn.BatchNorm3d):
    """BatchNorm3d over the first C channels of its largest size (running statistics sliced too)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        stats = (self.running_mean[:c], self.running_var[:c]) if self.track_running_stats else (None, None)
        return F.batch_norm(x, *stats, self.weight[:c], self.bias[:c], self.training, self.momentum, self.eps)


class SlicedSE(nn.Module):
    """Squeeze-excitation with a hidden width of max(1, C // 2), sliced to the input's C channels."""

    def __init__(self, c_max: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c_max, max(1, c_max // 2)), nn.Linear(max(1, c_max // 2), c_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        h = max(1, c // 2)
        z = F.relu(F.linear(x.mean((2, 3, 4)), self.fc1.weight[:h, :c], self.fc1.bias[:h]))
        gate = torch.sigmoid(F.linear(z, self.fc2.weight[:c, :h], self.fc2.bias[:c]))
        return x * gate[:, :, None, None, None]


class SuperMBConv3D(nn.Module):
    """Inverted bottleneck 3D block with searchable t, e and C_out (largest tensors, sliced)."""

    def __init__(self, cin_max: int, cout_max: int, t_max: int, e_max: int, stride: int) -> None:
        super().__init__()
        hid = cin_max * e_max
        self.expand, self.bn1 = SlicedConv3d(cin_max, hid, 1, 1), SlicedBN(hid)
        self.depthwise, self.bn2 = SlicedConv3d(hid, hid, t_max, 3, (1, stride, stride), depthwise=True), SlicedBN(hid)
        self.project, self.bn3 = SlicedConv3d(hid, cout_max, 1, 1), SlicedBN(cout_max)
        self.stride = stride

    def forward(self, x: torch.Tensor, t: int, e: int, cout: int) -> torch.Tensor:
        hid = x.shape[1] * e
        h = F.relu(self.bn1(self.expand(x, hid)))
        h = F.relu(self.bn2(self.depthwise(h, hid, t)))
        h = self.bn3(self.project(h, cout))
        return h + x if self.stride == 1 and x.shape[1] == cout else h


class Fusion(nn.Module):
    """Fast -> slow fusion, added to the slow stream: ``lateral`` = time-strided (5 x 1 x 1, stride
    alpha) conv, ``pool`` = temporal average pool (alpha) + 1x1x1 conv; BN after either [R]."""

    def __init__(self, cf_max: int, cs_max: int, alpha: int) -> None:
        super().__init__()
        self.lateral = SlicedConv3d(cf_max, cs_max, 5, 1, (alpha, 1, 1))
        self.pool_proj = SlicedConv3d(cf_max, cs_max, 1, 1)
        self.bn_lateral, self.bn_pool, self.alpha = SlicedBN(cs_max), SlicedBN(cs_max), alpha

    def forward(self, slow: torch.Tensor, fast: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "none":
            return slow
        cs = slow.shape[1]
        if kind == "lateral":
            return slow + self.bn_lateral(self.lateral(fast, cs))
        pooled = F.avg_pool3d(fast, (self.alpha, 1, 1))
        return slow + self.bn_pool(self.pool_proj(pooled, cs))


class TwoStreamNet(nn.Module):
    """The weight-sharing two-stream network of a :class:`TwoStreamSpace` (Auto-TSNet, arXiv:2108.12957).
    forward(clips (B, 3, frames, size, size), arch) -> logits (B, num_classes). ``streams`` = "both",
    "slow" or "fast" (single-stream baselines: the other stream and the fusions are absent)."""

    def __init__(self, space: TwoStreamSpace = TwoStreamSpace(), streams: str = "both") -> None:
        super().__init__()
        if streams not in ("both",) + STREAMS:
            raise InputError(f"streams must be 'both', 'slow' or 'fast', got {streams!r}")
        self.space, self.streams = space, streams
        self.used = STREAMS if streams == "both" else (streams,)
        t_max, e_max = max(space.temporal), max(space.expansion)
        self.stems, self.stem_bns = nn.ModuleDict(), nn.ModuleDict()
        self.blocks, self.se = nn.ModuleDict(), nn.ModuleDict()
        for stream in self.used:
            stem = space.slow_stem if stream == "slow" else space.fast_stem
            self.stems[stream] = SlicedConv3d(3, stem, 1 if stream == "slow" else 3, 3, (1, 2, 2))
            self.stem_bns[stream] = SlicedBN(stem)
            c_max = max(space.channels(stream))
            self.blocks[stream] = nn.ModuleList(
                SuperMBConv3D(stem if s == b == 0 else c_max, c_max, t_max, e_max, 2 if s > 0 and b == 0 else 1)
                for s in range(space.stages) for b in range(space.blocks))
            self.se[stream] = nn.ModuleList(SlicedSE(c_max) for _ in range(space.stages))
        cs, cf = max(space.slow_channels), max(space.fast_channels)
        self.fusions = (nn.ModuleList(Fusion(cf, cs, space.alpha) for _ in range(space.stages))
                        if streams == "both" else None)
        self.head = nn.Linear(cs * ("slow" in self.used) + cf * ("fast" in self.used), space.num_classes)

    def check_clips(self, clips: torch.Tensor) -> None:
        sp = self.space
        if clips.dim() != 5 or clips.shape[1:] != (3, sp.frames, sp.size, sp.size):
            raise InputError(f"clips must be (B, 3, {sp.frames}, {sp.size}, {sp.size}) (a video of {sp.frames} "
                             f"frames), got {tuple(clips.shape)}")
        if not torch.isfinite(clips).all():
            raise InputError("clips must be finite")

    def stage(self, stream: str, x: torch.Tensor, s: int, arch: dict) -> torch.Tensor:
        for b in range(self.space.blocks):
            p = f"{stream}.s{s}.b{b}"
            x = self.blocks[stream][s * self.space.blocks + b](x, arch[p + ".t"], arch[p + ".e"], arch[p + ".c"])
        return self.se[stream][s](x) if arch[f"attention.s{s}"] == "se" else x

    def forward(self, clips: torch.Tensor, arch: dict) -> torch.Tensor:
        self.check_clips(clips)
        self.space.check_arch(arch)
        feats = {}
        for stream in self.used:
            x = clips[:, :, ::self.space.alpha] if stream == "slow" else clips
            stem = self.stems[stream]
            feats[stream] = F.relu(self.stem_bns[stream](stem(x, stem.weight.shape[0])))
        for s in range(self.space.stages):
            for stream in self.used:
                feats[stream] = self.stage(stream, feats[stream], s, arch)
            if self.fusions is not None:
                feats["slow"] = self.fusions[s](feats["slow"], feats["fast"], arch[f"fusion.s{s}"])
        pooled = [feats[stream].mean((2, 3, 4)) for stream in self.used]
        w, cs = self.head.weight, max(self.space.slow_channels) if "slow" in self.used else 0
        cols = [w[:, :pooled[0].shape[1]]] if "slow" in self.used else []
        if "fast" in self.used:
            cols.append(w[:, cs:cs + pooled[-1].shape[1]])
        return F.linear(torch.cat(pooled, 1), torch.cat(cols, 1), self.head.bias)


class FixedArchNet(nn.Module):
    """A :class:`TwoStreamNet` with one architecture fixed: a plain module clips -> logits (a found model
    retrained from scratch, or a hand-designed one)."""

    def __init__(self, space: TwoStreamSpace, arch: dict, streams: str = "both") -> None:
        super().__init__()
        space.check_arch(arch)
        self.net, self.arch = TwoStreamNet(space, streams), dict(arch)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.net(clips, self.arch)


def arch_macs(space: TwoStreamSpace, arch: dict, streams: str = "both") -> int:
    """Modelled multiply-accumulates of one clip through ``arch`` (convolutions, SE and head linears: what
    torch's FlopCounterMode counts; a test checks it equals :func:`honed.core.measure.count_macs`). Used
    by the search's FLOPs penalty, where counting by tracing every sampled architecture would dominate."""
    space.check_arch(arch)
    used = STREAMS if streams == "both" else (streams,)
    side, macs, width = space.size // 2, 0, {}
    frames = {"slow": space.frames // space.alpha, "fast": space.frames}
    for stream in used:
        stem = space.slow_stem if stream == "slow" else space.fast_stem
        macs += stem * 3 * (1 if stream == "slow" else 3) * 9 * frames[stream] * side * side
        width[stream] = stem
    for s in range(space.stages):
        side_in, side = side, side // 2 if s > 0 else side
        for stream in used:
            vol_in, vol = frames[stream] * side_in * side_in, frames[stream] * side * side
            for b in range(space.blocks):
                p, cin = f"{stream}.s{s}.b{b}", width[stream]
                hid, cout = cin * arch[p + ".e"], arch[p + ".c"]
                v_in = vol_in if b == 0 else vol
                macs += hid * cin * v_in + hid * arch[p + ".t"] * 9 * vol + cout * hid * vol
                width[stream] = cout
            if arch[f"attention.s{s}"] == "se":
                macs += 2 * width[stream] * max(1, width[stream] // 2)
        if streams == "both" and arch[f"fusion.s{s}"] != "none":
            taps = 5 if arch[f"fusion.s{s}"] == "lateral" else 1
            macs += width["slow"] * width["fast"] * taps * frames["slow"] * side * side
    return macs + space.num_classes * sum(width.values())
