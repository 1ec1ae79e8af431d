"""Cycle Self-Training for semi-supervised object detection (CST, Liu et al., ACM MM 2022, arXiv:2207.05334)
on dense, CenterNet-style detectors, and the EMA teacher-student baseline it improves on (Unbiased-Teacher
style Mean Teacher).

Two students S1, S2 and two teachers T1 = EMA(S1), T2 = EMA(S2). Each step the teachers label a weak view
of an unlabeled batch; the cycle S1 -> T1 -> S2 -> T2 -> S1 sends T1's pseudo-boxes to S2's loss and T2's to
S1's (``routing="cycle"``; ``routing="self"`` is Mean Teacher: each teacher labels its own student). A
pseudo-box b of teacher Ti is weighted by the agreement of the two teachers' class distributions at b's
centre, w(b) = D(p_i(b), p_j(b)) in [0, 1] (:func:`consistency_weight`). Students learn from the labeled
batch (full detector loss) plus ``unsup_weight`` x a weighted focal loss on the heatmap rendered from the
pseudo-boxes, on a strong view of the same images (classification only, no box regression on pseudo-labels,
as in Unbiased Teacher). Teachers get no gradient; they move only by EMA.

Models: any ``nn.Module`` mapping images (B, C, H, W) to CenterNet outputs
(:class:`honed.vision.centernet.CenterNet`: a dict with a ``"heatmap"`` of per-class logits (B, K, h, w)
at output stride ``stride``, plus size / offset maps for the labeled loss).

Reconstructed (R) steps of the card, as named options with its defaults: the consistency measure D
(``reweight="js"``: 1 - JS/ln 2; ``"overlap"``; ``"kl"``: exp(-KL/T); ``"none"``: w = 1), the (K+1)-way
class distribution read from per-class sigmoid heatmaps (:func:`class_distribution`), and the normaliser of
the weighted loss (``normalise="weights"``: the summed weight of the pseudo-positives, the card's
sum w l / sum w; ``"count"``: their number).
"""
import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.core.seed import draw_device
from honed.sequence.mean_teacher import ema_update
from honed.vision.centernet import (CenterNetTargets, Detections, centernet_loss, decode_detections, draw_gaussian,
                                    focal_loss, gaussian_radius)

REWEIGHTS = ("js", "overlap", "kl", "none")
ROUTINGS = ("cycle", "self")


def class_distribution(heatmap_logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """CST (arXiv:2207.05334) class distribution over background + K classes at flat output cells.
    ``heatmap_logits`` (B, K, h, w) per-class sigmoid logits; ``cells`` (B, N) flat indices in [0, h*w).
    Returns (B, N, K+1): [1 - f, f * s_1 / S, ..., f * s_K / S] with s = sigmoid scores, f = max_c s_c
    (the cell's foreground score) and S = sum_c s_c."""
    scores = heatmap_logits.sigmoid().flatten(2)  # (B, K, h*w)
    s = scores.gather(2, cells[:, None, :].expand(-1, scores.shape[1], -1)).transpose(1, 2)  # (B, N, K)
    fg = s.max(-1, keepdim=True).values
    return torch.cat([1 - fg, fg * s / s.sum(-1, keepdim=True).clamp_min(1e-12)], -1)


def consistency_weight(p1: torch.Tensor, p2: torch.Tensor, form: str = "js", temperature: float = 1.0) -> torch.Tensor:
    """CST (arXiv:2207.05334) distribution-consistency weight w = D(p1, p2) in [0, 1], 1 when p1 == p2.
    ``p1``, ``p2`` (..., C) probability vectors; ``form``: "js" (1 - JS(p1||p2) / ln 2, the card's
    default), "overlap" (sum_c min(p1_c, p2_c)), "kl" (exp(-KL(p1||p2) / temperature)), "none" (ones)."""
    if form not in REWEIGHTS:
        raise InputError(f"form must be one of {REWEIGHTS}, got {form!r}")
    if p1.shape != p2.shape:
        raise InputError(f"p1 and p2 must have the same shape, got {tuple(p1.shape)} and {tuple(p2.shape)}")
    if form == "none":
        return torch.ones(p1.shape[:-1], device=p1.device, dtype=p1.dtype)
    if form == "overlap":
        return torch.minimum(p1, p2).sum(-1).clamp(0, 1)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log()), torch.zeros_like(a)).sum(-1)

    if form == "kl":
        if not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        return torch.exp(-kl(p1, p2).clamp_min(0) / temperature)
    mid = (p1 + p2) / 2
    return (1 - (kl(p1, mid) + kl(p2, mid)) / 2 / math.log(2)).clamp(0, 1)


