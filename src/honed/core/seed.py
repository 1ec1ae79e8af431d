"""Seeding and the run environment record."""
import functools
import hashlib
import os
import platform
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a fresh torch Generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def draw_device(generator: torch.Generator | None, target: str | torch.device) -> torch.device:
    """Where a random draw for a tensor on ``target`` happens: on ``generator``'s device when one is
    given (a generator draws only on its own device; move the draw to ``target`` afterwards), else on
    ``target`` itself (torch's default generator of that device)."""
    return generator.device if generator is not None else torch.device(target)


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256[:12] over honed's own .py files (path + content, sorted): which code produced a result."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


def environment(device: str, threads: int | None = None) -> dict:
    """What a reader needs to judge a measured number: versions, device, threads (the count the
    seeds ran with, when the experiment set one), machine."""
    from honed import __version__

    return {
        "honed": __version__,
        "honed_source": source_digest(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda,
        "threads": threads or torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(terse=True),
    }


def device_name(device: str | torch.device) -> str:
    """A human name of the device a run used ("cpu", or the GPU's product name)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() if device.type == "cpu" else device.type


def resolve_device(name: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` -> torch.device; a missing CUDA is a clear InputError."""
    from honed.core.errors import InputError

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device '{name}'; use cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device '{name}' is not supported by honed's experiments; use cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return device


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch intra-op threads, restoring the previous count afterwards.

    Tiny models (digits MLPs/CNNs) run fastest on one thread, and on a loaded 2-core machine two
    OpenMP threads can make them many times slower. ``None`` or 0 leaves the count unchanged.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
