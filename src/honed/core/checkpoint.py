"""Training checkpoints in safetensors (no pickle), written atomically.

A checkpoint holds the model's state_dict, the optimizer's tensors, and JSON metadata (epoch,
history, optimizer hyper-parameters, torch RNG state). Loading a file that honed did not write, or
that does not fit the model, raises StoreError naming the file instead of silently continuing.
"""
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from honed.core.atomic import atomic_write
from honed.core.errors import StoreError

FORMAT = "honed-checkpoint-v1"


def save_checkpoint(path: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, meta: dict | None = None) -> Path:
    """Save model and optimizer state (plus JSON ``meta``) as one safetensors file, atomically."""
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
    tensors["rng.torch"] = torch.get_rng_state()
    header = {"format": FORMAT, "meta": json.dumps(meta or {}), "optim": json.dumps(opt_meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_checkpoint(path: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``);
    return its metadata dict."""
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise StoreError(f"{path} is not a readable checkpoint ({err}); delete it or rerun with --force") from None
    if header.get("format") != FORMAT:
        raise StoreError(f"{path} was not written by honed (format {header.get('format')!r}); refusing to load it")
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise StoreError(f"{path} does not fit this model: {str(err).splitlines()[0]}") from None
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state(tensors, json.loads(header["optim"])))
    if restore_rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return json.loads(header["meta"])


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
    """Write a flat ``{name: tensor}`` dict (plus JSON ``meta``) as safetensors, atomically."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "meta": json.dumps(meta or {})}
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=header))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read what :func:`save_tensors` wrote: (tensors on ``device``, meta). No pickle involved."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise StoreError(f"{path} is not a readable tensor file ({err}); delete it or rerun with --force") from None
    if header.get("format") != FORMAT:
        raise StoreError(f"{path} was not written by honed (format {header.get('format')!r}); refusing to load it")
    return tensors, json.loads(header.get("meta", "{}"))
