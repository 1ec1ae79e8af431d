"""Non-maximum suppression for boxes: a GreedyNMS reference, MaxpoolNMS and PSRR-MaxpoolNMS
(PSRR-MaxpoolNMS: Pyramid Shifted MaxpoolNMS with Relationship Recovery, Zhang et al., CVPR 2021,
arXiv:2105.12990; base method MaxpoolNMS, Cai et al., CVPR 2019, arXiv:1904.12221).

Every function takes ``boxes`` (N, 4) float xyxy (x1 <= x2, y1 <= y2, finite) and ``scores`` (N,)
finite, and returns the kept indices as int64 sorted by decreasing score (ties: lower index first).
``classes`` (N,) int64 >= 0 runs the suppression independently per class (torchvision's batched_nms).
:func:`greedy_nms` has torchvision.ops.nms's call shape ``(boxes, scores, iou_threshold)`` and works in
any unit.

The max-pool methods do not compute IoU: a box is suppressed when a higher-scoring box falls in the
same pooling window of a score map indexed by (class, anchor channel, cell). Their suppression radius is
set by ``AnchorSet.alpha`` (window = alpha x anchor size, card 35 step 2), so they take no
``iou_threshold``; passing one raises :class:`InputError` saying so. Their anchors and stride are in
pixels: boxes in [0, 1]-normalised coordinates need ``normalized=True`` with ``image_size=(H, W)`` (or
an ``AnchorSet`` in the same units); boxes spanning less than one stride are refused rather than pooled
into one cell. Without ``image_size`` the grid spans the boxes (negative coordinates included); a score
map of more than ``MAX_SCORE_MAP_CELLS`` cells (e.g. coordinates in the millions) is refused rather than
allocated. Steps of the card marked reconstructed (R) are named options with the card's default: the
scale-aware channel distance (``channel_distance="log"``) and the pooling pyramid (``levels``: per
channel, cross-ratio, cross-scale, all channels).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from honed.core.errors import InputError

LEVELS = ("channel", "cross_ratio", "cross_scale", "all")
CHANNEL_DISTANCES = ("log", "raw")
MAX_SCORE_MAP_CELLS = 2 ** 26  # 512 MiB of float64 scores: beyond it, refuse instead of allocating


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class AnchorSet:
    """PSRR-MaxpoolNMS (arXiv:2105.12990) anchor set: S scales (anchor sides, area A_s = side^2) x R
    aspect ratios (r = h / w) give S*R score-map channels (channel c = s * R + r); ``stride`` is the
    cell size beta in pixels; ``alpha`` the overlap factor of the MaxpoolNMS kernel rule
    k = max(1, round(alpha * anchor size / beta)) per axis (card step 2)."""

    sides: tuple[float, ...] = (16.0, 32.0, 64.0, 128.0, 256.0)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    stride: float = 16.0
    alpha: float = 0.75

    def __post_init__(self) -> None:
        if not self.sides or not self.ratios or min(*self.sides, *self.ratios) <= 0:
            raise InputError("AnchorSet sides and ratios must be non-empty and > 0")
        if not (self.stride > 0 and self.alpha > 0):
            raise InputError(f"AnchorSet stride and alpha must be > 0, got {self.stride}, {self.alpha}")

    @property
    def num_channels(self) -> int:
        return len(self.sides) * len(self.ratios)

    def anchor_wh(self) -> torch.Tensor:
        """(S*R, 2) anchor width and height: w = sqrt(A_s / r), h = w * r."""
        wh = [(s / math.sqrt(r), s * math.sqrt(r)) for s in self.sides for r in self.ratios]
        return torch.tensor(wh, dtype=torch.float64)

    def kernels(self) -> list[tuple[int, int]]:
        """Per channel (k_y, k_x) = max(1, round(alpha * (h, w) / stride)) (card step 2)."""
        return [(max(1, round_half_up(self.alpha * h / self.stride)), max(1, round_half_up(self.alpha * w / self.stride)))
                for w, h in self.anchor_wh().tolist()]

    def groups(self, levels: tuple[str, ...] = LEVELS) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
        """Pooling groups of the pyramid (card step 3): (channels pooled together, (k_y, k_x)), the
        kernel of a group being the per-axis minimum over its channels."""
        bad = [lv for lv in levels if lv not in LEVELS]
        if bad or len(set(levels)) != len(levels):
            raise InputError(f"levels must be distinct names from {LEVELS}, got {levels}")
        n_s, n_r = len(self.sides), len(self.ratios)
        sets = {"channel": [(c,) for c in range(n_s * n_r)],
                "cross_ratio": [tuple(s * n_r + r for r in range(n_r)) for s in range(n_s)],
                "cross_scale": [tuple(s * n_r + r for s in range(n_s)) for r in range(n_r)],
                "all": [tuple(range(n_s * n_r))]}
        ks = self.kernels()
        return [(chans, (min(ks[c][0] for c in chans), min(ks[c][1] for c in chans)))
                for level in levels for chans in sets[level]]

    def channel_of(self, boxes: torch.Tensor, distance: str = "log") -> torch.Tensor:
        """(N,) channel index of each xyxy box (card step 1, Relationship Recovery). ``"log"`` (R,
        default): nearest scale by |log area - log A_s| and nearest ratio by |log(h/w) - log r|,
        each normalised by the mean gap between adjacent anchor log-values; ``"raw"``: the
        third-party squared difference of (area, ratio), dominated by area (kept for comparison)."""
        w = (boxes[:, 2] - boxes[:, 0]).double().clamp_min(1e-6)
        h = (boxes[:, 3] - boxes[:, 1]).double().clamp_min(1e-6)
        areas = torch.tensor([s * s for s in self.sides], dtype=torch.float64)  # constants: gaps on the CPU
        ratios = torch.tensor(self.ratios, dtype=torch.float64)
        gaps = log_gap(areas), log_gap(ratios)
        areas, ratios = areas.to(boxes.device), ratios.to(boxes.device)
        if distance == "log":
            d_s = (torch.log(w * h)[:, None] - areas.log()).abs() / gaps[0]
            d_r = (torch.log(h / w)[:, None] - ratios.log()).abs() / gaps[1]
            return d_s.argmin(1) * len(self.ratios) + d_r.argmin(1)
        if distance == "raw":
            d = ((w * h)[:, None, None] - areas[:, None]) ** 2 + ((h / w)[:, None, None] - ratios) ** 2
            return d.flatten(1).argmin(1)
        raise InputError(f"channel_distance must be one of {CHANNEL_DISTANCES}, got {distance!r}")


def log_gap(values: torch.Tensor) -> float:
    logs = values.log().sort().values
    return float((logs[-1] - logs[0]) / (len(logs) - 1)) if len(logs) > 1 and logs[-1] > logs[0] else 1.0


def check_inputs(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                 classes: torch.Tensor | None = None, anchors: torch.Tensor | None = None) -> None:
    if not (isinstance(boxes, torch.Tensor) and boxes.dim() == 2 and boxes.shape[1] == 4):
        raise InputError(f"boxes must be a (N, 4) tensor, got {getattr(boxes, 'shape', type(boxes))}")
    n = boxes.shape[0]
    if not (isinstance(scores, torch.Tensor) and scores.shape == (n,)):
        raise InputError(f"scores must have shape ({n},), got {getattr(scores, 'shape', type(scores))}")
    if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
        raise InputError("boxes and scores must be finite (no NaN or inf)")
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise InputError("boxes must be xyxy with x1 <= x2 and y1 <= y2")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise InputError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    if classes is not None and (classes.shape != (n,) or classes.dtype.is_floating_point or (classes < 0).any()):
        raise InputError(f"classes must be a ({n},) integer tensor >= 0")
    if anchors is not None:
        check_inputs(anchors, scores, 0.0)


def score_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices by decreasing score, ties broken by lower index."""
    return torch.sort(scores, descending=True, stable=True).indices


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
               classes: torch.Tensor | None = None) -> torch.Tensor:
    """GreedyNMS reference (the baseline of PSRR-MaxpoolNMS, arXiv:2105.12990), same semantics as
    torchvision.ops.nms / batched_nms: visit boxes by decreasing score, keep a box unless an already
    kept box of its class has IoU > ``iou_threshold`` with it. Vectorised per kept box (one IoU row
    against the remaining boxes), sequential over kept boxes. Shapes: see the module docstring."""
    check_inputs(boxes, scores, iou_threshold, classes)
    boxes = boxes.double()
    if classes is not None and boxes.numel():  # disjoint per-class copies of the plane
        boxes = boxes + (classes.double() * (boxes.max() - boxes.min() + 1))[:, None]
    order = score_order(scores)
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = torch.zeros(len(b), dtype=torch.bool, device=b.device)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = b[i + 1:]
        iw = (torch.minimum(rest[:, 2], b[i, 2]) - torch.maximum(rest[:, 0], b[i, 0])).clamp_min(0)
        ih = (torch.minimum(rest[:, 3], b[i, 3]) - torch.maximum(rest[:, 1], b[i, 1])).clamp_min(0)
        inter = iw * ih
        iou = inter / (area[i] + area[i + 1:] - inter).clamp_min(1e-12)
        suppressed[i + 1:] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