def centre_cells(boxes: torch.Tensor, stride: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Flat output-grid cells (N,) of the centres of xyxy ``boxes`` (N, 4) in input pixels."""
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2 / stride).floor().long()
    x = centre[:, 0].clamp(0, out_hw[1] - 1)
    y = centre[:, 1].clamp(0, out_hw[0] - 1)
    return y * out_hw[1] + x


@torch.no_grad()
def box_weights(detections: list[Detections], own_heatmap: torch.Tensor, other_heatmap: torch.Tensor | None,
                stride: int, form: str = "js", temperature: float = 1.0) -> list[torch.Tensor]:
    """CST (arXiv:2207.05334) weight of every pseudo-box of one teacher: its own class distribution at the
    box centre against the OTHER teacher's at the same cell (not a match between the two teachers'
    detections). Heatmaps (B, K, h, w); ``other_heatmap`` None (or ``form="none"``) gives ones."""
    out_hw = own_heatmap.shape[-2:]
    weights = []
    for b, det in enumerate(detections):
        if form == "none" or other_heatmap is None or len(det.boxes) == 0:
            weights.append(torch.ones(len(det.boxes), device=own_heatmap.device))
            continue
        cells = centre_cells(det.boxes, stride, out_hw)[None]
        p_own = class_distribution(own_heatmap[b:b + 1], cells)[0]
        p_other = class_distribution(other_heatmap[b:b + 1], cells)[0]
        weights.append(consistency_weight(p_own, p_other, form, temperature))
    return weights


@torch.no_grad()
def render_pseudo_heatmap(detections: list[Detections], weights: list[torch.Tensor], num_classes: int,
                          out_hw: tuple[int, int], stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CST (arXiv:2207.05334) pseudo-targets of a batch: the CenterNet heatmap (B, K, h, w) of the
    pseudo-boxes (Gaussian per box at its centre, as :func:`honed.vision.centernet.centernet_targets`)
    and the weight map (B, K, h, w): each box's w over its Gaussian footprint (where two overlap, the box
    whose Gaussian is larger there), 1 elsewhere."""
    device = weights[0].device if weights else torch.device("cpu")
    heat = torch.zeros(len(detections), num_classes, *out_hw, device=device)
    weight_map = torch.ones_like(heat)
    for b, (det, w) in enumerate(zip(detections, weights)):
        cells = centre_cells(det.boxes, stride, out_hw)
        for box, label, cell, wb in zip(det.boxes, det.labels.tolist(), cells.tolist(), w.tolist()):
            size = (box[2:] - box[:2]).clamp_min(0) / stride
            radius = max(0, int(gaussian_radius(float(size[1]), float(size[0]))))
            blob = torch.zeros(out_hw, device=device)
            draw_gaussian(blob, cell % out_hw[1], cell // out_hw[1], radius)
            wins = blob > heat[b, label]
            weight_map[b, label][wins] = wb
            heat[b, label] = torch.maximum(heat[b, label], blob)
    return heat, weight_map


@dataclass
class PseudoTargets:
    """What one student learns from on the unlabeled batch: the ``heatmap`` and ``weight_map``
    (B, K, h, w), the pseudo ``detections`` and their ``weights``, and which teacher made them (``source``)."""

    heatmap: torch.Tensor
    weight_map: torch.Tensor
    detections: list[Detections]
    weights: list[torch.Tensor]
    source: int


def strong_view(images: torch.Tensor, generator: torch.Generator, cutout: int = 2, cutout_size: float = 0.25) -> torch.Tensor:
    """The students' strong view (CST arXiv:2207.05334, Unbiased-Teacher style photometric augmentation,
    no geometry change): per image colour jitter (brightness +-0.2, contrast x[0.6, 1.4], channel gains
    x[0.8, 1.2]), a 3x3 blur with probability 0.5 and ``cutout`` grey squares of side ``cutout_size`` x
    the image side. ``images`` (B, C, H, W) in [0, 1]; ``generator`` best on the images' device (one
    elsewhere draws there and its draws are moved)."""
    b, c, h, w = images.shape
    dev = images.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=draw_device(generator, dev)).to(dev)

    mean = images.mean((1, 2, 3), keepdim=True)
    out = (images - mean) * (0.6 + 0.8 * rand(b, 1, 1, 1)) + mean + 0.4 * (rand(b, 1, 1, 1) - 0.5)
    out = out * (0.8 + 0.4 * rand(b, c, 1, 1))
    blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    out = torch.where(rand(b, 1, 1, 1) < 0.5, blurred, out)
    side = max(1, int(cutout_size * min(h, w)))
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    for _ in range(cutout):
        y0 = (rand(b) * (h - side + 1)).long()[:, None, None]
        x0 = (rand(b) * (w - side + 1)).long()[:, None, None]
        hole = (ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)
        out = torch.where(hole[:, None], torch.full_like(out, 0.5), out)
    return out.clamp(0, 1)


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a non-empty (B, C, H, W) tensor, got {shape}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf")


