"""Mean Teacher for semi-supervised classification as used by the A*HAR benchmark (Narasimman et al.,
"A*HAR: A New Benchmark towards Semi-supervised learning for Class-imbalanced Human Activity
Recognition", arXiv:2101.04859; Mean Teacher: Tarvainen & Valpola, arXiv:1703.01780).

* :func:`ema_update` - teacher theta' <- a * theta' + (1 - a) * theta (buffers copied).
* :func:`masked_cross_entropy` - CE summed over samples whose label is not -1, divided by the FULL
  batch size (labeled + unlabeled), as in the reference.
* :func:`softmax_mse_consistency` - (1/B) sum_i mean_k (softmax(s_i)_k - softmax(t_i)_k)^2, teacher
  detached.
* :func:`sigmoid_rampup` / :func:`sigmoid_rampdown` - u(t) = exp(-5 (1 - t/L)^2), d(t) = exp(-12.5 p^2).
* :class:`MeanTeacher` - wraps any user's model and optimizer: ``step(x, y)`` runs one training step
  (schedules, loss, backward, optimizer step, EMA); it is also a :class:`honed.core.loop.Callback`
  whose ``loss_fn`` plugs into ``honed.core.loop.train``.
* :func:`balanced_labeled_indices`, :func:`semi_supervised_targets`, :class:`RandomBatches` - the
  benchmark's sampler: exactly n/K labeled windows per class, everything else (plus copies of the
  labeled ones) unlabeled with label -1, batches drawn at random from that pool.
* :class:`TwoStreamBatches` - the original Mean Teacher paper's batch composition (Tarvainen &
  Valpola, arXiv:1703.01780, its PyTorch runs: 31 labeled of 128): a fixed number of labeled windows
  per batch cycling through the labeled set, the rest of the batch drawn from the unlabeled windows.
"""
import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count, check_number
from honed.core.loop import Callback, TrainState

IGNORE = -1


def sigmoid_rampup(step: float, length: int) -> float:
    """Mean Teacher / A*HAR (arXiv:2101.04859) ramp-up u(t) = exp(-5 (1 - t/L)^2) for t < L, else 1
    (1 when L = 0). ``step`` >= 0 in optimizer steps."""
    if length <= 0 or step >= length:
        return 1.0
    frac = max(float(step), 0.0) / length
    return math.exp(-5.0 * (1.0 - frac) ** 2)


