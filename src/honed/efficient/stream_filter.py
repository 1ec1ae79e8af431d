"""Multistage streaming data filtering for fine-tuning (Ouyang et al., "Efficient NLP Model Finetuning
via Multistage Data Filtering", IJCAI 2023, arXiv:2207.14386).

:class:`StreamFilter` wraps a user's training step. Each incoming minibatch (inputs, targets, phi)
passes through the current stage:

* stage 0 - ordinary training; per-example losses feed a window of the last ``threshold_window``
  losses whose mean is the threshold tau (frozen when stage 0 ends, never re-estimated);
* stage 1 - score the batch without grad; a Bernoulli naive Bayes meta predictor (sklearn
  ``BernoulliNB.partial_fit``) learns y = 1[loss > tau] from binary features phi; examples with
  loss >= tau enter a staging buffer that emits full batches for backward; the rest skip backward.
  Moves to stage 2 when the predictor's cross-entropy averaged over the last ``predictor_window``
  batches is <= ``predictor_loss_threshold``;
* stage 2 - per example, the predictor decides from phi alone: predicted 0 skips forward and
  backward; predicted 1 is forwarded alone (eval mode by default, as the reference code), the
  predictor is updated with its true target, and it is back-propagated (batch size 1) if loss > tau.

Inputs: ``inputs`` a tensor (B, ...) or a dict of tensors with leading dim B, ``targets`` (B,),
``phi`` a {0, 1} array (B, F). ``per_example_loss(model, inputs, targets) -> (B,)`` is the user's loss.
The LR scheduler, if given, is stepped per optimizer step (so in stage 2 its horizon no longer matches
the number of examples, as in the reference; documented, not corrected).

Refusals (one :class:`InputError`, before any optimizer step on the offending batch): an empty batch, a
loss that is not one value per example (a batch-mean scalar cannot be compared with tau), and a NaN or
infinite loss. A refused batch leaves the model's buffers (e.g. BatchNorm running statistics) and the
counters as they were; in stage 2 the examples before the offending one have already been processed.

The method is for fine-tuning a warm model: tau is frozen at the end of stage 0. Trained from scratch
(or with too short a stage 0), tau is the loss of a barely trained model, the losses soon all fall below
it and back-propagation stops. :meth:`end_epoch` warns when an epoch back-propagated fewer than
``min_backward_share`` of its examples while its losses still sit near tau, naming tau and the losses.
"""
import math
import warnings
from collections import deque
from typing import Any, Callable

import numpy as np
import torch

from honed.core.errors import InputError, check_number

Inputs = torch.Tensor | dict[str, torch.Tensor]


