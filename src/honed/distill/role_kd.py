"""Role-wise KD: the distillation objective, its clipped-gradient update and the PBT search that produces
an augmentation schedule (Role-Wise Data Augmentation for Knowledge Distillation, arXiv:2004.08861).

The released code distils with MHGD + RKD + KD-SVD on feature maps and logits. The small run here uses
(a named simplification, as the method card states) Hinton KD at temperature 4 plus RKD distance (weight 50)
and angle (weight 100) losses on the logits, with Huber (smooth L1) penalties. The update is the code's::

    g = grad CE + clip_norm(grad L_dist, ||grad CE|| * sigmoid(epoch))      (per parameter tensor)

(weight decay is left to the optimiser: Adam's ``weight_decay`` adds ``wd * w``, i.e. grad of wd/2 ||w||^2).
The teacher is frozen and kept in eval mode (BatchNorm running statistics) and sees the same augmented batch.

:func:`pbt_search` is PBA's Population Based Training loop: every ``interval`` epochs the bottom quarter of
the population clones the top quarter (weights, optimiser state, policy, policy history) and explores the
policy; the reward is validation accuracy; the schedule is the per-epoch policy history of the best trial.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_number
from honed.distill.augment_policy import Schedule, Trial, exploit_and_explore

DECAY_POINTS = (0.3, 0.6, 0.8)  # lr x 0.1 at 30 / 60 / 80 % of the epochs (the code's schedule)


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise InputError(f"logits must both be (N, C) with equal shapes, got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    if not (torch.isfinite(student).all() and torch.isfinite(teacher).all()):
        raise InputError("logits contain NaN or inf")


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD as used by role-wise KD's small run (arXiv:2004.08861): ``T^2 KL(softmax(t/T) ||
    softmax(s/T))`` averaged over the batch; logits (N, C). The teacher side carries no gradient."""
    _check_logits(student_logits, teacher_logits)
    t = check_number(temperature, "temperature", strict=True)
    target = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), target, reduction="batchmean") * t * t


def _pairwise_distance(e: torch.Tensor) -> torch.Tensor:
    sq = (e.unsqueeze(0) - e.unsqueeze(1)).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt() * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance term (Park et al. 2019, used by arXiv:2004.08861): Huber loss between the (N, N)
    pairwise distance matrices of student and teacher embeddings (N, D), each divided by its mean
    off-diagonal distance. Needs N >= 2."""
    _check_logits(student, teacher)
    if len(student) < 2:
        raise InputError("RKD needs a batch of at least 2 samples")
    with torch.no_grad():
        td = _pairwise_distance(teacher)
        td = td / td[td > 0].mean()
    sd = _pairwise_distance(student)
    sd = sd / sd[sd > 0].mean()
    return F.smooth_l1_loss(sd, td)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (N, N, D): unit vectors e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()           # cos of angle (i; j, k)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle term (Park et al. 2019, used by arXiv:2004.08861): Huber loss between the cosines of the
    angles formed by every triplet of embeddings (N, D) of student and teacher."""
    _check_logits(student, teacher)
    with torch.no_grad():
        ta = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), ta)


class RoleKDLoss(nn.Module):
    """Distillation loss of role-wise KD's small run (arXiv:2004.08861): ``kd_weight * HintonKD(T) +
    distance_weight * RKD-distance + angle_weight * RKD-angle`` on logits (N, C). Defaults: T = 4, 1, 50, 100.
    Call ``loss(student_logits, teacher_logits) -> scalar``."""

    def __init__(self, temperature: float = 4.0, kd_weight: float = 1.0, distance_weight: float = 50.0,
                 angle_weight: float = 100.0) -> None:
        super().__init__()
        self.temperature = check_number(temperature, "temperature", strict=True)
        self.kd_weight = check_number(kd_weight, "kd_weight")
        self.distance_weight = check_number(distance_weight, "distance_weight")
        self.angle_weight = check_number(angle_weight, "angle_weight")

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        loss = self.kd_weight * hinton_kd_loss(student_logits, teacher_logits, self.temperature)
        if self.distance_weight:
            loss = loss + self.distance_weight * rkd_distance_loss(student_logits, teacher_logits)
        if self.angle_weight:
            loss = loss + self.angle_weight * rkd_angle_loss(student_logits, teacher_logits)
        return loss


