"""Overhead of honed's train loop against a bare PyTorch loop, side by side in one run.

Same model (the digits MLP 64-256-256-10 with BN), data, batch order and optimizer, one torch thread;
the two loops alternate every round (order flipped each round) and the per-round ratio honed / bare
is summarised by its median and quartiles, on wall time and on process CPU time (on a loaded shared
machine the wall clock also measures the neighbours; CPU time is what the loop costs). Target:
honed / bare <= 1.03 on CPU time. Writes benchmarks/results/train_loop_overhead.json.
Usage: python benchmarks/bench_loop.py [--rounds 31]
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from honed.core.benchmark import interleaved_times, ratios_by_clock, results_folder, spread, write_result
from honed.core.loop import train
from honed.core.seed import torch_threads
from honed.data import Batches, create_dataset
from honed.models import create_model

TARGET = 1.03
THREADS = 1
RESULTS = results_folder(Path(__file__).parent / "results")  # or $HONED_BENCHMARKS


def bare_epoch(model, batches, opt) -> None:
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=61)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = create_dataset("digits", flat=True).train
    batches = Batches(data, 64, seed=0)
    model = create_model("mlp", in_features=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with torch_threads(THREADS):
        times = interleaved_times({"bare": lambda: bare_epoch(model, batches, opt),
                                   "honed": lambda: train(model, batches, opt, 1, progress=False)}, args.rounds)
    ratios = ratios_by_clock(times, "honed", "bare")
    details = {"epoch_s": {side: {clock: spread(t) for clock, t in by_clock.items()} for side, by_clock in times.items()},
               "ratio_honed_over_bare": ratios, "rounds": args.rounds, "batches_per_epoch": len(batches),
               "judged_on": "cpu"}
    for clock, r in ratios.items():
        print(f"{clock:>4}: bare {details['epoch_s']['bare'][clock]['median'] * 1e3:.1f} ms/epoch | honed "
              f"{details['epoch_s']['honed'][clock]['median'] * 1e3:.1f} ms/epoch | ratio {r['median']:.3f} "
              f"(quartiles {r['q25']:.3f}-{r['q75']:.3f})")
    write_result("train_loop_overhead", ratios["cpu"]["median"], TARGET, "<=", "x (honed / bare PyTorch, CPU time)",
                 "median over interleaved rounds of one epoch each, one torch thread; wall-clock ratio in details",
                 details, THREADS, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
