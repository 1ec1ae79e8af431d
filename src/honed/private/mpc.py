"""Secure two-party evaluation with CrypTen (extra ``mpc``) for SelectFormer (arXiv:2310.02373).

* :func:`import_crypten` - the one place that imports crypten (with its torch-compatibility shim).
* :func:`crypten_mlp` - a ``crypten.nn`` MLP with the weights of a torch Linear/ReLU stack.
* :func:`measure_mpc_costs` - evaluate models under real 2-party MPC (two gloo processes on
  127.0.0.1, arithmetic secret sharing, CrypTen's default trusted-first-party Beaver triples) and
  return seconds, bytes and rounds per example, plus the decrypted outputs for checking.

A model given to the harness is any object with ``mpc_parameters() -> dict[str, Tensor]`` and
``forward_with(params, tokens) -> Tensor`` whose ops work on both torch tensors and CrypTensors
(see :mod:`honed.private.proxy_selection`). Party 0 (model owner) secret-shares the weights; party 1
(data owner) secret-shares the inputs; only the requested output is revealed.
"""
import copy
import math
import os
import sys
import time
import types
from typing import Any, Callable

import torch

from honed.core.errors import InputError, MissingExtraError, require_extra

INSTALL_HINT = ("pip install 'honed[mpc]' && pip install --no-deps crypten==0.4.1 "
                "(crypten's own requirements pull in the dead 'sklearn' package)")
SHIM_MODULE = "torch.onnx._internal.registration"
REVEALS = ("entropy", "margin", "logits")
MARGIN_MASK = 1e3  # public offset that removes the top logit before the second max (logits far below it)


def import_crypten() -> types.ModuleType:
    """Import crypten (SelectFormer, arXiv:2310.02373, evaluates under CrypTen 2PC).

    crypten 0.4.1 imports ``registry`` from ``torch.onnx._internal.registration``, which recent torch
    no longer has; a stub module is registered under that name first (crypten only needs it for ONNX export, unused
    here). Raises MissingExtraError naming the install when crypten is absent.
    """
    if SHIM_MODULE not in sys.modules:
        try:
            __import__(SHIM_MODULE)
        except ImportError:
            shim = types.ModuleType(SHIM_MODULE)
            shim.registry = None  # crypten's ONNX converter only imports the name
            sys.modules[SHIM_MODULE] = shim
    try:
        return require_extra("crypten", "mpc", install=INSTALL_HINT)
    except MissingExtraError:
        raise
    except Exception as err:  # a broken install fails inside crypten's own imports
        raise MissingExtraError(f"crypten failed to import ({type(err).__name__}: {err}); "
                                f"reinstall it with: {INSTALL_HINT}") from None


def crypten_mlp(layers: torch.nn.Sequential) -> Any:
    """A ``crypten.nn.Sequential`` copy of a torch stack of Linear / ReLU layers (SelectFormer,
    arXiv:2310.02373: its emulator MLPs). Input (B, in_features) floats; call ``.encrypt(src=0)``
    on the result to secret-share the weights from party 0."""
    crypten = import_crypten()
    mods = []
    for layer in layers:
        if isinstance(layer, torch.nn.Linear):
            lin = crypten.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            lin.set_parameter("weight", layer.weight.detach().clone())
            if layer.bias is not None:
                lin.set_parameter("bias", layer.bias.detach().clone())
            mods.append(lin)
        elif isinstance(layer, torch.nn.ReLU):
            mods.append(crypten.nn.ReLU())
        else:
            raise InputError(f"crypten_mlp supports Linear and ReLU layers, got {type(layer).__name__}")
    return crypten.nn.Sequential(*mods)