@dataclass(frozen=True)
class CellMap:
    """Where each box lands on the score maps: class, channel, cell row and column (all (N,) int64)
    plus the map size (classes, channels, grid height, grid width) and a unique rank key per box
    (N - rank by decreasing score, ties to the lower index)."""

    cls: torch.Tensor
    channel: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    key: torch.Tensor
    shape: tuple[int, int, int, int]


def map_to_cells(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor | None, anchor_set: AnchorSet,
                 image_size: tuple[float, float] | None, channel_distance: str) -> CellMap:
    """Card step 1: cell (floor(cy / beta), floor(cx / beta)) of the box centre, clamped to the grid,
    and the channel of the box shape. Pass source anchors as ``boxes`` for MaxpoolNMS's anchor-index
    mapping. ``image_size`` (H, W) in the boxes' units; None = the extent of the boxes, from
    min(0, lowest coordinate) rounded down to a cell. Classes are renumbered to those present."""
    n = boxes.shape[0]
    stride = anchor_set.stride
    if image_size is None and n:
        low = torch.clamp(boxes.double().amin(0)[:2], max=0.0).div(stride).floor().mul(stride)  # (x, y)
        top = boxes.double().amax(0)[2:]
    else:
        height, width = image_size or (1.0, 1.0)
        low = torch.zeros(2, dtype=torch.float64, device=boxes.device)
        top = torch.tensor([width, height], dtype=torch.float64, device=boxes.device)
    grid_w, grid_h = (max(1, math.ceil(float(v) / stride)) for v in (top - low))
    cls = torch.zeros(n, dtype=torch.long, device=boxes.device) if classes is None else torch.unique(classes, return_inverse=True)[1]
    n_cls = int(cls.max()) + 1 if n else 1
    check_map_size((n_cls, anchor_set.num_channels, grid_h, grid_w), stride)
    centre = (boxes[:, :2] + boxes[:, 2:]).double() / 2 - low
    row = torch.floor(centre[:, 1] / stride).long().clamp(0, grid_h - 1)
    col = torch.floor(centre[:, 0] / stride).long().clamp(0, grid_w - 1)
    key = torch.empty(n, dtype=torch.float64, device=scores.device)
    key[score_order(scores)] = torch.arange(n, 0, -1, dtype=torch.float64, device=scores.device)
    return CellMap(cls, anchor_set.channel_of(boxes, channel_distance), row, col, key,
                   (n_cls, anchor_set.num_channels, grid_h, grid_w))