def sigmoid_rampdown(step: float, total_steps: int, length: int) -> float:
    """A*HAR (arXiv:2101.04859) ramp-down d(t) = exp(-12.5 p^2), p = 1 - (T - t)/L over the last L of
    T steps, else 1; d(T) = exp(-12.5)."""
    if length <= 0 or step <= total_steps - length:
        return 1.0
    p = 1.0 - (total_steps - min(float(step), total_steps)) / length
    return math.exp(-12.5 * p * p)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """Mean Teacher (arXiv:2101.04859 baseline) EMA: theta' <- decay * theta' + (1 - decay) * theta
    for every parameter, in place; buffers (e.g. BN statistics) are copied. Same architecture."""
    if not 0.0 <= decay <= 1.0:
        raise InputError(f"decay must lie in [0, 1], got {decay}")
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params) or any(a.shape != b.shape for a, b in zip(t_params, s_params)):
        raise InputError("teacher and student must have the same parameter shapes")
    for t, s in zip(t_params, s_params):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def _check_logits(logits: torch.Tensor, name: str) -> None:
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise InputError(f"{name} must be (batch, classes) with batch >= 1, got shape {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise InputError(f"{name} contains NaN or inf")


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """A*HAR (arXiv:2101.04859) classification cost: sum of CE over samples with target !=
    ``ignore_index``, divided by the whole batch size B. logits (B, K); targets (B,) ints in
    [0, K) or ``ignore_index``. A batch without labels gives 0 (with a graph)."""
    _check_logits(logits, "logits")
    if targets.shape != logits.shape[:1]:
        raise InputError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
    labeled = targets != ignore_index
    if ((targets[labeled] < 0) | (targets[labeled] >= logits.shape[1])).any():
        raise InputError(f"targets must lie in [0, {logits.shape[1]}) or equal {ignore_index}")
    ce = F.cross_entropy(logits[labeled], targets[labeled].long(), reduction="sum")
    return ce / logits.shape[0] if labeled.any() else logits.sum() * 0.0


def softmax_mse_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean Teacher consistency (arXiv:2101.04859): (1/B) sum_i mean_k (softmax(s_i)_k -
    softmax(t_i)_k)^2 over all B samples; the teacher side is detached. Both (B, K) logits."""
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise InputError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
                         f"vs {tuple(teacher_logits.shape)}")
    diff = student_logits.softmax(1) - teacher_logits.detach().softmax(1)
    return diff.pow(2).mean(1).mean()


REFERENCE_STEPS, REFERENCE_RAMPUP, REFERENCE_RAMPDOWN = 37_500, 10_000, 6_250  # A*HAR / Mean Teacher runs


def _ramp_lengths(total_steps: int, rampup: int | None, rampdown: int | None) -> tuple[int, int]:
    """(ramp-up, ramp-down) lengths: the reference's fractions of ``total_steps`` where not given;
    InputError when they are not integers >= 0 or together exceed ``total_steps``."""
    up = round(total_steps * REFERENCE_RAMPUP / REFERENCE_STEPS) if rampup is None else rampup
    down = round(total_steps * REFERENCE_RAMPDOWN / REFERENCE_STEPS) if rampdown is None else rampdown
    check_count(up, "rampup_steps", 0)
    check_count(down, "rampdown_steps", 0)
    if up + down > total_steps:
        raise InputError(f"rampup_steps + rampdown_steps = {up} + {down} exceed total_steps = {total_steps}: "
                         "the lr would stay near 0 for the whole run; shorten the ramps or leave them unset "
                         "to scale them to the run")
    return up, down


class MeanTeacher(Callback):
    """Mean Teacher training as in A*HAR (arXiv:2101.04859) around any ``student`` and ``optimizer``.

    Loss per batch (x, y) with y = -1 for unlabeled samples:
    ``masked_cross_entropy(student(x), y) + w(t) * softmax_mse_consistency(student(x), teacher(x))``
    with the teacher run in the student's mode (own input noise / dropout draws) and no gradient.
    Schedules per step t: u = ramp-up, d = ramp-down; lr = max_lr * u * d; Adam beta1 =
    beta1 * d + beta1_after_rampdown * (1 - d) (param groups with ``betas`` only); w = max_consistency * u.
    After each optimizer step the teacher is the EMA of the student with ``ema_decay``.

    The schedule follows the run: ``rampup_steps`` / ``rampdown_steps`` default to the reference's
    10,000 / 6,250 of 37,500 steps scaled to ``total_steps`` (an explicit pair longer than the run is
    refused), and ``max_lr`` defaults to each param group's own lr (``initial_lr`` if set, else ``lr``).
    Use ``step(x, y)`` directly, or ``train(model, data, optimizer, epochs, loss_fn=mt.loss_fn,
    callbacks=[mt])`` from ``honed.core.loop``. Evaluate ``mt.teacher``.
    """

    def __init__(self, student: nn.Module, optimizer: torch.optim.Optimizer, *, total_steps: int,
                 ema_decay: float = 0.999, max_consistency: float = 100.0, rampup_steps: int | None = None,
                 rampdown_steps: int | None = None, max_lr: float | None = None, beta1: float = 0.9,
                 beta1_after_rampdown: float = 0.5, ignore_index: int = IGNORE) -> None:
        check_count(total_steps, "total_steps")
        rampup_steps, rampdown_steps = _ramp_lengths(total_steps, rampup_steps, rampdown_steps)
        check_number(max_consistency, "max_consistency")
        if max_lr is not None:
            check_number(max_lr, "max_lr", strict=True)
        if not 0.0 <= ema_decay <= 1.0:
            raise InputError(f"ema_decay must lie in [0, 1], got {ema_decay}")
        if ema_decay < 1.0 and 1.0 / (1.0 - ema_decay) > total_steps:
            warnings.warn(f"ema_decay={ema_decay} averages the teacher over ~{1.0 / (1.0 - ema_decay):.0f} steps, "
                          f"more than total_steps={total_steps}: the teacher will lag the student (the card's "
                          "0.999 is for 37,500 steps)", stacklevel=2)
        self.student, self.optimizer = student, optimizer
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.total_steps, self.ema_decay, self.max_consistency = total_steps, ema_decay, max_consistency
        self.rampup_steps, self.rampdown_steps, self.max_lr = rampup_steps, rampdown_steps, max_lr
        self.base_lrs = [float(max_lr if max_lr is not None else g.setdefault("initial_lr", g["lr"]))
                         for g in optimizer.param_groups]
        self.beta1, self.beta1_after_rampdown, self.ignore_index = beta1, beta1_after_rampdown, ignore_index
        self.steps = 0
        self._teacher_logits: torch.Tensor | None = None
        self.last: dict[str, float] = {}

    def schedule(self, step: int) -> dict[str, float]:
        """lr (of the first param group), Adam beta1 and consistency weight at optimizer step ``step``."""
        factor = self.lr_factor(step)
        down = sigmoid_rampdown(step, self.total_steps, self.rampdown_steps)
        return {"lr": self.base_lrs[0] * factor,
                "beta1": self.beta1 * down + self.beta1_after_rampdown * (1 - down),
                "consistency_weight": self.max_consistency * sigmoid_rampup(step, self.rampup_steps)}

    def lr_factor(self, step: int) -> float:
        """u(t) * d(t): the fraction of each group's maximum lr used at optimizer step ``step``."""
        return sigmoid_rampup(step, self.rampup_steps) * sigmoid_rampdown(step, self.total_steps,
                                                                        self.rampdown_steps)

    def _apply_schedule(self) -> None:
        sched, factor = self.schedule(self.steps), self.lr_factor(self.steps)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
            if "betas" in group:
                group["betas"] = (sched["beta1"], group["betas"][1])
        self.last = dict(sched)

    @torch.no_grad()
    def _run_teacher(self, x: torch.Tensor) -> None:
        self.teacher.train(self.student.training)
        self._teacher_logits = self.teacher(x)

    def loss_fn(self, student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CE on labeled samples / B + w(t) * consistency with the teacher logits of the same batch
        (computed by ``on_batch_start`` or ``step``)."""
        if self._teacher_logits is None:
            raise InputError("no teacher output for this batch: use step() or pass the MeanTeacher as a callback")
        ce = masked_cross_entropy(student_logits, targets, self.ignore_index)
        cons = softmax_mse_consistency(student_logits, self._teacher_logits)
        self.last.update(class_cost=float(ce.detach()), consistency_cost=float(cons.detach()))
        return ce + self.last.get("consistency_weight", self.schedule(self.steps)["consistency_weight"]) * cons

    def step(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """One training step on batch ``x`` (B, ...) with ``targets`` (B,) (-1 = unlabeled); returns
        the step's schedule values and costs."""
        self._apply_schedule()
        self.optimizer.zero_grad(set_to_none=True)
        self._run_teacher(x)
        loss = self.loss_fn(self.student(x), targets)
        loss.backward()
        self.optimizer.step()
        self._finish_step()
        return {**self.last, "loss": float(loss.detach())}

    def _finish_step(self) -> None:
        ema_update(self.teacher, self.student, self.ema_decay)
        self._teacher_logits = None
        self.steps += 1

    # honed.core.loop callback hooks
    def on_step_start(self, state: TrainState) -> None:
        self._apply_schedule()

    def on_batch_start(self, state: TrainState) -> None:
        self._run_teacher(state.x)

    def after_step(self, state: TrainState) -> None:
        self._finish_step()


def balanced_labeled_indices(labels: torch.Tensor, n_labeled: int, num_classes: int,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """A*HAR (arXiv:2101.04859) labeled subset: exactly ``n_labeled / num_classes`` random indices of
    each class of ``labels`` (N,) ints in [0, K). InputError if n is not a multiple of K or a class has
    too few samples. Returns sorted (n_labeled,) int64 indices."""
    check_count(n_labeled, "n_labeled")
    if labels.dim() != 1 or ((labels < 0) | (labels >= num_classes)).any():
        raise InputError(f"labels must be a 1-d tensor of ints in [0, {num_classes})")
    if n_labeled % num_classes:
        raise InputError(f"n_labeled={n_labeled} is not a multiple of num_classes={num_classes}")
    per_class, chosen = n_labeled // num_classes, []
    for k in range(num_classes):
        idx = torch.nonzero(labels == k).flatten()
        if len(idx) < per_class:
            raise InputError(f"class {k} has {len(idx)} samples, fewer than {per_class} labeled per class")
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def semi_supervised_targets(labels: torch.Tensor, labeled: torch.Tensor,
                            append_labeled_copies: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A*HAR (arXiv:2101.04859) training pool: (indices, targets) over the N training windows where
    targets = labels at ``labeled`` indices and -1 elsewhere; with ``append_labeled_copies`` the
    labeled windows are appended once more as unlabeled (-1). Shapes (N [+ n_labeled],)."""
    targets = torch.full_like(labels, IGNORE)
    targets[labeled] = labels[labeled]
    indices = torch.arange(len(labels), device=labels.device)
    if append_labeled_copies:
        indices = torch.cat([indices, labeled])
        targets = torch.cat([targets, torch.full_like(labeled, IGNORE)])
    return indices, targets


class RandomBatches:
    """A*HAR (arXiv:2101.04859) "vary" minibatches: ``steps`` batches of ``batch_size`` drawn without
    replacement from a reshuffled pool (reshuffled when exhausted), each (x[indices], targets).
    x: (N, ...) tensor; indices, targets: (P,) from :func:`semi_supervised_targets` (or labeled only).
    Iterable with ``len`` = steps, so it also feeds ``honed.core.loop.train`` for one epoch."""

    def __init__(self, x: torch.Tensor, indices: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 steps: int, seed: int = 0) -> None:
        check_count(batch_size, "batch_size")
        check_count(steps, "steps")
        if indices.shape != targets.shape or indices.dim() != 1 or len(indices) == 0:
            raise InputError("indices and targets must be equal-length non-empty 1-d tensors")
        self.x, self.indices, self.targets = x, indices, targets
        self.batch_size, self.steps, self.seed = batch_size, steps, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Any:
        stream = _ReshuffledStream(len(self.indices), torch.Generator().manual_seed(self.seed))
        for _ in range(self.steps):
            sel = stream.take(self.batch_size)
            yield self.x[self.indices[sel]], self.targets[sel]


class _ReshuffledStream:
    """Positions 0..n-1 in a random order, reshuffled each time the order is used up."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.gen = n, generator
        self.order, self.pos = torch.randperm(n, generator=generator), 0

    def take(self, count: int) -> torch.Tensor:
        picks = []
        while count > 0:
            if self.pos >= self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            chunk = self.order[self.pos:self.pos + count]
            picks.append(chunk)
            self.pos, count = self.pos + len(chunk), count - len(chunk)
        return torch.cat(picks)


class TwoStreamBatches:
    """Mean Teacher's two-stream minibatches (Tarvainen & Valpola, arXiv:1703.01780; the A*HAR baseline,
    arXiv:2101.04859, uses the random "vary" mix of :class:`RandomBatches` instead).

    Every one of ``steps`` batches holds exactly ``labeled_per_batch`` labeled windows, drawn from a
    reshuffled pass over ``labeled_indices`` (so all labeled windows appear once before any repeats),
    followed by ``batch_size - labeled_per_batch`` unlabeled windows (target -1) from a reshuffled pass
    over ``unlabeled_indices``. x: (N, ...); labeled_indices, labeled_targets: (L,) with targets in
    [0, K); unlabeled_indices: (U,) (may be empty only when labeled_per_batch == batch_size). Yields
    (x[batch], targets) with targets (batch_size,); deterministic for a given ``seed``.
    """

    def __init__(self, x: torch.Tensor, labeled_indices: torch.Tensor, labeled_targets: torch.Tensor,
                 unlabeled_indices: torch.Tensor, batch_size: int, labeled_per_batch: int, steps: int,
                 seed: int = 0) -> None:
        check_count(batch_size, "batch_size")
        check_count(steps, "steps")
        check_count(labeled_per_batch, "labeled_per_batch")
        if labeled_per_batch > batch_size:
            raise InputError(f"labeled_per_batch={labeled_per_batch} exceeds batch_size={batch_size}")
        if labeled_indices.dim() != 1 or labeled_indices.shape != labeled_targets.shape or not len(labeled_indices):
            raise InputError("labeled_indices and labeled_targets must be equal-length non-empty 1-d tensors")
        if (labeled_targets < 0).any():
            raise InputError("labeled_targets must be class ids >= 0")
        if unlabeled_indices.dim() != 1 or (labeled_per_batch < batch_size and not len(unlabeled_indices)):
            raise InputError("unlabeled_indices must be a non-empty 1-d tensor when batches hold unlabeled windows")
        self.x, self.labeled_indices, self.labeled_targets = x, labeled_indices, labeled_targets
        self.unlabeled_indices, self.batch_size, self.steps = unlabeled_indices, batch_size, steps
        self.labeled_per_batch, self.seed = labeled_per_batch, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Any:
        gen = torch.Generator().manual_seed(self.seed)
        lab = _ReshuffledStream(len(self.labeled_indices), gen)
        unl = _ReshuffledStream(max(len(self.unlabeled_indices), 1), gen)
        n_unl = self.batch_size - self.labeled_per_batch
        for _ in range(self.steps):
            lsel = lab.take(self.labeled_per_batch)
            usel = self.unlabeled_indices[unl.take(n_unl)] if n_unl else self.unlabeled_indices[:0]
            idx = torch.cat([self.labeled_indices[lsel], usel])
            targets = torch.cat([self.labeled_targets[lsel],
                                 torch.full((n_unl,), IGNORE, dtype=self.labeled_targets.dtype,
                                            device=self.labeled_targets.device)])
            yield self.x[idx], targets