def combine_distillation_gradients(params: Iterable[nn.Parameter], ce_loss: torch.Tensor,
                                   dist_loss: torch.Tensor, epoch: float) -> list[tuple[float, float]]:
    """Role-wise KD's update (arXiv:2004.08861): set each parameter's ``.grad`` to ``grad CE +
    clip_norm(grad L_dist, ||grad CE|| sigmoid(epoch))``, clipping per tensor. Both losses are scalars of
    one graph (kept alive for the second gradient). Returns per tensor (||grad CE||, ||clipped grad L_dist||)."""
    params = [p for p in params if p.requires_grad]
    if ce_loss.dim() != 0 or dist_loss.dim() != 0:
        raise InputError("ce_loss and dist_loss must be scalars")
    scale = 1.0 / (1.0 + math.exp(-float(epoch)))
    g_ce = torch.autograd.grad(ce_loss, params, retain_graph=True, allow_unused=True)
    g_dist = torch.autograd.grad(dist_loss, params, allow_unused=True)
    norms = []
    for p, gc, gd in zip(params, g_ce, g_dist):
        gc = torch.zeros_like(p) if gc is None else gc
        gd = torch.zeros_like(p) if gd is None else gd
        limit = float(gc.norm()) * scale
        gd_norm = float(gd.norm())
        if gd_norm > limit:
            gd = gd * (limit / gd_norm) if gd_norm > 0 else gd
        p.grad = gc + gd
        norms.append((float(gc.norm()), min(gd_norm, limit)))
    return norms


def distillation_step(student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
                      optimizer: torch.optim.Optimizer, epoch: float,
                      loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> float:
    """One role-wise KD step (arXiv:2004.08861) on a batch x (N, C, H, W), labels y (N,): the frozen
    teacher (eval mode, no gradient) and the student see the same batch; the student's gradient is
    :func:`combine_distillation_gradients` of CE and ``loss(student_logits, teacher_logits)`` (default
    :class:`RoleKDLoss`). ``teacher=None`` trains the student with CE only. Returns the CE value."""
    student.train()
    logits = student(x)
    ce = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    if teacher is None:
        ce.backward()
    else:
        teacher.eval()
        with torch.no_grad():
            teacher_logits = teacher(x)
        dist = (loss or RoleKDLoss())(logits, teacher_logits)
        combine_distillation_gradients(student.parameters(), ce, dist, epoch)
    optimizer.step()
    return float(ce.detach())


def step_decay_lr(base_lr: float, epoch: int, epochs: int, points: tuple[float, ...] = DECAY_POINTS,
                  factor: float = 0.1) -> float:
    """Role-wise KD's lr schedule (arXiv:2004.08861): ``base_lr`` times ``factor`` for each fraction in
    ``points`` of the ``epochs`` already reached by ``epoch`` (0-based)."""
    return base_lr * factor ** sum(epoch >= p * epochs for p in points)


@dataclass
class SearchResult:
    """What :func:`pbt_search` (arXiv:2004.08861) returns: the best trial's schedule, its final reward,
    every trial's final reward and the (epoch, loser, winner) exploit events."""

    schedule: Schedule
    best_score: float
    scores: list[float]
    exploits: list[tuple[int, int, int]] = field(default_factory=list)
    best_trial: int = 0


def pbt_search(trials: list[Trial], train_epoch: Callable[[Trial, int], None],
               reward: Callable[[nn.Module], float], epochs: int, interval: int,
               rng: np.random.Generator, fraction: float = 0.25) -> SearchResult:
    """PBA search of role-wise KD (arXiv:2004.08861): train each trial one epoch at a time with
    ``train_epoch(trial, epoch)`` (which must use ``trial.policy``); after every ``interval`` epochs
    (except the last) score the trials with ``reward(model)`` (validation accuracy) and run
    :func:`exploit_and_explore`. Returns the per-epoch policy history of the best trial as a Schedule."""
    if epochs < 1 or interval < 1:
        raise InputError(f"epochs and interval must be >= 1, got {epochs} and {interval}")
    if not trials:
        raise InputError("pbt_search needs at least one trial")
    exploits = []
    for epoch in range(epochs):
        for trial in trials:
            trial.history.append(trial.policy.copy())
            train_epoch(trial, epoch)
        if (epoch + 1) % interval == 0 and epoch + 1 < epochs:
            scores = [reward(t.model) for t in trials]
            exploits += [(epoch, lo, hi) for lo, hi in exploit_and_explore(trials, scores, rng, fraction)]
    scores = [reward(t.model) for t in trials]
    best = int(np.argmax(scores))
    return SearchResult(Schedule([p.copy() for p in trials[best].history]), scores[best], scores, exploits, best)
