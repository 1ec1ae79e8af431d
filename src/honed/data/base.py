"""In-memory datasets: a seeded train/val/test split of tensors and a cheap batch iterator."""
from dataclasses import dataclass

import torch

from honed.core.errors import InputError
from honed.core.registry import Registry


@dataclass
class Split:
    """Tensors of one dataset split: ``x`` float in [0, 1] shaped (N, C, H, W) or (N, D); ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """A named dataset with train/val/test splits and its class count."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


class Batches:
    """Iterates (x, y) mini-batches of a Split; the shuffle order depends only on (seed, epoch), so a
    resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        if batch_size <= 0:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.split)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.split.x[idx], self.split.y[idx]


def stratified_split(x: torch.Tensor, y: torch.Tensor, fractions: tuple[float, float, float],
                     seed: int) -> tuple[Split, Split, Split]:
    """Split (x, y) into train/val/test with the given fractions, stratified by class, seeded."""
    if abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"split fractions must sum to 1, got {fractions}")
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[], [], []]
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_train = round(fractions[0] * len(idx))
        n_val = round(fractions[1] * len(idx))
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:])
    splits = []
    for chunks in parts:
        idx = torch.cat(chunks)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        splits.append(Split(x[idx], y[idx]))
    return splits[0], splits[1], splits[2]


def check_images(x: torch.Tensor, name: str = "x", dims: int | None = None) -> None:
    """Raise InputError unless ``x`` is a finite float tensor in [0, 1] (with ``dims`` dimensions,
    e.g. 4 for (N, C, H, W), when given)."""
    if not isinstance(x, torch.Tensor) or (dims is not None and x.dim() != dims):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a {dims}-D tensor{' (N, C, H, W)' if dims == 4 else ''}, got {shape}")
    if not torch.is_floating_point(x):
        raise InputError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise InputError(f"{name} must lie in [0, 1] (normalise inside the model); got range [{lo:.3g}, {hi:.3g}]")


DATASETS: Registry = Registry("dataset")


def create_dataset(name: str, **kwargs) -> Dataset:
    """Build a registered dataset by name, e.g. ``create_dataset("digits", size=16)``."""
    return DATASETS.get(name)(**kwargs)