def logit_margin_uncertainty(logits: Any, max_method: str = "pairwise") -> Any:
    """Margin-sampling score for SelectFormer's sieve (arXiv:2310.02373 scores by entropy; this is a
    named cheaper option, a different criterion): z_(2) - z_(1) <= 0, the second largest logit minus the
    largest, for logits (B, C >= 2), tensor or CrypTensor; higher = less confident. Under MPC it needs
    two secure maxima (comparisons) and no exp / log / reciprocal. The top logit is removed by
    subtracting ``MARGIN_MASK`` times its one-hot argmax; CrypTen's argmax marks every entry equal to the
    maximum, so an exact tie at the top (2^-16 fixed point) scores the gap to the next distinct value
    there, while the plaintext path scores 0. ``max_method``: CrypTen's secure max, "pairwise" (all C^2
    comparisons at once: constant rounds, more bytes) or "log_reduction" (a tree: log2 C rounds of
    comparisons, CrypTen's default, which the entropy's max uses)."""
    if logits.dim() != 2 or logits.shape[-1] < 2:
        raise InputError(f"logits must be (B, C >= 2), got {tuple(logits.shape)}")
    if max_method not in ("pairwise", "log_reduction"):
        raise InputError(f"max_method must be 'pairwise' or 'log_reduction', got {max_method!r}")
    if isinstance(logits, torch.Tensor):
        top2 = logits.topk(2, dim=-1).values
        return top2[:, 1] - top2[:, 0]
    with import_crypten().cfg.temp_override({"functions.max_method": max_method}):
        top, first = logits.max(-1, keepdim=True, one_hot=True)
        second = (logits - first * MARGIN_MASK).max(-1, keepdim=True)[0]
    return (second - top).squeeze(-1)


def _init_crypten_party(rank: int, world_size: int, port: int) -> Any:
    """Replace run_workers' default group by CrypTen's own (it needs its sub-groups)."""
    import torch.distributed as dist

    crypten = import_crypten()
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ.update({"DISTRIBUTED_BACKEND": "gloo", "RENDEZVOUS": f"tcp://127.0.0.1:{port}",
                       "WORLD_SIZE": str(world_size), "RANK": str(rank)})
    crypten.init()
    crypten.cfg.communicator.verbose = True
    return crypten


def secure_logit_floor(crypten: Any) -> float:
    """Where the secret-shared entropy of SelectFormer (arXiv:2310.02373) floors the max-shifted logits
    z' <= 0 (reconstructed, R): CrypTen's exp is the limit (1 + x / 2^k)^(2^k) (k =
    ``cfg.functions.exp_iterations``), which is valid for x > -2^k and wraps to huge values below (a proxy
    whose logits spread wider than that returned entropies of ~1e10 nats). The floor is
    -2 * precision_bits * ln 2 (exp of it is the square of one fixed-point step, 2^-precision_bits), kept
    inside the exp's valid range; flooring there moves the entropy by under C * 2^(-2 precision_bits) * |floor|
    nats, far below the encoding's resolution. Costs one secret-shared ReLU over the (B, C) logits."""
    floor = -2 * crypten.cfg.encoder.precision_bits * math.log(2)
    return max(floor, 1 - 2 ** crypten.cfg.functions.exp_iterations)


def _measure_one(crypten: Any, model: Any, tokens: torch.Tensor, reveal: str) -> dict[str, Any]:
    """Share weights (party 0) and inputs (party 1), run the forward, reveal, record the stats."""
    comm = crypten.comm.get()
    params = {k: crypten.cryptensor(v, src=0) for k, v in model.mpc_parameters().items()}
    x_enc = crypten.cryptensor(tokens, src=1)
    comm.barrier()
    comm.reset_communication_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    out = model.forward_with(params, x_enc)
    if reveal == "entropy":
        from honed.private.proxy_selection import entropy_from_logits
        out = entropy_from_logits(out, logit_floor=secure_logit_floor(crypten))
    elif reveal == "margin":
        out = logit_margin_uncertainty(out)
    plain = out.get_plain_text()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stats = comm.get_communication_stats()
    n = tokens.shape[0]
    return {"seconds_per_example": seconds / n, "bytes_per_example": stats["bytes"] / n,
            "comm_seconds_per_example": stats["time"] / n, "cpu_seconds_per_example": cpu / n,
            "rounds_per_batch": float(stats["rounds"]),
            "output": plain}


