"""Where a pruned or decomposed network's latency goes: per-layer and per-operator forward times of
several models, measured in interleaved rounds (no paper; the measuring tool of issue 15 for GDP,
arXiv:2109.02220, and Force Regularization, arXiv:1703.09746, whose MACs savings need not become speed).

* :func:`layer_times`: time of every leaf module (conv, BN, Linear, ...) per forward, from a
  forward pre-hook / hook pair; what runs outside leaf modules (functional ReLU, residual additions,
  pooling written as ``F.*``, Python) is the row ``(outside modules)`` = total - sum of the layers.
* :func:`operator_times`: self CPU time per ATen operator per forward (``torch.profiler``), which does
  see the functional ops.

Both alternate the models every round (order reversed on odd rounds) so a drifting machine load hits
them alike, and report medians over rounds in milliseconds. Hooks and the profiler add their own
overhead: compare models with these tables, take speed-ups from :mod:`honed.core.benchmark`.
"""
import contextlib
import os
import statistics
import sys
import tempfile
from typing import Callable, Iterator

import torch
from torch import nn

from honed.core.benchmark import CLOCKS
from honed.core.errors import InputError, check_count
from honed.core.measure import forward_with_hooks
from honed.core.modes import eval_mode

PROFILER_NOISE = ("USDT:", "STAGE:")  # kineto's start/stop lines, written to fd 2 on every profile
OUTSIDE = "(outside modules)"
TOTAL = "(total)"


def _check(models: dict[str, nn.Module], example: torch.Tensor) -> None:
    if not models or not all(isinstance(m, nn.Module) for m in models.values()):
        raise InputError("models must be a non-empty dict of name -> nn.Module")
    if not torch.is_tensor(example) or example.dim() < 1 or len(example) == 0:
        raise InputError("example must be a non-empty input batch tensor")


def _rounds(models: dict[str, nn.Module], rounds: int, warmup: int, measure: Callable[[str], dict[str, float]],
            example: torch.Tensor) -> dict[str, dict[str, float]]:
    """Median over ``rounds`` interleaved rounds of ``measure(name)`` (a {row: ms} dict per forward)."""
    with eval_mode(*models.values()), torch.no_grad():
        for model in models.values():
            for _ in range(warmup):
                model(example)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in models}
        names = list(models)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                samples[name].append(measure(name))
    out = {}
    for name, rows in samples.items():
        keys = list(dict.fromkeys(k for row in rows for k in row))
        out[name] = {k: statistics.median(row.get(k, 0.0) for row in rows) for k in keys}
    return out


def layer_times(models: dict[str, nn.Module], example: torch.Tensor, rounds: int = 10,
                warmup: int = 2, clock: str = "cpu") -> dict[str, dict[str, float]]:
    """Per model ``{leaf module name: median ms per forward, "(outside modules)": ..., "(total)": ...}``
    for ``example`` (a batch, any shape the models take), models in eval mode (modes restored).
    ``clock``: "cpu" (this process's CPU time: what the layer costs, blind to other processes on a
    loaded machine) or "wall"."""
    _check(models, example)
    rounds, warmup = check_count(rounds, "rounds"), check_count(warmup, "warmup", minimum=0)
    if clock not in CLOCKS:
        raise InputError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    read = CLOCKS[clock]

    def measure(name: str) -> dict[str, float]:
        model, spent, started = models[name], {}, {}
        leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]

        def before(n):
            return lambda *_: started.__setitem__(n, read())

        def after(n):
            return lambda *_: spent.__setitem__(n, spent.get(n, 0.0) + read() - started[n])

        handles = [m.register_forward_pre_hook(before(n)) for n, m in leaves]
        handles += [m.register_forward_hook(after(n)) for n, m in leaves]
        try:
            start = read()
            model(example)
            total = read() - start
        finally:
            for handle in handles:
                handle.remove()
        row = {n: 1e3 * t for n, t in spent.items()}
        row[OUTSIDE] = 1e3 * total - sum(row.values())
        row[TOTAL] = 1e3 * total
        return row

    return _rounds(models, rounds, warmup, measure, example)


