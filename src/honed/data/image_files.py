"""Real-format image loaders: CIFAR-10 (binary or python batches) and an ImageFolder tree.

Nothing here downloads; point ``root`` at files you have (``--data-root``). CIFAR's python batches
are pickles: they are read with an unpickler that only admits the few numpy constructors those files
use, so a foreign pickle cannot run code.
"""
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from honed.core.errors import InputError
from honed.data.base import DATASETS, Dataset, Split, stratified_split

CIFAR_BIN_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_PY_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff"}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")
        return super().find_class(module, name)


def read_cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    raw = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    if raw.size % 3073:
        raise InputError(f"{path} is not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073)")
    rec = raw.reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def read_cifar_python(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (dict with b'data' (N, 3072) uint8 and b'labels')."""
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(Path(path).read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as err:
        raise InputError(f"{path} is not a CIFAR-10 python batch: {err}") from None
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[b"labels"], dtype=np.int64)


def _to_split(parts: list[tuple[np.ndarray, np.ndarray]]) -> Split:
    x = torch.from_numpy(np.concatenate([p[0] for p in parts])).float() / 255.0
    return Split(x, torch.from_numpy(np.concatenate([p[1] for p in parts])))


@DATASETS.register("cifar10")
def cifar10(root: str, val_size: int = 5000, split_seed: int = 0) -> Dataset:
    """CIFAR-10 from ``root`` holding either ``data_batch_{1..5}.bin`` + ``test_batch.bin`` or the
    python batches ``data_batch_{1..5}`` + ``test_batch``. x (N, 3, 32, 32) in [0, 1]."""
    root = Path(root)
    if (root / "test_batch.bin").exists():
        reader, train_names, test_name = read_cifar_binary, CIFAR_BIN_TRAIN, "test_batch.bin"
    elif (root / "test_batch").exists():
        reader, train_names, test_name = read_cifar_python, CIFAR_PY_TRAIN, "test_batch"
    else:
        raise InputError(f"no CIFAR-10 batches under {root} (expected test_batch.bin or test_batch)")
    present = [root / n for n in train_names if (root / n).exists()]
    if not present:
        raise InputError(f"no CIFAR-10 training batches under {root} (expected {train_names[0]} ...)")
    train = _to_split([reader(p) for p in present])
    test = _to_split([reader(root / test_name)])
    frac = val_size / len(train)
    tr, val, _ = stratified_split(train.x, train.y, (1 - frac, frac, 0.0), split_seed)
    return Dataset("cifar10", tr, val, test, num_classes=10)


@DATASETS.register("imagefolder")
def image_folder(root: str, size: int = 32, fractions: tuple[float, float, float] = (0.6, 0.1, 0.3),
                 split_seed: int = 0, grayscale: bool = False) -> Dataset:
    """``root/<class>/<image>`` (class = folder name, sorted), resized to ``size`` x ``size``,
    x (N, C, size, size) in [0, 1]; split stratified by ``fractions``."""
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) < 2:
        raise InputError(f"{root} needs at least two class folders, found {len(classes)}")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                img = Image.open(file).convert("L" if grayscale else "RGB").resize((size, size))
                arr = np.asarray(img, dtype=np.float32) / 255.0
                xs.append(arr[None] if grayscale else arr.transpose(2, 0, 1))
                ys.append(label)
    if not xs:
        raise InputError(f"no images found under {root}")
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    train, val, test = stratified_split(x, y, fractions, split_seed)
    return Dataset(root.name, train, val, test, num_classes=len(classes))
