"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package (extra ``data``)."""
import torch

from honed.core.errors import require_extra
from honed.data.base import DATASETS, Dataset, Split, stratified_split


@DATASETS.register("mnist1d")
def mnist1d(split_seed: int = 0, val_fraction: float = 0.1) -> Dataset:
    """The standard 4000/1000 MNIST-1D split, generated locally (never downloaded).

    x (N, 1, 40) float, rescaled per-dataset to [0, 1]; y int64 in 0..9. Part of the 4000 training
    examples is held out as validation.
    """
    require_extra("mnist1d", "data")
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x_tr, x_te = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["x_test"], dtype=torch.float32)
    lo, hi = x_tr.min(), x_tr.max()
    scale = lambda t: ((t - lo) / (hi - lo)).clamp(0, 1).unsqueeze(1)  # noqa: E731
    y_tr, y_te = torch.tensor(data["y"]).long(), torch.tensor(data["y_test"]).long()
    train, val, _ = stratified_split(scale(x_tr), y_tr, (1 - val_fraction, val_fraction, 0.0), split_seed)
    return Dataset("mnist1d", train, val, Split(scale(x_te), y_te), num_classes=10)