def check_map_size(shape: tuple[int, int, int, int], stride: float) -> None:
    """Raise InputError when the score map (classes, channels, H, W) exceeds MAX_SCORE_MAP_CELLS."""
    cells = math.prod(shape)
    if cells > MAX_SCORE_MAP_CELLS:
        raise InputError(
            f"the score map would hold {cells:.3g} cells ({shape[0]} classes x {shape[1]} channels x {shape[2]} x "
            f"{shape[3]} cells of stride {stride:g}), more than {MAX_SCORE_MAP_CELLS}: pass image_size=(H, W) "
            "(centres are clamped to it), boxes in pixels, or an AnchorSet with a larger stride")


def to_pixels(boxes: torch.Tensor, anchors: torch.Tensor | None, anchor_set: AnchorSet,
              image_size: tuple[float, float] | None, normalized: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale [0, 1]-normalised boxes (and anchors) by (W, H, W, H) when ``normalized``; refuse two or
    more boxes whose coordinates all lie within less than one stride (a unit mismatch, such as
    normalised boxes with a pixel anchor set, that would pool every box into one cell)."""
    if image_size is not None:
        if len(image_size) != 2 or not all(math.isfinite(float(v)) and float(v) > 0 for v in image_size):
            raise InputError(f"image_size must be (H, W) with H, W > 0, got {image_size!r}")
    if normalized:
        if image_size is None:
            raise InputError("normalized=True needs image_size=(H, W) to turn [0, 1] coordinates into pixels")
        scale = torch.tensor([image_size[1], image_size[0]] * 2, dtype=boxes.dtype, device=boxes.device)
        return boxes * scale, None if anchors is None else anchors * scale
    span = float(boxes.max() - boxes.min()) if len(boxes) else 0.0
    if len(boxes) >= 2 and span < anchor_set.stride:
        raise InputError(
            f"all {len(boxes)} boxes lie within {span:.3g} units, less than one cell of the anchor set's stride "
            f"{anchor_set.stride:g} (pixels), so they would pool into one cell: normalised coordinates? pass "
            "normalized=True with image_size=(H, W), boxes in pixels, or an AnchorSet in the boxes' units")
    return boxes, anchors


def refuse_iou_threshold(iou_threshold: object) -> None:
    """The max-pool methods take no IoU threshold (card 35 step 2: the window is alpha x anchor size)."""
    if iou_threshold is not None:
        raise InputError(
            f"max-pool NMS computes no IoU, so iou_threshold={iou_threshold!r} would be ignored: its suppression "
            "radius is AnchorSet(alpha=...) x anchor size (card default alpha 0.75); drop the argument")


def window_offsets(kernel: tuple[int, int], shift: bool) -> list[tuple[int, int]]:
    """The unshifted grid and, with ``shift``, the grid moved by (round(k_y / 2), round(k_x / 2))."""
    ky, kx = kernel
    offsets = [(0, 0)]
    if shift and (ky > 1 or kx > 1):
        offsets.append((round_half_up(ky / 2) % ky, round_half_up(kx / 2) % kx))
    return offsets


def pooled_survivors(cells: CellMap, groups, shift: bool) -> torch.Tensor:
    """(N,) bool: box wins its cell and is the window maximum at every group and offset (card steps
    3-4), computed with scatter_reduce + F.max_pool2d (kernel = stride) + a gather per box."""
    n_cls, n_ch, grid_h, grid_w = cells.shape
    flat = ((cells.cls * n_ch + cells.channel) * grid_h + cells.row) * grid_w + cells.col
    score_map = torch.full((n_cls * n_ch * grid_h * grid_w,), -1.0, dtype=torch.float64, device=cells.key.device)
    score_map = score_map.scatter_reduce(0, flat, cells.key, reduce="amax")
    alive = score_map[flat] == cells.key
    score_map = score_map.view(n_cls, n_ch, grid_h, grid_w)
    for chans, kernel in groups:
        member = torch.zeros(n_ch, dtype=torch.bool, device=cells.channel.device)
        member[list(chans)] = True
        in_group = member[cells.channel]
        merged = score_map[:, list(chans)].amax(1, keepdim=True)
        for oy, ox in window_offsets(kernel, shift):
            padded = F.pad(merged, (ox, 0, oy, 0), value=-1.0)
            pooled = F.max_pool2d(padded, kernel, stride=kernel, ceil_mode=True)[:, 0]
            window_max = pooled[cells.cls, (cells.row + oy) // kernel[0], (cells.col + ox) // kernel[1]]
            alive &= ~in_group | (window_max == cells.key)
    return alive


def psrr_maxpool_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: None = None, *,
                     classes: torch.Tensor | None = None, anchors: torch.Tensor | None = None,
                     anchor_set: AnchorSet = AnchorSet(), image_size: tuple[float, float] | None = None,
                     normalized: bool = False, relationship_recovery: bool = True, shift: bool = True,
                     levels: tuple[str, ...] = LEVELS, channel_distance: str = "log") -> torch.Tensor:
    """PSRR-MaxpoolNMS (Zhang et al., CVPR 2021, arXiv:2105.12990): Relationship Recovery maps each
    box by its own centre and shape to (class, channel, cell); a pyramid of non-overlapping max-pools
    (``levels``, kernel = stride) in the unshifted and, with ``shift``, the half-kernel-shifted grid
    keeps a box only if it is the window maximum everywhere. Fully parallel: O(N + cells).

    Ablations: ``shift=False`` (no shifted pass); ``relationship_recovery=False`` maps each box by its
    source anchor ``anchors`` (N, 4) xyxy instead (MaxpoolNMS's anchor-index mapping). ``image_size``
    (H, W) fixes the grid (None: the extent of the boxes); cells are clamped to it. ``normalized``: boxes
    (and anchors) are in [0, 1] of ``image_size``. Returns int64 indices sorted by decreasing score.
    ``iou_threshold`` must stay None (no IoU is computed; see the module docstring)."""
    boxes, anchors = checked_pool_inputs(boxes, scores, iou_threshold, classes, anchors, anchor_set, image_size,
                                         normalized, relationship_recovery)
    source = boxes if relationship_recovery else anchors
    cells = map_to_cells(source, scores, classes, anchor_set, image_size, channel_distance)
    alive = pooled_survivors(cells, anchor_set.groups(tuple(levels)), shift)
    order = score_order(scores)
    return order[alive[order]]


def checked_pool_inputs(boxes, scores, iou_threshold, classes, anchors, anchor_set: AnchorSet, image_size,
                        normalized: bool, relationship_recovery: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The max-pool methods' checks, in one place; returns (boxes, anchors) in the anchor set's units."""
    refuse_iou_threshold(iou_threshold)
    check_inputs(boxes, scores, 0.0, classes, anchors)
    if not relationship_recovery and anchors is None:
        raise InputError("relationship_recovery=False maps boxes by their source anchors: pass anchors (N, 4)")
    return to_pixels(boxes, anchors, anchor_set, image_size, normalized)


def maxpool_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: None = None, *,
                anchors: torch.Tensor, classes: torch.Tensor | None = None, anchor_set: AnchorSet = AnchorSet(),
                image_size: tuple[float, float] | None = None, normalized: bool = False,
                levels: tuple[str, ...] = LEVELS) -> torch.Tensor:
    """MaxpoolNMS (Cai et al., CVPR 2019, arXiv:1904.12221), the base method of PSRR-MaxpoolNMS
    (arXiv:2105.12990): each box is placed at its source anchor's cell and channel (``anchors`` (N, 4)
    xyxy, one per box), then the same per-channel + cross-channel pools as PSRR, without shift.
    Equals ``psrr_maxpool_nms(relationship_recovery=False, shift=False)``."""
    return psrr_maxpool_nms(boxes, scores, iou_threshold, classes=classes, anchors=anchors, anchor_set=anchor_set,
                            image_size=image_size, normalized=normalized, relationship_recovery=False, shift=False,
                            levels=levels)


def psrr_maxpool_nms_loop(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: None = None, *,
                          classes: torch.Tensor | None = None, anchors: torch.Tensor | None = None,
                          anchor_set: AnchorSet = AnchorSet(), image_size: tuple[float, float] | None = None,
                          normalized: bool = False, relationship_recovery: bool = True, shift: bool = True,
                          levels: tuple[str, ...] = LEVELS, channel_distance: str = "log") -> torch.Tensor:
    """PSRR-MaxpoolNMS (arXiv:2105.12990) written as plain Python loops over box pairs, O(N^2): the
    test oracle of :func:`psrr_maxpool_nms` (same arguments, same result). A box dies when another box
    of its class shares its cell and channel, or shares a window of a group containing both channels,
    with a higher rank key."""
    boxes, anchors = checked_pool_inputs(boxes, scores, iou_threshold, classes, anchors, anchor_set, image_size,
                                         normalized, relationship_recovery)
    cells = map_to_cells(boxes if relationship_recovery else anchors, scores, classes, anchor_set, image_size,
                         channel_distance)
    cls, ch, row, col, key = (t.tolist() for t in (cells.cls, cells.channel, cells.row, cells.col, cells.key))
    tests = [(set(chans), k, off) for chans, k in anchor_set.groups(tuple(levels))
             for off in window_offsets(k, shift)]
    keep = []
    for i in range(len(key)):
        rivals = [j for j in range(len(key)) if cls[j] == cls[i] and key[j] > key[i]]
        dead = any(ch[j] == ch[i] and row[j] == row[i] and col[j] == col[i] for j in rivals)
        for chans, (ky, kx), (oy, ox) in tests:
            if dead or ch[i] not in chans:
                continue
            dead = any(ch[j] in chans and (row[j] + oy) // ky == (row[i] + oy) // ky
                       and (col[j] + ox) // kx == (col[i] + ox) // kx for j in rivals)
        if not dead:
            keep.append(i)
    keep_t = torch.tensor(keep, dtype=torch.long, device=scores.device)
    return keep_t[score_order(scores[keep_t])] if keep else keep_t
