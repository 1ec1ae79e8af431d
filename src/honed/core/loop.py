"""One small train loop with callbacks at fixed points (open_lth style).

Per optimizer step the loop does::

    on_step_start
    for each ghost chunk of the batch (one chunk unless ghost_size is set):
        on_batch_start -> forward -> loss * chunk/batch -> backward -> after_backward
    before_step -> optimizer.step() -> after_step
    ... and on_epoch_end after each epoch (after evaluation, so callbacks see the metrics).

Methods that change the step (SmoothOut, gradient clipping, stream filters) are callbacks, not forks
of this loop. With ``ghost_size`` the batch is split into chunks that each run their own forward, so
BatchNorm statistics are per chunk (ghost BN, Hoffer et al. 2017) and gradients are the batch mean.
"""
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from honed.core import rng_state
from honed.core.checkpoint import load_training_checkpoint, save_checkpoint
from honed.core.errors import CorruptFileError
from honed.core.modes import eval_mode
from honed.core.runtime_ledger import note_restored_seconds
from honed.core.progress import progress_bar

HOOKS = ("on_train_start", "on_step_start", "on_batch_start", "after_backward", "before_step",
         "after_step", "on_epoch_end", "on_train_end")


class Callback:
    """Override any of the hooks; each receives the live :class:`TrainState`."""

    def on_train_start(self, state: "TrainState") -> None: ...
    def on_step_start(self, state: "TrainState") -> None: ...
    def on_batch_start(self, state: "TrainState") -> None: ...
    def after_backward(self, state: "TrainState") -> None: ...
    def before_step(self, state: "TrainState") -> None: ...
    def after_step(self, state: "TrainState") -> None: ...
    def on_epoch_end(self, state: "TrainState") -> None: ...
    def on_train_end(self, state: "TrainState") -> None: ...


@dataclass
class TrainState:
    """What callbacks can read and change. ``x``/``y`` hold the current chunk, ``loss`` its loss."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    x: Any = None
    y: Any = None
    loss: torch.Tensor | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    stop: bool = False

    def log(self, key: str, value: float) -> None:
        self.history.setdefault(key, []).append(float(value))


class ClipGradNorm(Callback):
    """Clip the global gradient norm before the optimizer step (``torch.nn.utils.clip_grad_norm_``)."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def before_step(self, state: TrainState) -> None:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), self.max_norm)


class CosineLR(Callback):
    """Cosine learning-rate decay to 0 over all steps of one ``train`` call: the lr of each param
    group is ``base * (1 + cos(pi * step / total_steps)) / 2``, set before each step. The base lr is
    kept in the param group as ``initial_lr`` (torch's scheduler convention), so it survives a
    checkpoint and a resumed run decays from the original lr, not from the decayed one."""

    def on_train_start(self, state: TrainState) -> None:
        self.base = [g.setdefault("initial_lr", g["lr"]) for g in state.optimizer.param_groups]

    def on_step_start(self, state: TrainState) -> None:
        frac = state.step / max(state.total_steps, 1)
        for group, base in zip(state.optimizer.param_groups, self.base):
            group["lr"] = base * 0.5 * (1 + math.cos(math.pi * frac))


def _dispatch(callbacks: Iterable[Callback]) -> dict[str, list[Callable]]:
    """Bound methods per hook, only for callbacks that override it (keeps the hot path empty)."""
    table: dict[str, list[Callable]] = {h: [] for h in HOOKS}
    for cb in callbacks:
        for hook in HOOKS:
            if getattr(type(cb), hook, None) is not getattr(Callback, hook):
                table[hook].append(getattr(cb, hook))
    return table


def train_step(state: TrainState, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
               hooks: dict[str, list[Callable]], ghost_size: int | None = None) -> torch.Tensor:
    """One optimizer step on batch (x, y); returns the batch's mean loss as a detached tensor
    (kept as a tensor so the hot path does not synchronise on ``.item()`` every step)."""
    optimizer = state.optimizer
    for fn in hooks["on_step_start"]:
        fn(state)
    optimizer.zero_grad(set_to_none=True)
    if not ghost_size or ghost_size >= x.shape[0]:
        batch_loss = _chunk_step(state, x, y, loss_fn, hooks, None)
    else:
        batch_loss = _ghost_steps(state, x, y, loss_fn, hooks, ghost_size)
    for fn in hooks["before_step"]:
        fn(state)
    optimizer.step()
    state.step += 1
    for fn in hooks["after_step"]:
        fn(state)
    return batch_loss


def _chunk_step(state: TrainState, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                hooks: dict[str, list[Callable]], weight: float | None) -> torch.Tensor:
    """Forward and backward of one chunk (the whole batch when ``weight`` is None, else its loss is
    scaled by ``weight`` = chunk / batch size before backward); returns the chunk's detached loss."""
    state.x, state.y = x, y
    for fn in hooks["on_batch_start"]:
        fn(state)
    loss = loss_fn(state.model(state.x), state.y)
    (loss if weight is None else loss * weight).backward()
    state.loss = loss
    for fn in hooks["after_backward"]:
        fn(state)
    return loss.detach()


def _ghost_steps(state: TrainState, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                 hooks: dict[str, list[Callable]], ghost_size: int) -> torch.Tensor:
    """Ghost-batch chunks of (x, y), each its own forward and backward (DDP gradient sync only on the
    last chunk); returns the batch's mean loss."""
    chunks = list(zip(x.split(ghost_size), y.split(ghost_size)))
    model, n, total = state.model, x.shape[0], 0.0
    for i, (cx, cy) in enumerate(chunks):
        sync_off = i < len(chunks) - 1 and hasattr(model, "no_sync")
        with (model.no_sync() if sync_off else _nullcontext):
            total = total + _chunk_step(state, cx, cy, loss_fn, hooks, cx.shape[0] / n) * cx.shape[0]
    return total / n


