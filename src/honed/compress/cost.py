"""Cost columns of a (possibly masked) model: parameters, MACs and measured CPU latency, kept apart
because masks are not speed (The Lottery Ticket Hypothesis, arXiv:1803.03635, reports sparsity; what
a sparse mask buys at run time must be measured, not inferred).

Columns returned by :func:`cost_columns`:

* ``params_total``: every parameter entry; ``params_nonzero``: entries that are not zero after the mask;
* ``macs_dense``: multiply-accumulates of one forward pass of ONE example, counted by torch's
  FlopCounterMode (what a dense kernel executes, mask or not);
* ``macs_effective``: the same minus the MACs of zero weights in Linear/Conv layers (what an ideal
  sparse kernel would execute; a count, not a speed);
* ``latency_b1_ms`` / ``latency_b64_ms``: median wall time of the forward pass at batch 1 and 64
  (``honed.core.measure.median_latency``), in milliseconds, on the device of ``example``.
"""
import copy

import torch
from torch import nn

from honed.compress.masks import PRUNABLE_MODULES, Mask, apply_mask
from honed.core.errors import InputError
from honed.core.measure import count_macs, median_latency


def _zero_weight_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs spent on zero weights of Linear/Conv layers for one forward pass of ``example``: each
    weight entry is used ``output.numel() / out_features`` times."""
    uses: dict[nn.Module, int] = {}

    def hook(module, _inp, out):
        uses[module] = uses.get(module, 0) + out.numel() // module.weight.shape[0]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE_MODULES)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return sum(n * int((m.weight == 0).sum()) for m, n in uses.items())


def cost_columns(model: nn.Module, example: torch.Tensor, mask: Mask | None = None,
                 repeats: int = 30, warmup: int = 5) -> dict[str, float]:
    """Cost columns (see module docstring) of ``model`` with ``mask`` applied to a copy.

    ``example``: one input with its batch dimension, shape (1, ...) or (N, ...); its first example
    is used (batch 1) and repeated 64 times (batch 64). ``repeats``: timed runs per latency median.
    """
    if not torch.is_tensor(example) or example.dim() < 1 or len(example) == 0:
        raise InputError("example must be a tensor with a batch dimension holding at least one example")
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    model = copy.deepcopy(model)
    if mask is not None:
        apply_mask(model, mask)
    model.eval()
    one = example[:1]
    batch = one.expand(64, *one.shape[1:]).contiguous()
    macs = count_macs(model, one)
    return {
        "params_total": float(sum(p.numel() for p in model.parameters())),
        "params_nonzero": float(sum(int((p != 0).sum()) for p in model.parameters())),
        "macs_dense": float(macs),
        "macs_effective": float(macs - _zero_weight_macs(model, one)),
        "latency_b1_ms": 1e3 * median_latency(model, one, repeats=repeats, warmup=warmup),
        "latency_b64_ms": 1e3 * median_latency(model, batch, repeats=repeats, warmup=warmup),
    }
