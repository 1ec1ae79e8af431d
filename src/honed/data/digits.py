"""sklearn's bundled handwritten digits (1797 images, 8x8, 10 classes), optionally upsampled."""
import torch
import torch.nn.functional as F

from honed.core.errors import InputError
from honed.data.base import DATASETS, Dataset, stratified_split


@DATASETS.register("digits")
def digits(size: int = 8, flat: bool = False, split_seed: int = 0,
           fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)) -> Dataset:
    """sklearn ``load_digits`` scaled to [0, 1]: x (N, 1, size, size) or (N, size*size) when ``flat``.

    ``size`` 8 (native), 16 or 32 (bilinear upsampling). The split is stratified and fixed by
    ``split_seed`` (default 60/10/30 train/val/test).
    """
    from sklearn.datasets import load_digits

    if size not in (8, 16, 32):
        raise InputError(f"digits size must be 8, 16 or 32, got {size}")
    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    if flat:
        x = x.flatten(1)
    y = torch.tensor(raw.target, dtype=torch.long)
    train, val, test = stratified_split(x, y, fractions, split_seed)
    return Dataset(f"digits{size}", train, val, test, num_classes=10)