def take(inputs: Inputs, index: torch.Tensor | list[int]) -> Inputs:
    """Rows ``index`` of a tensor or of every tensor in a dict."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def concat(parts: list[Inputs]) -> Inputs:
    """Concatenate tensors, or dicts of tensors key by key, along the batch dimension."""
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def batch_len(inputs: Inputs) -> int:
    """Batch size of a tensor or of a dict of tensors."""
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


class StreamFilter:
    """Three-stage filter (arXiv:2207.14386) around ``model`` / ``optimizer``; see the module doc.

    Counters: ``seen`` examples, ``forward_examples`` (every example forward, counting the second
    forward of staged stage-1 examples), ``forward_skipped`` (never forwarded), ``backward_examples``,
    ``backward_skipped``, ``buffer_dropped`` (left in the buffer when stage 2 starts).
    Invariant: seen == backward_examples + backward_skipped + buffer_dropped + len(buffer).
    ``max_stage=1`` gives the threshold-only baseline (stages 0-1). ``min_backward_share`` (0.05;
    0 disables): :meth:`end_epoch` warns when the epoch back-propagated a smaller share of the
    examples it saw - twenty times fewer than full training, four times beyond the paper's largest
    reported reduction (5.3x) - while the latest forwarded losses still sit near tau (median >= 3/4
    tau): the signature of a tau frozen too early. A model whose losses fell well below
    tau has learned past it, and skipping most of its examples is the method working.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 per_example_loss: Callable[[torch.nn.Module, Inputs, torch.Tensor], torch.Tensor],
                 batch_size: int, warmup_steps: int, predictor_loss_threshold: float,
                 predictor_window: int = 8, threshold_window: int = 128, scheduler: Any = None,
                 max_stage: int = 2, stage2_eval_mode: bool = True, stage2_update_predictor: bool = True,
                 on_no_stage2: str = "warn", min_backward_share: float = 0.05):
        if batch_size < 1 or warmup_steps < 1 or predictor_window < 1 or threshold_window < 1:
            raise InputError("batch_size, warmup_steps, predictor_window and threshold_window must be >= 1")
        if not predictor_loss_threshold > 0 or max_stage not in (1, 2) or on_no_stage2 not in ("warn", "error"):
            raise InputError("need predictor_loss_threshold > 0, max_stage in {1, 2}, on_no_stage2 in {warn, error}")
        if not 0 <= check_number(min_backward_share, "min_backward_share") <= 1:
            raise InputError(f"min_backward_share must lie in [0, 1], got {min_backward_share!r}")
        from sklearn.naive_bayes import BernoulliNB

        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.per_example_loss = per_example_loss
        self.batch_size, self.warmup_steps = batch_size, warmup_steps
        self.predictor_loss_threshold, self.max_stage = predictor_loss_threshold, max_stage
        self.stage2_eval_mode, self.stage2_update_predictor = stage2_eval_mode, stage2_update_predictor
        self.on_no_stage2, self.min_backward_share = on_no_stage2, float(min_backward_share)
        self.predictor = BernoulliNB()
        self.loss_history: deque[float] = deque(maxlen=threshold_window)
        self.predictor_losses: deque[float] = deque(maxlen=predictor_window)
        self.buffer: list[tuple[Inputs, torch.Tensor]] = []
        self.stage, self.steps, self.tau = 0, 0, math.nan
        self.predictor_fitted = False
        self.seen = self.forward_examples = self.forward_skipped = 0
        self.backward_examples = self.backward_skipped = self.buffer_dropped = 0
        self.epoch_start: dict[str, int] = {}
        self.recent_losses: deque[float] = deque(maxlen=threshold_window)  # the latest forwarded losses

    def counters(self) -> dict[str, int | float]:
        return {"seen": self.seen, "forward_examples": self.forward_examples,
                "forward_skipped": self.forward_skipped, "backward_examples": self.backward_examples,
                "backward_skipped": self.backward_skipped, "buffer_dropped": self.buffer_dropped,
                "buffered": sum(batch_len(x) for x, _ in self.buffer), "stage": self.stage, "tau": self.tau}

    # --- training primitives -------------------------------------------------------------------
    def losses_of(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        """``per_example_loss`` on the batch, checked: one finite loss per example, shape (B,)."""
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        losses = self.per_example_loss(self.model, inputs, targets)
        try:
            return check_losses(losses, len(targets))
        except InputError:  # a refused forward leaves e.g. BatchNorm running statistics as they were
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            raise

    def backward_step(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        """Forward with grad, mean loss backward, optimizer (and scheduler) step; returns losses."""
        losses = self.losses_of(inputs, targets)
        if not losses.requires_grad:
            raise InputError("per_example_loss returned losses without a graph to the model's parameters "
                             "(computed under torch.no_grad() or detached?): nothing to back-propagate")
        self.optimizer_step(losses.mean())
        n = len(targets)
        self.forward_examples += n
        self.backward_examples += n
        return losses.detach()

    def optimizer_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def fit_predictor(self, phi: np.ndarray, labels: np.ndarray) -> float:
        """partial_fit on (phi, labels); returns the cross-entropy on that batch after the update."""
        self.predictor.partial_fit(phi, labels, classes=np.array([0, 1]))
        self.predictor_fitted = True
        proba = self.predictor.predict_proba(phi)[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.clip(proba, 1e-12, None))))

    # --- stages --------------------------------------------------------------------------------
    def step(self, inputs: Inputs, targets: torch.Tensor, phi: np.ndarray) -> None:
        """Process one incoming minibatch according to the current stage (see the module doc for
        what is refused)."""
        phi = check_batch(inputs, targets, phi)
        if self.stage == 0:
            self.stage0(inputs, targets)
        elif self.stage == 1:
            self.stage1(inputs, targets, phi)
        else:
            self.stage2(inputs, targets, phi)
        self.steps += 1

    def stage0(self, inputs: Inputs, targets: torch.Tensor) -> None:
        losses = self.backward_step(inputs, targets)
        self.seen += len(targets)
        self.loss_history.extend(losses.tolist())
        self.recent_losses.extend(losses.tolist())
        self.tau = float(np.mean(self.loss_history))
        if self.steps + 1 >= self.warmup_steps:
            self.stage = 1  # tau frozen from here on

    def stage1(self, inputs: Inputs, targets: torch.Tensor, phi: np.ndarray) -> None:
        with torch.no_grad():
            losses = self.losses_of(inputs, targets)
        self.seen += len(targets)
        self.forward_examples += len(targets)
        self.recent_losses.extend(losses.tolist())
        labels = (losses > self.tau).long().numpy(force=True)
        self.predictor_losses.append(self.fit_predictor(phi, labels))
        keep = torch.nonzero(losses >= self.tau).flatten().cpu()
        self.backward_skipped += len(targets) - len(keep)
        if len(keep):
            self.buffer.append((take(inputs, keep.to(targets.device)), targets[keep.to(targets.device)]))
        while sum(len(t) for _, t in self.buffer) >= self.batch_size:
            self.backward_step(*self.pop_batch())
        window_full = len(self.predictor_losses) == self.predictor_losses.maxlen
        if (self.max_stage == 2 and window_full
                and float(np.mean(self.predictor_losses)) <= self.predictor_loss_threshold):
            self.enter_stage2()

    def pop_batch(self) -> tuple[Inputs, torch.Tensor]:
        """Exactly ``batch_size`` examples from the front of the staging buffer."""
        xs = concat([x for x, _ in self.buffer])
        ys = torch.cat([y for _, y in self.buffer])
        head = torch.arange(self.batch_size, device=ys.device)
        rest = torch.arange(self.batch_size, len(ys), device=ys.device)
        self.buffer = [(take(xs, rest), ys[rest])] if len(rest) else []
        return take(xs, head), ys[head]

    def enter_stage2(self) -> None:
        self.buffer_dropped += sum(len(t) for _, t in self.buffer)
        self.buffer = []
        self.stage = 2

    def stage2(self, inputs: Inputs, targets: torch.Tensor, phi: np.ndarray) -> None:
        for i in range(len(targets)):
            if self.predictor.predict(phi[i:i + 1])[0] == 0:
                self.seen += 1
                self.forward_skipped += 1
                self.backward_skipped += 1
                continue
            self.stage2_example(take(inputs, [i]), targets[i:i + 1], phi[i:i + 1])

    def stage2_example(self, inputs: Inputs, target: torch.Tensor, phi: np.ndarray) -> None:
        was_training = [(m, m.training) for m in self.model.modules()]
        self.model.train(not self.stage2_eval_mode)
        try:
            loss = self.losses_of(inputs, target)
            self.seen += 1
            self.forward_examples += 1
            self.recent_losses.append(float(loss.detach()))
            label = int(loss.item() > self.tau)
            if self.stage2_update_predictor:
                self.fit_predictor(phi, np.array([label]))
            if label:
                self.optimizer_step(loss.mean())
                self.backward_examples += 1
            else:
                self.backward_skipped += 1
        finally:
            for module, training in was_training:
                module.training = training

    def end_epoch(self) -> None:
        """Call after each epoch: the second epoch always runs stage 2 (if ``max_stage`` is 2).
        Stage 2 never reached in the first epoch warns (or raises, ``on_no_stage2="error"``). An
        epoch that back-propagated fewer than ``min_backward_share`` of its examples warns."""
        self.warn_if_stalled()
        if self.max_stage == 2 and self.stage < 2:
            message = "stream filter: stage 2 was not reached in this epoch; forcing it for the next"
            if self.on_no_stage2 == "error":
                raise RuntimeError(message)
            warnings.warn(message, stacklevel=2)
            if self.stage == 1 and self.predictor_fitted:
                self.enter_stage2()

    def warn_if_stalled(self) -> None:
        """Warn when this epoch back-propagated fewer than ``min_backward_share`` of its examples while
        the latest forwarded losses (up to ``threshold_window``, from earlier epochs if this one forwarded
        none) sit near tau (median >= NEAR_TAU * tau); losses well below tau mean the model has learned
        past it, and skipping is then the method working."""
        now = {"seen": self.seen, "backward_examples": self.backward_examples, "forward_skipped": self.forward_skipped}
        seen, backward, skipped = (now[k] - self.epoch_start.get(k, 0) for k in now)
        self.epoch_start = now
        median = float(np.median(self.recent_losses)) if self.recent_losses else math.nan
        if not seen or backward >= self.min_backward_share * seen or not median >= NEAR_TAU * self.tau:
            return
        warnings.warn(
            f"stream filter: only {backward} of the {seen} examples of this epoch were back-propagated ({skipped} "
            f"skipped by the predictor without a forward); the last {len(self.recent_losses)} forwarded losses have "
            f"median {median:.4g}, {sum(v > self.tau for v in self.recent_losses)} above tau = {self.tau:.4g}. The "
            f"losses have not fallen well below tau, which was frozen at the end of stage 0 (step {self.warmup_steps}) "
            "from a model still learning, so the filter has stopped training it: StreamFilter fine-tunes a warm "
            "model; warm-start it or lengthen stage 0 (warmup_steps)", stacklevel=3)