def _party(rank: int, world_size: int, port: int, models: dict[str, Any], tokens: torch.Tensor,
           reveal: str) -> dict[str, dict[str, Any]]:
    """One MPC party (module level so the launcher can start it)."""
    crypten = _init_crypten_party(rank, world_size, port)
    torch.manual_seed(0)
    out = {}
    for name, model in models.items():  # twice each: keep the faster run (a loaded host adds noise)
        first, second = (_measure_one(crypten, model, tokens, reveal) for _ in range(2))
        out[name] = min(first, second, key=lambda r: r["seconds_per_example"])
    crypten.uninit()
    return out


def _free_port() -> int:
    from honed.distributed.launch import free_port
    return free_port()


def measure_mpc_costs(models: dict[str, Any], tokens: torch.Tensor, *, reveal: str = "entropy",
                      parties: int = 2, timeout_s: float = 300.0,
                      launcher: Callable[..., list] | None = None) -> dict[str, dict[str, Any]]:
    """Real MPC cost per example of each model (SelectFormer, arXiv:2310.02373, step 6's MPC).

    tokens: (B, ...) float inputs shared by the data owner; B >= 1. ``reveal`` "entropy" (secret-
    shared predictive entropy, the selection score, revealed for checking only), "margin" (the
    comparison-only :func:`logit_margin_uncertainty`, a different criterion) or "logits".
    Returns {name: {seconds_per_example, bytes_per_example (bytes sent by party 0),
    comm_seconds_per_example (time inside communication calls, waiting for the peer included),
    cpu_seconds_per_example (this party's process CPU time: its local compute, whatever the host's load),
    rounds_per_batch, output (B,) or (B, C) decrypted}} from party 0. ``parties`` >= 2 processes on loopback.
    The parties run on the CPU by design (CrypTen over gloo): models that are torch modules and the
    tokens are copied there, whatever their device, and the parties are spawned rather than forked
    once this process has initialised CUDA.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim < 2 or tokens.shape[0] < 1:
        raise InputError(f"tokens must be a (B, ...) tensor with B >= 1, got {getattr(tokens, 'shape', tokens)}")
    if reveal not in REVEALS:
        raise InputError(f"reveal must be one of {REVEALS}, got {reveal!r}")
    if parties < 2:
        raise InputError(f"parties must be >= 2 for a real MPC run, got {parties}")
    if not models:
        raise InputError("models is empty")
    import_crypten()  # fail early in the parent with the install hint
    from honed.distributed.launch import run_workers

    # fork starts parties in ~0.1 s, but not from a parent that holds a process group or CUDA itself
    forkable = ("fork" in torch.multiprocessing.get_all_start_methods() and not torch.distributed.is_initialized()
                and not torch.cuda.is_initialized())
    start_method = "fork" if forkable else "spawn"
    run = launcher or run_workers
    on_cpu = {name: copy.deepcopy(m).cpu() if isinstance(m, torch.nn.Module) else m for name, m in models.items()}
    results = run(_party, world_size=parties, args=(_free_port(), on_cpu, tokens.detach().cpu(), reveal),
                  timeout_s=timeout_s, start_method=start_method)
    return results[0]


class EntropyOnly:
    """The cost floor of any MPC scorer in SelectFormer (arXiv:2310.02373): no model, the logits
    (B, classes) are the first ``classes`` input values of tokens (B, 16, 4), so
    :func:`measure_mpc_costs` times input sharing + the secret-shared entropy + reveal only."""

    def __init__(self, classes: int = 10) -> None:
        if classes < 2:
            raise InputError(f"classes must be >= 2, got {classes}")
        self.classes = classes

    def mpc_parameters(self) -> dict[str, torch.Tensor]:
        return {}

    def forward_with(self, params: dict, tokens: Any) -> Any:
        return tokens.reshape(tokens.shape[0], -1)[:, :self.classes]
