"""Victim classifiers for the robustness experiments: a small honed model trained on sklearn digits,
with its weights cached in a checkpoint so a seed folder trains it once (no paper; a shared helper).

Reused by the attack, adversarial-training and certification experiments:
``victim = train_digits_classifier("cnn", size=8, epochs=20, seed=0, checkpoint=ctx.checkpoint("victim"))``
then ``victim.model`` (eval mode, inputs (N, 1, size, size) in [0, 1]) and ``victim.data`` (the
digits splits at that size).
"""
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import evaluate_classifier, model_device, train
from honed.data import Batches, Dataset, create_dataset
from honed.models import create_model


@dataclass
class Victim:
    """A trained classifier (eval mode), the dataset it was trained on, its test accuracy and the
    per-epoch training history (train_loss, val accuracy)."""

    model: nn.Module
    data: Dataset
    test_accuracy: float
    history: dict[str, list[float]]


def default_model_kwargs(arch: str, size: int, num_classes: int = 10) -> dict:
    """Constructor arguments that fit a honed model to 1-channel size x size digits."""
    if arch == "mlp":
        return {"in_features": size * size, "num_classes": num_classes}
    return {"in_channels": 1, "num_classes": num_classes}


def train_digits_classifier(arch: str = "cnn", size: int = 8, epochs: int = 20, seed: int = 0,
                            device: str | torch.device | None = None, checkpoint: str | Path | None = None, *,
                            batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0,
                            model_kwargs: dict | None = None, progress: bool = False) -> Victim:
    """Train ``honed.models.create_model(arch)`` on digits (size 8, 16 or 32; inputs (N, 1, size, size)
    in [0, 1]) with Adam for ``epochs`` and return it in eval mode on ``device`` (torch's default device
    when None). The weights are initialised on the CPU and then moved, so one seed gives one network
    on every device.

    Initialisation and batch order depend only on ``seed`` (the global RNG is left as it was for
    the initialisation). With ``checkpoint``, training saves every epoch and resumes from the file,
    so a finished file is loaded instead of retrained.
    """
    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}")
    data = create_dataset("digits", size=size)
    kwargs = {**default_model_kwargs(arch, size, data.num_classes), **(model_kwargs or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(arch, **kwargs).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = train(model, Batches(data.train, batch_size, seed=seed), optimizer, epochs, device=device,
                    evaluate=lambda m: {"val_accuracy": evaluate_classifier(m, data.val.x, data.val.y, device=device)["accuracy"]},
                    checkpoint=checkpoint, progress=progress, desc=f"victim {arch}")
    model.eval()
    accuracy = evaluate_classifier(model, data.test.x, data.test.y, device=device)["accuracy"]
    return Victim(model, data, accuracy, history)


@torch.no_grad()
def correctly_classified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: int | None = None,
                         device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` examples of (x, y) that ``model`` (run in eval mode) classifies correctly,
    as (x, y) on ``device`` (default: the model's); all of them when ``limit`` is None."""
    device = model_device(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    x, y = x.to(device), y.to(device)
    keep = model(x).argmax(1) == y
    model.train(was_training)
    idx = torch.nonzero(keep).flatten()[:limit]
    return x[idx], y[idx]