class CycleSelfTraining:
    """Cycle Self-Training (arXiv:2207.05334) around a user's dense detectors and optimizers.

    ``students``: two detectors of one architecture (they MUST differ: initialise them with different
    seeds; ``routing="cycle"``), or any number with ``routing="self"`` (one: Mean Teacher). Teachers are
    deep copies, frozen (``requires_grad=False``, eval mode) and moved only by EMA with ``ema_decay``.
    ``threshold``: teacher score >= tau keeps a pseudo-box (3x3 max-pool peaks); ``unsup_weight``: lambda_u;
    ``reweight``: the consistency measure (see the module docstring; needs two teachers unless "none").
    ``negative_threshold`` (R, not in the card; None = the card: every cell off the pseudo-boxes is background):
    cells off the pseudo-boxes where the teacher's score is in [negative_threshold, threshold) are left out of
    the unlabeled loss, as dense teacher-student detectors do, instead of teaching background where the
    teacher is unsure. ``step(labeled_x, labeled_targets, weak_x, strong_x)`` trains every student once and returns the
    losses; ``labeled_x`` / ``labeled_targets`` may be one batch for all students or a list, one per
    student (different data orders). ``teacher(i)`` is the model to evaluate (the card defaults to T1)."""

    def __init__(self, students: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer], *, stride: int,
                 num_classes: int, routing: str = "cycle", reweight: str = "js", threshold: float = 0.5,
                 ema_decay: float = 0.99, unsup_weight: float = 4.0, max_boxes: int = 32, temperature: float = 1.0,
                 normalise: str = "weights", negative_threshold: float | None = None) -> None:
        students, optimizers = list(students), list(optimizers)
        if routing not in ROUTINGS or reweight not in REWEIGHTS or normalise not in ("weights", "count"):
            raise InputError(f"routing must be one of {ROUTINGS}, reweight one of {REWEIGHTS}, normalise 'weights' "
                             f"or 'count'; got {routing!r}, {reweight!r}, {normalise!r}")
        if not students or len(students) != len(optimizers):
            raise InputError(f"give one optimizer per student, got {len(students)} students, {len(optimizers)} optimizers")
        if routing == "cycle" and len(students) != 2:
            raise InputError(f"routing='cycle' needs exactly two students, got {len(students)}")
        if reweight != "none" and len(students) != 2:
            raise InputError(f"reweight={reweight!r} compares two teachers: give two students or reweight='none'")
        if len({id(s) for s in students}) != len(students):
            raise InputError("the students must be distinct modules (the same module twice would share weights)")
        if not (0 <= ema_decay <= 1 and 0 < threshold < 1 and unsup_weight >= 0 and max_boxes >= 1 and stride >= 1):
            raise InputError("need 0 <= ema_decay <= 1, 0 < threshold < 1, unsup_weight >= 0, max_boxes >= 1, stride >= 1")
        if negative_threshold is not None and not 0 < negative_threshold <= threshold:
            raise InputError(f"negative_threshold must lie in (0, threshold={threshold}] or be None, got {negative_threshold}")
        self.students, self.optimizers = students, optimizers
        self.teachers = [copy.deepcopy(s).eval().requires_grad_(False) for s in students]
        self.stride, self.num_classes, self.routing, self.reweight = stride, num_classes, routing, reweight
        self.threshold, self.ema_decay, self.unsup_weight = threshold, ema_decay, unsup_weight
        self.max_boxes, self.temperature, self.normalise = max_boxes, temperature, normalise
        self.negative_threshold = negative_threshold

    def source_of(self, student: int) -> int:
        """Index of the teacher whose pseudo-labels train ``student`` (cycle: T1 -> S2, T2 -> S1)."""
        return (student + 1) % 2 if self.routing == "cycle" else student

    def teacher(self, index: int = 0) -> nn.Module:
        return self.teachers[index]

    @torch.no_grad()
    def pseudo_targets(self, weak_x: torch.Tensor) -> list[PseudoTargets]:
        """Per student, the pseudo-targets it learns from on ``weak_x`` (B, C, H, W) (no gradient)."""
        outputs = [t(weak_x) for t in self.teachers]
        heatmaps = [o["heatmap"] for o in outputs]
        out_hw = tuple(heatmaps[0].shape[-2:])
        made = []
        for i, out in enumerate(outputs):
            dets = decode_detections(out, self.stride, self.max_boxes, self.threshold)
            other = heatmaps[1 - i] if len(heatmaps) == 2 else None
            weights = box_weights(dets, heatmaps[i], other, self.stride, self.reweight, self.temperature)
            heat, weight_map = render_pseudo_heatmap(dets, weights, self.num_classes, out_hw, self.stride)
            if self.negative_threshold is not None:  # uncertain cells off the pseudo-boxes: no target at all
                uncertain = (heatmaps[i].sigmoid() >= self.negative_threshold) & (heat == 0)
                weight_map = weight_map.masked_fill(uncertain, 0.0)
            made.append(PseudoTargets(heat, weight_map, dets, weights, i))
        return [made[self.source_of(j)] for j in range(len(self.students))]

    def _per_student(self, labeled_x, labeled_targets) -> list[tuple[torch.Tensor, CenterNetTargets]]:
        n = len(self.students)
        xs = list(labeled_x) if isinstance(labeled_x, (list, tuple)) else [labeled_x] * n
        ts = list(labeled_targets) if isinstance(labeled_targets, (list, tuple)) else [labeled_targets] * n
        if len(xs) != n or len(ts) != n:
            raise InputError(f"give one labeled batch for all students or one per student ({n}), got {len(xs)}, {len(ts)}")
        for x, t in zip(xs, ts):
            _check_images(x, "labeled_x")
            if not isinstance(t, CenterNetTargets) or t.heatmap.shape[0] != x.shape[0]:
                raise InputError("labeled_targets must be stack_targets(...) of the labeled images (one per image)")
        return list(zip(xs, ts))

    def step(self, labeled_x, labeled_targets, weak_x: torch.Tensor, strong_x: torch.Tensor) -> dict[str, list[float]]:
        """One CST step (arXiv:2207.05334): pseudo-targets from the teachers on ``weak_x``, each student's
        supervised loss on its labeled batch plus ``unsup_weight`` x the weighted heatmap focal loss on
        ``strong_x`` (same images and geometry as ``weak_x``), an optimizer step per student, then EMA.
        Returns {"loss", "supervised", "unsupervised", "pseudo_boxes", "mean_weight"}: one value per student."""
        batches = self._per_student(labeled_x, labeled_targets)
        _check_images(weak_x, "weak_x")
        _check_images(strong_x, "strong_x")
        if weak_x.shape != strong_x.shape:
            raise InputError(f"weak_x and strong_x must be views of the same images, got {tuple(weak_x.shape)} "
                             f"and {tuple(strong_x.shape)}")
        pseudo = self.pseudo_targets(weak_x)
        log: dict[str, list[float]] = {k: [] for k in ("loss", "supervised", "unsupervised", "pseudo_boxes", "mean_weight")}
        for student, optimizer, (x, targets), p in zip(self.students, self.optimizers, batches, pseudo):
            student.train()
            out = student(torch.cat([x, strong_x]))
            n = len(x)
            sup = centernet_loss({k: v[:n] for k, v in out.items()}, targets)["loss"]
            unsup = focal_loss(out["heatmap"][n:], p.heatmap, weight=p.weight_map)
            if self.normalise == "count":  # weights scale the terms; the normaliser is the pseudo-box count
                positives = p.heatmap.eq(1)
                unsup = unsup * (positives * p.weight_map).sum().clamp_min(1) / positives.sum().clamp_min(1)
            loss = sup + self.unsup_weight * unsup
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            boxes = torch.cat([w for w in p.weights]) if p.weights else torch.zeros(0)
            log["loss"].append(float(loss.detach()))
            log["supervised"].append(float(sup.detach()))
            log["unsupervised"].append(float(unsup.detach()))
            log["pseudo_boxes"].append(len(boxes) / len(weak_x))
            log["mean_weight"].append(float(boxes.mean()) if len(boxes) else float("nan"))
        for teacher, student in zip(self.teachers, self.students):
            ema_update(teacher, student, self.ema_decay)
        return log


def mean_teacher_detection(student: nn.Module, optimizer: torch.optim.Optimizer, **options) -> CycleSelfTraining:
    """The EMA teacher-student baseline of CST (arXiv:2207.05334; Unbiased-Teacher style Mean Teacher): one
    pair, the teacher labels its own student, no reweighting. Options as :class:`CycleSelfTraining`."""
    return CycleSelfTraining([student], [optimizer], routing="self", reweight="none", **options)
