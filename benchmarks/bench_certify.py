"""Throughput of honed's randomized-smoothing CERTIFY (arXiv:1902.02918) against a plain batched forward
of the same base model on the same number of samples, side by side in one run.

Bases: the experiment's MLP 64-256-256-10 (no BN) and the small CNN, on 8x8 digits. CERTIFY draws
n0 + n noisy samples per point (fresh Gaussian noise, forward, argmax, bincount, Clopper-Pearson); the
plain side runs ``model(batch)`` on ready-made inputs with exactly the same batch sizes. The two
alternate in short pairs (order flipped each pair, so load drifts cancel), on one torch thread (the
experiment's setting). Each block is timed by wall clock and by this thread's CPU time (the latter is
what the code costs; on a shared machine the wall clock also measures the neighbours). The ratio is the
median over pairs of plain time / certify time. Target: certify / plain >= 0.9 per model, judged on wall
time. Drawing the Gaussian noise (torch's CPU generator) is work the plain side never does, so the ratio
is bounded by forward / (forward + noise), lowest for the cheap MLP; ``noise_bound`` measures that bound.
Writes benchmarks/results/bench_certify.json.
"""
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from honed.core.atomic import atomic_write_json
from honed.core.seed import environment, torch_threads
from honed.data import create_dataset
from honed.models import create_model
from honed.robust.certify import Smooth

TARGET = 0.9
THREADS = 1  # the experiment's setting (digits-sized nets run fastest on one torch thread)
SETTINGS = {"sigma": 0.25, "n0": 100, "n": 10_000, "alpha": 0.001, "batch_size": 1000, "points": 4}
MODELS = {  # name, kwargs, input shape, pairs: the experiment's base and a conv net ~4x costlier per sample
    "mlp 64-256-256-10, no BN": ("mlp", {"in_features": 64, "hidden": (256, 256), "bn": False}, (64,), 41),
    "cnn 16/32 channels, no BN": ("cnn", {"in_channels": 1, "bn": False}, (1, 8, 8), 15),
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def batch_sizes(n0: int, n: int, batch_size: int) -> list[int]:
    """The batch sizes CERTIFY evaluates for one point (selection draws, then estimation draws)."""
    sizes = []
    for total in (n0, n):
        sizes += [batch_size] * (total // batch_size) + ([total % batch_size] if total % batch_size else [])
    return sizes


def timed(work: Callable[[], None]) -> dict[str, float]:
    """Seconds of ``work()`` on each clock."""
    start = {k: clock() for k, clock in CLOCKS.items()}
    work()
    return {k: clock() - start[k] for k, clock in CLOCKS.items()}


def measure(name: str, kwargs: dict, shape: tuple[int, ...], pairs: int) -> dict:
    """Alternating pairs of one certified point vs the plain forward of the same batch sizes, plus the
    noise draws alone; per clock: samples/s (medians), ratio and noise bound (medians over pairs)."""
    cfg = SETTINGS
    torch.manual_seed(0)
    points = create_dataset("digits").test.x[:cfg["points"]].reshape(-1, *shape)
    model = create_model(name, num_classes=10, **kwargs).eval()
    smooth = Smooth(model, 10, cfg["sigma"], input_shape=shape)
    sizes = batch_sizes(cfg["n0"], cfg["n"], cfg["batch_size"])
    inputs = {s: points[0] + cfg["sigma"] * torch.randn(s, *shape) for s in set(sizes)}
    noise = {s: torch.empty(s, *shape) for s in set(sizes)}

    @torch.inference_mode()
    def plain() -> None:
        for size in sizes:
            model(inputs[size])

    def noise_only() -> None:
        for size in sizes:
            noise[size].normal_(0.0, cfg["sigma"])

    def certify(i: int) -> Callable[[], None]:
        return lambda: smooth.certify(points[i % len(points)], cfg["n0"], cfg["n"], cfg["alpha"], cfg["batch_size"])

    plain(), certify(0)()  # warm-up
    runs: dict[str, list[dict[str, float]]] = {"plain_forward": [], "certify": [], "noise_only": []}
    for i in range(pairs):
        for side in (("plain_forward", "certify") if i % 2 == 0 else ("certify", "plain_forward")):
            runs[side].append(timed(plain if side == "plain_forward" else certify(i)))
        runs["noise_only"].append(timed(noise_only))
    return {clock: summarise(runs, clock, sum(sizes)) for clock in CLOCKS}


def summarise(runs: dict[str, list[dict[str, float]]], clock: str, samples: int) -> dict:
    times = {side: [r[clock] for r in rs] for side, rs in runs.items()}
    pairs = list(zip(times["plain_forward"], times["certify"], times["noise_only"]))
    ratio = statistics.median(p / c for p, c, _ in pairs)
    return {"samples_per_s": {side: samples / statistics.median(t) for side, t in times.items()},
            "ratio": ratio, "met": ratio >= TARGET,
            "noise_bound": statistics.median(p / (p + n) for p, _, n in pairs), "times_s": times}


def main() -> int:
    with torch_threads(THREADS):
        by_model = {label: {**measure(*spec), "pairs": spec[-1]} for label, spec in MODELS.items()}
        env = environment("cpu")
    out = {"benchmark": "certify_throughput",
           "ratio_definition": "certify throughput / plain-forward throughput on the same batch sizes "
                               "(median over alternating pairs of plain time / certify time)",
           "noise_bound_definition": "plain / (plain + noise-only time): the ratio certify could reach if "
                                     "everything but drawing the noise were free",
           "target": TARGET, "target_clock": "wall", "settings": SETTINGS,
           "samples_per_point": sum(batch_sizes(SETTINGS["n0"], SETTINGS["n"], SETTINGS["batch_size"])),
           "threads": THREADS, "models": by_model, "environment": env}
    atomic_write_json(Path(__file__).parent / "results" / "bench_certify.json", out)
    for label, res in by_model.items():
        wall, cpu = res["wall"], res["cpu"]
        print(f"{label}: plain forward {wall['samples_per_s']['plain_forward']:,.0f} samples/s | certify "
              f"{wall['samples_per_s']['certify']:,.0f} samples/s | ratio {wall['ratio']:.3f} (target >= "
              f"{TARGET}) -> {'met' if wall['met'] else 'NOT met'}; CPU-time ratio {cpu['ratio']:.3f}; "
              f"noise bound wall {wall['noise_bound']:.3f} / cpu {cpu['noise_bound']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
