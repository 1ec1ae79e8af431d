"""Training checkpoints in safetensors (no pickle), written atomically, with a checksum.

A checkpoint holds the model's state_dict, the optimizer's tensors, every random generator the run
owns (see :mod:`honed.core.rng_state`) and JSON metadata (epoch, history, optimizer hyper-parameters).
The sha256 of all tensors is stored in the header and verified on load: a file damaged on disk raises
:class:`CorruptFileError` (the train loop then discards it and recomputes); a file honed did not write,
or that does not fit the model, raises StoreError naming the file instead of silently continuing.
"""
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from honed.core.atomic import atomic_write
from honed.core.errors import CorruptFileError, StoreError

FORMAT = "honed-checkpoint-v1"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, meta: dict | None = None,
                    rng: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Path:
    """Save model and optimizer state, ``rng`` (from :func:`honed.core.rng_state.capture`; torch's
    global generator when None) and JSON ``meta`` as one safetensors file, atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_meta: dict[str, Any] = {}
    if optimizer is not None:
        state = optimizer.state_dict()
        for idx, slots in state["state"].items():
            for name, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
                else:
                    opt_meta.setdefault("scalars", {}).setdefault(str(idx), {})[name] = value
        opt_meta["param_groups"] = state["param_groups"]
    rng_tensors, rng_state = rng if rng is not None else ({"rng.torch": torch.get_rng_state()}, {})
    tensors.update(rng_tensors)
    header = {"format": FORMAT, "meta": json.dumps(meta or {}), "optim": json.dumps(opt_meta),
              "rng": json.dumps(rng_state), "sha256": tensors_digest(tensors)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, header)`` of a honed checkpoint, its checksum verified."""
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(f"{path} is not a readable checkpoint ({err})", str(path)) from None
    if header.get("format") != FORMAT:
        raise StoreError(f"{path} was not written by honed (format {header.get('format')!r}); refusing to load it")
    if "sha256" in header and tensors_digest(tensors) != header["sha256"]:
        raise CorruptFileError(f"{path} fails its checksum (damaged on disk)", str(path))
    return tensors, header


def load_checkpoint(path: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``), restore
    torch's global generator (``restore_rng``), and return its metadata dict."""
    return load_training_checkpoint(path, model, optimizer, restore_rng)[0]


def load_training_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                             restore_rng: bool = True) -> tuple[dict, tuple[dict[str, torch.Tensor], dict]]:
    """:func:`load_checkpoint` that also returns the saved generator payload ``(tensors, json state)``
    for :func:`honed.core.rng_state.restore`."""
    tensors, header = read_checkpoint(path)
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise StoreError(f"{path} does not fit this model: {str(err).splitlines()[0]}") from None
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state(tensors, json.loads(header["optim"])))
    if restore_rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    rng = ({k: v for k, v in tensors.items() if k.startswith("rng.")}, json.loads(header.get("rng", "{}")))
    return json.loads(header["meta"]), rng


def optimizer_state(tensors: dict[str, torch.Tensor], opt_meta: dict) -> dict:
    """Rebuild an optimizer state dict from the ``optim.*`` tensors and the JSON meta save_checkpoint wrote."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in opt_meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(scalars)
    return {"state": state, "param_groups": opt_meta["param_groups"]}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Write a flat ``{name: tensor}`` dict (plus JSON ``meta``) as safetensors with a checksum, atomically."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "meta": json.dumps(meta or {}), "sha256": tensors_digest(flat)}
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=header))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read what :func:`save_tensors` wrote: (tensors on ``device``, meta), checksum verified. No pickle."""
    tensors, header = read_checkpoint(path)
    return {k: v.to(device) for k, v in tensors.items()}, json.loads(header.get("meta", "{}"))