class _NullContext:
    def __enter__(self): return self
    def __exit__(self, *exc): return False


_nullcontext = _NullContext()


def train(model: torch.nn.Module, data: Iterable, optimizer: torch.optim.Optimizer, epochs: int, *,
          loss_fn: Callable = F.cross_entropy, callbacks: Iterable[Callback] = (),
          ghost_size: int | None = None, device: str | torch.device | None = None,
          evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
          checkpoint: str | Path | None = None, progress: bool = True,
          desc: str = "train") -> dict[str, list[float]]:
    """Train ``model`` for ``epochs`` over ``data`` (an iterable of (x, y) batches, re-iterated per
    epoch; ``data.set_epoch(e)`` is called when present) on ``device`` (default: the model's). Returns the
    per-epoch history (``train_loss`` plus whatever ``evaluate(model)`` returns, evaluated in eval mode).

    With ``checkpoint``, the model, optimizer, history and torch RNG are saved atomically at each
    epoch end and training resumes from that file if it exists.
    """
    device = model_device(model) if device is None else torch.device(device)
    callbacks = list(callbacks)
    hooks = _dispatch(callbacks)
    state = TrainState(model, optimizer)
    rng_roots = {"callbacks": callbacks, "data": data, "loss": loss_fn, "evaluate": evaluate}
    start, saved_rng, elapsed_before, clock = 0, None, 0.0, time.perf_counter()
    if checkpoint is not None and Path(checkpoint).exists():
        loaded = resume_checkpoint(Path(checkpoint), model, optimizer)
        if loaded is not None:
            meta, saved_rng = loaded
            start, state.step, state.history = meta["epoch"] + 1, meta["step"], meta["history"]
            elapsed_before = float(meta.get("elapsed_s", 0.0))
            note_restored_seconds(elapsed_before)
    n_batches = len(data) if hasattr(data, "__len__") else None
    state.total_steps = n_batches * epochs if n_batches else 0
    for fn in hooks["on_train_start"]:
        fn(state)
    if saved_rng is not None:  # after on_train_start, so generators continue from the saved point
        rng_state.restore(rng_roots, *saved_rng)
    with progress_bar((epochs - start) * (n_batches or 0) or None, desc, progress) as bar:
        for epoch in range(start, epochs):
            state.epoch = epoch
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            model.train()
            batch_losses: list[tuple[torch.Tensor, int]] = []
            info = f"epoch {epoch + 1}/{epochs}"
            for x, y in data:
                if x.device != device or y.device != device:  # .to() on the same device still costs a call
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                batch_losses.append((train_step(state, x, y, loss_fn, hooks, ghost_size), x.shape[0]))
                bar.advance(info=info)
                if state.stop:
                    break
            count = sum(n for _, n in batch_losses)
            state.log("train_loss", sum(float(l) * n for l, n in batch_losses) / max(count, 1))
            if evaluate is not None:
                model.eval()
                with torch.no_grad():
                    for key, value in evaluate(model).items():
                        state.log(key, value)
            for fn in hooks["on_epoch_end"]:
                fn(state)
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, optimizer,
                                {"epoch": epoch, "step": state.step, "history": state.history,
                                 "elapsed_s": elapsed_before + time.perf_counter() - clock},
                                rng=rng_state.capture(rng_roots))
            if state.stop:
                break
    for fn in hooks["on_train_end"]:
        fn(state)
    return state.history


def resume_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple | None:
    """Load ``path`` into model and optimizer and return ``(metadata, generator payload)``; a damaged file
    is named in a warning, moved aside (``.corrupt``) and None returned, so training recomputes from the
    start."""
    try:
        return load_training_checkpoint(path, model, optimizer)
    except CorruptFileError as err:
        warnings.warn(f"{err}; moved it to {path.name}.corrupt and training from the start", stacklevel=3)
        path.replace(path.with_name(path.name + ".corrupt"))
        return None


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (the CPU for a model with neither)."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        batch_size: int = 1024, device: str | torch.device | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y), computed on the model's device (``device``
    overrides); restores every submodule's train/eval mode."""
    device = model_device(model) if device is None else torch.device(device)
    correct, loss, n = 0, 0.0, len(x)
    with eval_mode(model):
        for i in range(0, n, batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb)
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1)}


@torch.no_grad()
def correct_per_example(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
                        device: str | torch.device | None = None) -> list[float]:
    """1.0 / 0.0 per example: whether ``model``'s argmax on ``x`` (N, ...) equals ``y`` (N,). Its mean is
    the accuracy; return it as an arm's metric so claims on it get a paired bootstrap interval. Runs on
    the model's device (``device`` overrides); restores every submodule's train/eval mode."""
    device = model_device(model) if device is None else torch.device(device)
    with eval_mode(model):
        hits = [(model(x[i:i + batch_size].to(device)).argmax(1) == y[i:i + batch_size].to(device)).float().cpu()
                for i in range(0, len(x), batch_size)]
    return torch.cat(hits).tolist() if hits else []


def split_accuracy(model: torch.nn.Module, split: Any, device: str | torch.device | None = None) -> float:
    """Accuracy of ``model`` on ``split`` (anything with ``.x`` inputs and ``.y`` labels, e.g. a
    ``honed.data.Split``), as :func:`evaluate_classifier` computes it."""
    return evaluate_classifier(model, split.x, split.y, device=device)["accuracy"]