NEAR_TAU = 0.75  # latest forwarded losses' median >= 3/4 tau: the model has not learned past tau
COUNTERS = ("seen", "forward_examples", "forward_skipped", "backward_examples", "backward_skipped",
            "buffer_dropped", "steps", "stage", "tau")


def check_batch(inputs: Inputs, targets: torch.Tensor, phi: np.ndarray) -> np.ndarray:
    """Return ``phi`` as an array or raise InputError for an empty batch or mismatched shapes."""
    if not isinstance(targets, torch.Tensor) or targets.dim() < 1:
        raise InputError(f"targets must be a tensor with a batch dimension, got {getattr(targets, 'shape', targets)!r}")
    if not isinstance(inputs, (torch.Tensor, dict)):
        raise InputError(f"inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}")
    phi = np.asarray(phi)
    if phi.ndim != 2 or len(phi) != len(targets) or batch_len(inputs) != len(targets):
        raise InputError(f"phi must be (B, F) and inputs/targets share B; got phi {phi.shape}, "
                         f"targets {tuple(targets.shape)}, inputs of batch size {batch_len(inputs)}")
    if len(targets) == 0:
        raise InputError("the batch is empty: StreamFilter.step needs at least one example")
    if not np.isin(phi, (0, 1)).all():
        raise InputError("phi must hold binary {0, 1} features")
    return phi


def check_losses(losses: Any, n: int) -> torch.Tensor:
    """``losses`` as a (n,) tensor, or InputError: not a tensor, not one loss per example, not finite."""
    if not isinstance(losses, torch.Tensor):
        raise InputError(f"per_example_loss must return a tensor of shape ({n},), got {type(losses).__name__}")
    if losses.dim() == 0 and n == 1:
        losses = losses.reshape(1)
    if losses.shape != (n,):
        raise InputError(f"per_example_loss must return one loss per example, shape ({n},), got "
                         f"{tuple(losses.shape)}: StreamFilter compares each example's loss with tau (use e.g. "
                         "F.cross_entropy(..., reduction='none'))")
    if not bool(torch.isfinite(losses.detach()).all()):
        raise InputError(f"per_example_loss returned NaN or inf for {int((~torch.isfinite(losses.detach())).sum())} "
                         f"of {n} examples; refused before any optimizer step on this batch")
    return losses