@contextlib.contextmanager
def _without_profiler_lines() -> Iterator[None]:
    """Send fd 2 to a temporary file for the block, then write back every line but kineto's
    ``USDT:``/``STAGE:`` start/stop lines (which no setting turns off)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(PROFILER_NOISE)]
            sys.stderr.write("".join(kept))


def operator_times(models: dict[str, nn.Module], example: torch.Tensor, rounds: int = 5,
                   warmup: int = 2) -> dict[str, dict[str, float]]:
    """Per model ``{ATen operator: median self-CPU ms per forward}`` from ``torch.profiler`` (CPU
    activity), plus ``"(total)"`` (the sum), for ``example``; models in eval mode (modes restored)."""
    _check(models, example)
    rounds, warmup = check_count(rounds, "rounds"), check_count(warmup, "warmup", minimum=0)
    from torch.profiler import ProfilerActivity, profile

    def measure(name: str) -> dict[str, float]:
        with _without_profiler_lines(), profile(activities=[ProfilerActivity.CPU]) as prof:
            models[name](example)
        row = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages() if e.self_cpu_time_total > 0}
        row[TOTAL] = sum(row.values())
        return row

    return _rounds(models, rounds, warmup, measure, example)


@torch.no_grad()
def layer_macs(model: nn.Module, example: torch.Tensor, channel_block: int = 1) -> dict[str, int]:
    """MACs per forward of ``example`` of every leaf Conv / Linear of ``model`` (output positions times
    output channels times input channels per group times the kernel size), keyed like
    :func:`layer_times`. ``channel_block`` > 1 models a kernel that stores channels in blocks of that
    size, padded with zeros: a conv's output channels are rounded up to a multiple of it, and so are its
    input channels when there are at least ``channel_block`` of them (oneDNN's AVX-512 convolutions, by
    their verbose log on an EPYC: 24 -> 25 channels ran on 16-blocked source and destination, 5 -> 8
    channels on a plain source and a 16-blocked destination). Linear layers are counted as they are."""
    _check({"model": model}, example)
    channel_block = check_count(channel_block, "channel_block")
    macs: dict[str, int] = {}
    up = lambda n: -(-n // channel_block) * channel_block  # noqa: E731

    def count(name, module, _inputs, out):
        if isinstance(module, nn.Linear):
            n = out.numel() * module.in_features
        else:
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            c_in = module.in_channels // module.groups
            c_in = 1 if depthwise else (up(c_in) if c_in >= channel_block else c_in)
            c_out = module.out_channels if depthwise else up(module.out_channels)
            positions = out.numel() // module.out_channels
            n = positions * c_out * c_in * module.weight[0, 0].numel()
        macs[name] = macs.get(name, 0) + n

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    forward_with_hooks(model, example, layers, count, whole_batch=True)
    return macs


def by_block(values: dict[str, float], block: Callable[[str], str]) -> dict[str, float]:
    """Sums of ``values`` over the layer names that ``block`` maps to the same block name (e.g.
    ``stages.1.0.conv1`` -> ``stages.1``); the bookkeeping rows stay as they are."""
    out: dict[str, float] = {}
    for name, value in values.items():
        key = name if name in (OUTSIDE, TOTAL) else block(name)
        out[key] = out.get(key, 0.0) + value
    return out


def format_profile(times: dict[str, dict[str, float]], top: int = 12, title: str = "ms per forward") -> str:
    """A text table: rows sorted by the first model's time (largest first, at most ``top``, then the
    ``(outside modules)`` and ``(total)`` rows), one column per model, and per other model its share of
    the first model's time in the row."""
    names = list(times)
    first = times[names[0]]
    special = [k for k in (OUTSIDE, TOTAL) if any(k in t for t in times.values())]
    keys = sorted({k for t in times.values() for k in t} - set(special), key=lambda k: -first.get(k, 0.0))[:top]
    width = max([len(title)] + [len(k) for k in keys + special]) + 2
    lines = [f"{title:<{width}}" + "".join(f"{n:>14}" for n in names)
             + "".join(f"{n + '/' + names[0]:>22}" for n in names[1:])]
    for key in keys + special:
        cells = [t.get(key, 0.0) for t in (times[n] for n in names)]
        shares = [f"{c / cells[0]:.2f}" if cells[0] > 0 else "-" for c in cells[1:]]
        lines.append(f"{key:<{width}}" + "".join(f"{c:>14.3f}" for c in cells) + "".join(f"{s:>22}" for s in shares))
    return "\n".join(lines)
