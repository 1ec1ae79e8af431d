"""A small anchor-free detector in the style of CenterNet (Objects as Points, arXiv:1904.07850): the
shared detector of Cycle Self-Training (11, arXiv:2207.05334) in 2D and of the A*3D benchmark
(40, arXiv:1909.07541) in bird's-eye view.

An object is the peak of a per-class heatmap at its box centre on an output grid ``stride`` times
coarser than the input; a size head regresses its width and height (input pixels), an offset head the
sub-cell position of the centre, and an optional yaw head (sin, cos) its heading for rotated BEV boxes.
Training targets splat a Gaussian per object (radius from CornerNet's overlap rule); the loss is the
penalty-reduced focal loss on the heatmap plus L1 on size (weight 0.1) and offset at object centres.
Decoding keeps 3x3 local maxima of the heatmap (max-pool NMS), takes the top ``k`` and reads size,
offset and yaw there.

Shapes: images (B, C, H, W) with H and W multiples of ``stride``; boxes (N, 4) xyxy in input pixels
inside the image; labels (N,) int64 in [0, num_classes). Everything follows the device of its input.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError

SIZE_WEIGHT = 0.1  # CenterNet's weight of the size loss


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _head(width: int, out: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, out, 1))
    nn.init.constant_(head[-1].bias, bias)
    return head


class CenterNet(nn.Module):
    """CenterNet-style detector (arXiv:1904.07850): a conv backbone of output stride ``stride`` (a power
    of 2) and heads ``heatmap`` (num_classes logits), ``size`` (w, h), ``offset`` (dx, dy) and, with
    ``yaw=True``, ``yaw`` (sin, cos). ``forward(x)`` -> dict of (B, ., H/stride, W/stride) maps."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, stride: int = 4, yaw: bool = False) -> None:
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise InputError(f"stride must be a power of 2, got {stride}")
        if in_channels < 1 or num_classes < 1 or width < 1:
            raise InputError(f"in_channels, num_classes and width must be >= 1, got {in_channels}, {num_classes}, {width}")
        layers, channels = [_conv(in_channels, width)], width
        for _ in range(int(math.log2(stride))):
            layers += [_conv(channels, channels * 2, stride=2)]
            channels *= 2
        layers += [_conv(channels, width)]
        self.backbone = nn.Sequential(*layers)
        self.num_classes, self.stride = num_classes, stride
        self.heads = nn.ModuleDict({"heatmap": _head(width, num_classes, bias=-2.19),  # prior 0.1 (CenterNet)
                                    "size": _head(width, 2), "offset": _head(width, 2)})
        if yaw:
            self.heads["yaw"] = _head(width, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[2] % self.stride or x.shape[3] % self.stride:
            raise InputError(f"images must be (B, C, H, W) with H, W multiples of {self.stride}, got {tuple(x.shape)}")
        features = self.backbone(x)
        return {name: head(features) for name, head in self.heads.items()}


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CornerNet's Gaussian radius rule as CenterNet computes it: for a box of ``height`` x ``width`` (output
    cells), the minimum over three corner-shift cases of a root of a quadratic in the shift, so that boxes
    whose corners move by less keep an IoU of about ``min_overlap`` with the ground truth."""
    roots = []
    for a, b, c in ((1.0, height + width, width * height * (1 - min_overlap) / (1 + min_overlap)),
                    (4.0, 2 * (height + width), (1 - min_overlap) * width * height),
                    (4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height)):
        roots.append((b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / 2)
    return min(roots)


def draw_gaussian(heatmap: torch.Tensor, cx: int, cy: int, radius: int) -> None:
    """Splat exp(-(dx^2 + dy^2) / (2 sigma^2)), sigma = (2r + 1) / 6, onto ``heatmap`` (H, W) in place
    by element-wise max (overlapping objects keep the larger value); the centre gets exactly 1."""
    height, width = heatmap.shape
    sigma = (2 * radius + 1) / 6
    ys = torch.arange(max(0, cy - radius), min(height, cy + radius + 1), device=heatmap.device)
    xs = torch.arange(max(0, cx - radius), min(width, cx + radius + 1), device=heatmap.device)
    if len(ys) == 0 or len(xs) == 0:
        return
    blob = torch.exp(-((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2).float() / (2 * sigma * sigma))
    region = heatmap[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
    torch.maximum(region, blob.to(heatmap.dtype), out=region)


@dataclass
class CenterNetTargets:
    """Training targets of one image: ``heatmap`` (C, H, W), and per object (padded to ``max_objects``)
    ``index`` (K,) flat centre cell, ``size`` (K, 2), ``offset`` (K, 2), ``yaw`` (K, 2) sin/cos and
    ``mask`` (K,) 1 for real objects."""

    heatmap: torch.Tensor
    index: torch.Tensor
    size: torch.Tensor
    offset: torch.Tensor
    yaw: torch.Tensor
    mask: torch.Tensor


def check_boxes(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, image_hw: tuple[int, int]) -> None:
    """InputError unless boxes are (N, 4) finite xyxy with x2 > x1, y2 > y1 inside the image and labels
    (N,) integers in [0, num_classes)."""
    if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != (len(boxes),):
        raise InputError(f"boxes must be (N, 4) and labels (N,), got {tuple(boxes.shape)} and {tuple(labels.shape)}")
    if len(boxes) == 0:
        return
    if not torch.isfinite(boxes).all():
        raise InputError("boxes contain NaN or inf")
    if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise InputError("boxes must be xyxy with x2 > x1 and y2 > y1")
    height, width = image_hw
    if (boxes[:, :2] < 0).any() or (boxes[:, 2] > width).any() or (boxes[:, 3] > height).any():
        raise InputError(f"boxes must lie inside the {width}x{height} image (input pixels, not normalised)")
    if labels.dtype in (torch.float16, torch.float32, torch.float64) or (labels < 0).any() or (labels >= num_classes).any():
        raise InputError(f"labels must be integers in [0, {num_classes})")


def centernet_targets(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, image_hw: tuple[int, int],
                      stride: int, max_objects: int = 64, yaws: torch.Tensor | None = None) -> CenterNetTargets:
    """Targets of one image for :func:`centernet_loss` (see :class:`CenterNetTargets`); ``yaws`` (N,)
    radians for rotated BEV boxes (their ``boxes`` are then the axis-aligned w x h before rotation)."""
    check_boxes(boxes, labels, num_classes, image_hw)
    if len(boxes) > max_objects:
        raise InputError(f"{len(boxes)} objects exceed max_objects={max_objects}")
    out_h, out_w = image_hw[0] // stride, image_hw[1] // stride
    device = boxes.device
    heatmap = torch.zeros(num_classes, out_h, out_w, device=device)
    index = torch.zeros(max_objects, dtype=torch.long, device=device)
    size, offset, yaw = (torch.zeros(max_objects, 2, device=device) for _ in range(3))
    mask = torch.zeros(max_objects, device=device)
    for k, (box, label) in enumerate(zip(boxes.float(), labels)):
        w, h = float(box[2] - box[0]), float(box[3] - box[1])
        centre = torch.stack([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]) / stride
        cell = centre.floor().long().clamp(min=torch.zeros(2, dtype=torch.long, device=device),
                                           max=torch.tensor([out_w - 1, out_h - 1], device=device))
        radius = max(0, int(gaussian_radius(h / stride, w / stride)))
        draw_gaussian(heatmap[int(label)], int(cell[0]), int(cell[1]), radius)
        index[k], size[k], offset[k], mask[k] = cell[1] * out_w + cell[0], box[2:] - box[:2], centre - cell, 1.0
        if yaws is not None:
            yaw[k] = torch.stack([torch.sin(yaws[k]), torch.cos(yaws[k])])
    return CenterNetTargets(heatmap, index, size, offset, yaw, mask)


def stack_targets(targets: list[CenterNetTargets]) -> CenterNetTargets:
    """A batch of per-image targets, each field stacked on a new first dimension."""
    return CenterNetTargets(*(torch.stack([getattr(t, f) for t in targets])
                              for f in ("heatmap", "index", "size", "offset", "yaw", "mask")))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss: -(sum_pos (1-p)^a log p + sum_neg (1-y)^b p^a log(1-p)) /
    max(#pos, 1), positives where the target heatmap is exactly 1. logits and target (B, C, H, W).
    ``weight`` (B, C, H, W) >= 0 scales each location's term and the positive count becomes the summed
    weight of the positives (Cycle Self-Training's per-box pseudo-label weights, arXiv:2207.05334);
    None is all ones."""
    pos = target.eq(1).float()
    weight = torch.ones_like(target) if weight is None else weight
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    pos_loss = ((1 - p) ** alpha * log_p * pos * weight).sum()
    neg_loss = ((1 - target) ** beta * p ** alpha * log_not_p * (1 - pos) * weight).sum()
    return -(pos_loss + neg_loss) / (pos * weight).sum().clamp_min(1)


