"""Training loops of MVStylizer (MVStylizer, arXiv:2005.11630): fitting a stylizer to a target, the
meta-smoothing upscaler on (stylised downscaled frame -> full-resolution stylised frame) pairs with r
drawn from U[1, 4], and federated retraining of edge stylizers (FedAvg over edges, weighted by their
frame counts) next to local-only retraining.

Frames are (N, 3, H, W) float RGB in [0, 1]; every loop draws its crops from a ``torch.Generator`` so a
seed fixes the run, and works on the device of the model it trains.
"""
import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count, check_number
from honed.core.progress import progress_bar
from honed.vision.meta_upscale import MetaUpscaler
from honed.vision.mvstylizer import fedavg_modules


def _check_frames(frames: torch.Tensor, name: str, crop: int) -> None:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3 or len(frames) == 0:
        raise InputError(f"{name} must be RGB frames (N, 3, H, W) with N >= 1, got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    if min(frames.shape[-2:]) < crop:
        raise InputError(f"{name} of {tuple(frames.shape[-2:])} px are smaller than the crop ({crop} px)")
    if not frames.is_floating_point() or not torch.isfinite(frames).all():
        raise InputError(f"{name} must hold finite floats in [0, 1]")


def random_crops(gen: torch.Generator, crop: int, count: int, *stacks: torch.Tensor) -> list[torch.Tensor]:
    """``count`` aligned random ``crop`` x ``crop`` windows from each of ``stacks`` (same N, H, W)."""
    n, height, width = stacks[0].shape[0], *stacks[0].shape[-2:]
    pick = torch.randint(n, (count,), generator=gen).tolist()
    top = torch.randint(height - crop + 1, (count,), generator=gen).tolist()
    left = torch.randint(width - crop + 1, (count,), generator=gen).tolist()
    return [torch.stack([s[i, :, y:y + crop, x:x + crop] for i, y, x in zip(pick, top, left)]) for s in stacks]


def fit_stylizer(model: nn.Module, frames: torch.Tensor, targets: torch.Tensor, steps: int, gen: torch.Generator,
                 batch: int = 8, crop: int = 48, lr: float = 1e-3,
                 optimizer: torch.optim.Optimizer | None = None) -> list[float]:
    """Fit ``model`` (N, 3, h, w) -> (N, 3, h, w) to ``targets`` (the per-frame reference output of
    ``frames``) with an L1 loss on random aligned crops, Adam(``lr``) unless ``optimizer`` is given.
    Returns the loss of every step."""
    _check_frames(frames, "frames", crop)
    if targets.shape != frames.shape:
        raise InputError(f"targets {tuple(targets.shape)} must match frames {tuple(frames.shape)}")
    check_count(steps, "steps", minimum=0)
    device = next(model.parameters()).device

    def next_batch() -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
        x, y = (c.to(device) for c in random_crops(gen, crop, batch, frames, targets))
        return (lambda: model(x)), y

    return _fit_l1(model, optimizer or torch.optim.Adam(model.parameters(), lr=lr), steps,
                   "fit to stylised targets", next_batch)


def _fit_l1(module: nn.Module, opt: torch.optim.Optimizer, steps: int, label: str,
            next_batch: Callable[[], tuple[Callable[[], torch.Tensor], torch.Tensor]]) -> list[float]:
    """``steps`` optimiser steps of the L1 loss between ``predict()`` and ``target`` from ``next_batch()``,
    ``module`` in training mode (set after each batch is drawn, which may run other models) and with
    gradients on even under a caller's ``no_grad``; a progress bar; ``module`` left in eval mode.
    Returns the loss of every step."""
    losses = []
    with progress_bar(steps, label) as bar:
        for _ in range(steps):
            predict, target = next_batch()
            module.train()
            with torch.enable_grad():
                loss = F.l1_loss(predict(), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.advance()
    module.eval()
    return losses


def meta_training_pair(stylizer: Callable, crops: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(stylised low-res input, full-resolution stylised target, exact scale) for ``crops`` (N, 3, c, c):
    the crops are area-downsampled to round(c / scale) px, the exact scale is c / that size."""
    size = crops.shape[-1]
    low_size = max(2, round(size / scale))
    low = F.interpolate(crops, size=(low_size, low_size), mode="area")
    with torch.no_grad():
        return stylizer(low), stylizer(crops), size / low_size


def train_meta_upscaler(upscaler: MetaUpscaler, stylizer: Callable, frames: torch.Tensor, steps: int,
                        gen: torch.Generator, batch: int = 8, crop: int = 48,
                        scale_range: tuple[float, float] = (1.0, 4.0), lr: float = 1e-3) -> list[float]:
    """Card step 3 (MVStylizer arXiv:2005.11630): train the meta-smoothing upscaler with L1 between
    ``upscaler(stylizer(downscaled crop), r)`` and ``stylizer(crop)``, r ~ U(``scale_range``) per step
    (the low-res size is rounded, so the exact r = crop / low size). Returns the per-step losses."""
    _check_frames(frames, "frames", crop)
    check_count(steps, "steps", minimum=0)
    lo, hi = scale_range
    if not 1 <= lo <= hi:
        raise InputError(f"scale_range must satisfy 1 <= low <= high, got {scale_range}")
    device = next(upscaler.parameters()).device

    def next_batch() -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
        r = lo + (hi - lo) * float(torch.rand((), generator=gen))
        (crops,) = random_crops(gen, crop, batch, frames)
        crops = crops.to(device)
        low_styled, target, exact = meta_training_pair(stylizer, crops, r)
        guide = F.interpolate(crops, size=low_styled.shape[-2:], mode="area") if upscaler.guide_channels else None
        return (lambda: upscaler(low_styled, exact, guide=guide)), target

    return _fit_l1(upscaler, torch.optim.Adam(upscaler.parameters(), lr=lr), steps, "meta-train the upscaler",
                   next_batch)


@dataclass(frozen=True)
class Edge:
    """One edge server's retraining data: frames (N, 3, H, W) collected from its clients and the
    reference targets of the new style (no labels: the expensive reference pipeline's output)."""

    frames: torch.Tensor
    targets: torch.Tensor

    @property
    def count(self) -> int:
        return len(self.frames)


def federated_retrain(model: nn.Module, edges: Sequence[Edge], rounds: int, local_steps: int, gen: torch.Generator,
                      batch: int = 8, crop: int = 48, lr: float = 1e-3,
                      on_round: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Card step 5 (MVStylizer arXiv:2005.11630): every round each edge copies the global model,
    fine-tunes it for ``local_steps`` on its own data (fresh Adam), and the cloud replaces the global
    weights with FedAvg (weighted by each edge's frame count). Returns a new model; ``model`` is left
    unchanged. ``on_round(r, global_model)`` runs after each round."""
    if not edges:
        raise InputError("federated_retrain needs at least one edge")
    check_count(rounds, "rounds")
    check_count(local_steps, "local_steps")
    check_number(lr, "lr", strict=True)
    for i, edge in enumerate(edges):
        _check_frames(edge.frames, f"edge {i} frames", crop)
    global_model = copy.deepcopy(model)
    for r in range(rounds):
        locals_ = []
        for edge in edges:
            local = copy.deepcopy(global_model)
            fit_stylizer(local, edge.frames, edge.targets, local_steps, gen, batch, crop, lr)
            locals_.append(local)
        global_model.load_state_dict(fedavg_modules(locals_, [e.count for e in edges]))
        if on_round is not None:
            on_round(r, global_model)
    return global_model.eval()
