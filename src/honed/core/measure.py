"""Measured cost of a model: parameters, MACs (exact, via torch's FlopCounterMode) and latency.

Latency is wall time of a forward pass with the device synchronised before the clock starts and
before it stops (on a GPU, kernels run asynchronously: without it a timer measures only the launch).
Results should say which device they were measured on (the run's environment records it).
"""
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from honed.core.modes import eval_mode

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (trainable only if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (FLOPs / 2, counted by torch)."""
    with eval_mode(model), FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


def synchronize(device: torch.device | str | None) -> None:
    """Wait for every queued kernel on ``device`` (a no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall and process-CPU seconds of the blocks run under it (``with clock: ...``), summed over blocks."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> "Stopwatch":
        self._wall_start, self._cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> bool:
        self.wall += time.perf_counter() - self._wall_start
        self.cpu += time.process_time() - self._cpu_start
        return False


def timed(fn: Callable[[], object], device: torch.device | str | None) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def repeated_forwards(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> Callable[[], None]:
    """A call that runs ``model(x)`` ``repeats`` times without autograd (what a latency round times)."""
    def run() -> None:
        with torch.no_grad():
            for _ in range(repeats):
                model(x)
    return run


def interleaved_times(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                      device: torch.device | str | None = None) -> dict[str, dict[str, list[float]]]:
    """Seconds of each ``calls[name]()`` per round on every clock (``{name: {"wall": [...], "cpu": [...]}}``);
    the calls take turns every round, the order reversed on odd rounds; the device is synchronised
    around each call."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: {clock: [] for clock in CLOCKS} for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            synchronize(device)
            start = {clock: read() for clock, read in CLOCKS.items()}
            calls[name]()
            synchronize(device)
            for clock, read in CLOCKS.items():
                times[name][clock].append(read() - start[clock])
    return times


def _device_of(inputs: tuple) -> torch.device | None:
    return next((t.device for t in inputs if isinstance(t, torch.Tensor)), None)


@torch.no_grad()
def median_latency(model: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], repeats: int = 30,
                   warmup: int = 5) -> float:
    """Median wall time in seconds of ``model(example)`` in eval mode over ``repeats`` runs, the device
    synchronised; a tuple ``example`` is passed as several arguments (e.g. ``(input_ids, attention_mask)``)."""
    inputs = example if isinstance(example, tuple) else (example,)
    return statistics.median(interleaved_latency({"m": model}, inputs, repeats, warmup)["m"])


@torch.no_grad()
def interleaved_latency(models: dict[str, torch.nn.Module], example: torch.Tensor | tuple[torch.Tensor, ...],
                        repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Forward wall times (s) of each model on ``example``, one per round, the device synchronised; the
    models take turns every round (order reversed on odd rounds) so drifting machine load hits all of
    them alike. Per-round ratios (``dense[i] / pruned[i]``) are paired samples of a speed-up, so a claim
    on their mean gets a paired bootstrap interval. Every submodule's train/eval mode is restored."""
    inputs = example if isinstance(example, tuple) else (example,)
    calls = {name: (lambda model=model: model(*inputs)) for name, model in models.items()}
    with eval_mode(*models.values()):
        times = interleaved_times(calls, repeats, warmup, _device_of(inputs))
    return {name: by_clock["wall"] for name, by_clock in times.items()}


@torch.no_grad()
def forward_with_hooks(model: torch.nn.Module, example: torch.Tensor, modules, hook,
                       whole_batch: bool = False) -> None:
    """Run ``model`` once in eval mode on ``example[:1]`` (the whole ``example`` with ``whole_batch``) with
    ``hook(name, module, inputs, output)`` attached as a forward hook to each ``(name, module)`` of
    ``modules``; hooks are removed and the model's train/eval mode restored afterwards. Used to read
    per-layer output sizes."""
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: hook(n, mod, inp, out)) for n, m in modules]
    try:
        with eval_mode(model):
            model(example if whole_batch else example[:1])
    finally:
        for h in handles:
            h.remove()
