"""Overhead of honed's train loop against a bare PyTorch loop, side by side in one run.

Same model, data, batch order and optimizer; the two loops alternate over several rounds and the
median time per epoch of each is compared. Target: honed / bare <= 1.03. Writes
benchmarks/results/bench_loop.json.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from honed.core.atomic import atomic_write_json
from honed.core.loop import train
from honed.core.seed import environment
from honed.data import Batches, create_dataset
from honed.models import create_model

TARGET = 1.03


def bare_epoch(model, batches, opt):
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def main(rounds: int = 21, epochs: int = 1) -> int:
    torch.manual_seed(0)
    data = create_dataset("digits", flat=True).train
    batches = Batches(data, 64, seed=0)
    model = create_model("mlp", in_features=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    times = {"bare": [], "honed": []}
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(epochs):
            bare_epoch(model, batches, opt)
        times["bare"].append((time.perf_counter() - start) / epochs)
        start = time.perf_counter()
        train(model, batches, opt, epochs, progress=False)
        times["honed"].append((time.perf_counter() - start) / epochs)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["honed"] / med["bare"]
    out = {"benchmark": "loop_overhead", "median_epoch_s": med, "ratio": ratio, "target": TARGET,
           "met": ratio <= TARGET, "rounds": rounds, "environment": environment("cpu")}
    atomic_write_json(Path(__file__).parent / "results" / "bench_loop.json", out)
    print(f"bare {med['bare'] * 1e3:.1f} ms/epoch | honed {med['honed'] * 1e3:.1f} ms/epoch | "
          f"ratio {ratio:.3f} (target <= {TARGET}) -> {'met' if ratio <= TARGET else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