def _gather(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) map read at flat cells ``index`` (B, K) -> (B, K, D)."""
    flat = feature.flatten(2)
    return flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def centernet_loss(outputs: dict[str, torch.Tensor], targets: CenterNetTargets) -> dict[str, torch.Tensor]:
    """``{"loss", "heatmap", "size", "offset"[, "yaw"]}``: focal loss plus masked L1 of the regressions
    at object centres (size weighted by 0.1); ``targets`` from :func:`stack_targets`."""
    if outputs["heatmap"].shape != targets.heatmap.shape:
        raise InputError(f"heatmap {tuple(outputs['heatmap'].shape)} does not match targets {tuple(targets.heatmap.shape)}")
    mask = targets.mask[..., None]
    count = mask.sum().clamp_min(1)
    parts = {"heatmap": focal_loss(outputs["heatmap"], targets.heatmap)}
    for name in ("size", "offset") + (("yaw",) if "yaw" in outputs else ()):
        pred = _gather(outputs[name], targets.index)
        parts[name] = (F.l1_loss(pred * mask, getattr(targets, name) * mask, reduction="sum") / count)
    parts["loss"] = parts["heatmap"] + SIZE_WEIGHT * parts["size"] + parts["offset"] + parts.get("yaw", 0.0)
    return parts


@dataclass
class Detections:
    """Decoded detections of one image: ``boxes`` (D, 4) xyxy in input pixels, ``scores`` (D,) in (0, 1),
    ``labels`` (D,) int64 and ``yaws`` (D,) radians (zeros without a yaw head)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    yaws: torch.Tensor


@torch.no_grad()
def decode_detections(outputs: dict[str, torch.Tensor], stride: int, k: int = 100,
                      threshold: float = 0.05) -> list[Detections]:
    """Boxes from CenterNet outputs: 3x3 local maxima of the sigmoid heatmap, the top ``k`` per image
    above ``threshold``, with size, offset and yaw read at their cells."""
    heat = outputs["heatmap"].sigmoid()
    batch, classes, height, width = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, flat = peaks.flatten(1).topk(min(k, classes * height * width))
    labels, cells = flat // (height * width), flat % (height * width)
    size, offset = _gather(outputs["size"], cells), _gather(outputs["offset"], cells)
    centre = torch.stack([cells % width, cells // width], -1).float() + offset
    centre, half = centre * stride, size / 2
    boxes = torch.cat([centre - half, centre + half], -1)
    yaws = (torch.atan2(*_gather(outputs["yaw"], cells).unbind(-1)) if "yaw" in outputs
            else torch.zeros_like(scores))
    keep = scores > threshold
    return [Detections(boxes[b][keep[b]], scores[b][keep[b]], labels[b][keep[b]], yaws[b][keep[b]]) for b in range(batch)]
