"""Measuring FFConv's packing plans and the TenSEAL peer on real CKKS, per image (FFConv: Fast Factorized
Convolutional Neural Network Inference on Encrypted Data, Lu et al., arXiv:2102.03494; extra ``he``).

The metrics are dicts ready for an experiment's arm: ``ckks_*`` per-image lists (server seconds, conv-layer
seconds, refresh seconds, end-to-end seconds = server + refresh, max / relative logit error, prediction
agreement with float64) and per-image means (operation counts, depth, ciphertexts, refreshes, encoding
seconds). One SEAL context (and its rotation keys) per parameter set is kept for the process.
"""
import copy
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from honed.private.he_ckks import CKKSBackend, CKKSParameters
from honed.private.he_peer import TenSEALPeer, peer_layers
from honed.private.he_plan import encrypted_forward


@lru_cache(maxsize=2)
def ckks_backend(slots: int, params: CKKSParameters) -> CKKSBackend:
    """One SEAL context and key set per process (its rotation keys are made once and reused)."""
    return CKKSBackend(slots, params)


@lru_cache(maxsize=2)
def tenseal_peer(params: CKKSParameters) -> TenSEALPeer:
    """One TenSEAL context (and its galois keys) per parameter set for the process."""
    return TenSEALPeer(params)


def ckks_image_indices(seed: int, count: int, n_test: int) -> list[int]:
    """Test images of a seed's real-CKKS runs: a stretch of ``count`` starting at seed * count."""
    return [(seed * count + i) % n_test for i in range(count)]


def fidelity(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Per-image fidelity of encrypted logits (classes,) to the float64 ones."""
    err = float(np.abs(logits - reference).max())
    return {"ckks_max_abs_err": err, "ckks_rel_err": err / max(float(np.abs(reference).max()), 1e-12),
            "ckks_agree": float(np.argmax(logits) == np.argmax(reference))}


def ckks_plan_metrics(net: nn.Module, plan: str, images: torch.Tensor, slots: int,
                      params: CKKSParameters) -> dict[str, Any]:
    """FFConv (arXiv:2102.03494): ``plan`` of :func:`~honed.private.he_plan.encrypted_forward` on real CKKS,
    one image of ``images`` (B, C, H, W) at a time: per-image lists of seconds and fidelity, and the
    per-image mean of the counts (identical for every image)."""
    model, backend = copy.deepcopy(net).double().cpu().eval(), ckks_backend(slots, params)  # CKKS runs on the CPU
    rows = []
    for image in images.detach().double().cpu():
        backend.new_image()
        logits, _, info = encrypted_forward(model, image[None], plan, backend=backend)
        with torch.no_grad():
            reference = model(image[None]).numpy()[0]
        server, refresh = backend.seconds_total(), backend.refresh_seconds
        counts = backend.total().as_dict()
        rows.append({"ckks_conv_seconds": backend.seconds_total("conv:"), "ckks_server_seconds": server,
                     "ckks_refresh_seconds": refresh, "ckks_e2e_seconds": server + refresh,
                     **fidelity(logits[0], reference),
                     **{f"ckks_{k}": float(v) for k, v in counts.items()}, "ckks_depth": float(info["depth"]),
                     "ckks_client_ciphertexts": float(info["client_ciphertexts"]),
                     "ckks_max_ciphertexts": float(info["max_ciphertexts"]), "ckks_refreshes": float(backend.refreshes),
                     "ckks_encode_seconds": backend.encode_seconds})
    return per_image_lists(rows, per_example=("ckks_conv_seconds", "ckks_server_seconds", "ckks_refresh_seconds",
                                              "ckks_e2e_seconds", "ckks_max_abs_err", "ckks_rel_err", "ckks_agree"))


def peer_metrics(net: nn.Module, images: torch.Tensor, params: CKKSParameters) -> dict[str, Any]:
    """FFConv (arXiv:2102.03494) peer: TenSEAL's im2col + mm network of ``net`` on ``images`` (B, 1, H, W),
    one at a time (its rotations happen inside TenSEAL and are not counted)."""
    model, peer = copy.deepcopy(net).double().cpu().eval(), tenseal_peer(params)  # TenSEAL runs on the CPU
    layers, rows = peer_layers(model, tuple(images.shape[1:])), []
    for image in images.detach().double().cpu():
        logits, stats = peer.forward(layers, image.numpy())
        with torch.no_grad():
            reference = model(image[None]).numpy()[0]
        rows.append({"ckks_server_seconds": stats["seconds"], "ckks_refresh_seconds": stats["refresh_seconds"],
                     "ckks_e2e_seconds": stats["seconds"] + stats["refresh_seconds"], **fidelity(logits, reference),
                     "ckks_depth": float(stats["depth"]), "ckks_refreshes": float(stats["refreshes"]),
                     "ckks_client_ciphertexts": float(stats["client_ciphertexts"])})
    return per_image_lists(rows, per_example=("ckks_server_seconds", "ckks_refresh_seconds", "ckks_e2e_seconds",
                                              "ckks_max_abs_err", "ckks_rel_err", "ckks_agree"))


def per_image_lists(rows: list[dict], per_example: tuple[str, ...]) -> dict[str, Any]:
    """Per-example metrics as lists over the images; the rest as their mean over the images."""
    return {k: [r[k] for r in rows] if k in per_example else float(np.mean([r[k] for r in rows])) for k in rows[0]}
