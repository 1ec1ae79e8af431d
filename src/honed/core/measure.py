"""Measured cost of a model: parameters, MACs (exact, via torch's FlopCounterMode) and latency."""
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (trainable only if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (FLOPs / 2, counted by torch)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def median_latency(model: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], repeats: int = 30,
                   warmup: int = 5) -> float:
    """Median wall time in seconds of ``model(example)`` in eval mode over ``repeats`` runs; a tuple
    ``example`` is passed as several arguments (e.g. ``(input_ids, attention_mask)``)."""
    inputs = example if isinstance(example, tuple) else (example,)
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(*inputs)
        times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times)


@torch.no_grad()
def forward_with_hooks(model: torch.nn.Module, example: torch.Tensor, modules, hook) -> None:
    """Run ``model`` once in eval mode on ``example[:1]`` with ``hook(name, module, inputs, output)``
    attached as a forward hook to each ``(name, module)`` of ``modules``; hooks are removed and the
    model's train/eval mode restored afterwards. Used to read per-layer output sizes."""
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: hook(n, mod, inp, out)) for n, m in modules]
    was_training = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
