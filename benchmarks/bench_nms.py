"""PSRR-MaxpoolNMS (honed, arXiv:2105.12990; method card 35) beside GreedyNMS and MaxpoolNMS, in one run.

At each box count the arms take turns every round (order reversed on odd rounds, honed.core.benchmark),
on the experiment's synthetic final-stage candidates (the generator of ``honed run 35-psrr-maxpool-nms``).
Judged: the per-round speed-up greedy / PSRR at the largest count, on CPU time (target >= 1: the card's
"faster than GreedyNMS"); also printed: each arm's median time per count and its log-log slope against
the box count (1.0 = linear, 2.0 = quadratic).

The greedy side is honed's GreedyNMS, a Python loop with torchvision's semantics: the compiled peer the
card names, torchvision.ops.nms, cannot import beside this torch (ENVIRONMENT.md: no torchvision build
matches the pinned CPU torch), so the ratio is against honed's loop, and the result says so.
Writes benchmarks/results/nms_psrr_speedup_vs_python_greedy.json.
Usage: python benchmarks/bench_nms.py [--sizes 1000 5000 20000] [--rounds 7] [--seed 0]
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from honed.core.benchmark import interleaved_times, ratios_by_clock, spread, write_result
from honed.core.seed import torch_threads
from honed.data.synthetic_scenes import random_boxes
from honed.experiments.e35_psrr_maxpool_nms import ARMS, PSRRConfig, loglog_slope, run_nms

TARGET = 1.0
THREADS = 1
RESULTS = Path(__file__).parent / "results"


def time_arms(cfg: PSRRConfig, n: int, rounds: int, seed: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of every arm on the same ``n`` random candidates, interleaved."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    boxes = random_boxes(gen, n, cfg.scene_spec("final")).float()
    scores = torch.rand(n, generator=gen)
    calls = {arm: (lambda arm=arm: run_nms(arm, boxes, scores, None, boxes, cfg)) for arm in ARMS}
    return interleaved_times(calls, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = replace(PSRRConfig(), timing_sizes=tuple(args.sizes))
    with torch_threads(THREADS):
        per_size = {n: time_arms(cfg, n, args.rounds, args.seed) for n in args.sizes}
    medians = {arm: [spread(per_size[n][arm]["cpu"])["median"] for n in args.sizes] for arm in ARMS}
    slopes = {arm: loglog_slope(args.sizes, medians[arm]) if len(args.sizes) > 1 else None for arm in ARMS}
    ratios = ratios_by_clock(per_size[args.sizes[-1]], "greedy", "psrr")
    for arm in ARMS:
        cells = "  ".join(f"{n}: {1e3 * s:8.2f} ms" for n, s in zip(args.sizes, medians[arm]))
        slope = "n/a" if slopes[arm] is None else f"{slopes[arm]:.2f}"
        print(f"{arm:14s} {cells}  log-log slope {slope}")
    details = {"sizes": args.sizes, "rounds": args.rounds, "median_cpu_s": medians, "loglog_slope": slopes,
               "speedup_greedy_over_psrr_at_max": ratios, "judged_on": "cpu",
               "peer": "honed's Python-loop GreedyNMS (torchvision.ops.nms cannot import beside this torch)"}
    write_result("nms_psrr_speedup_vs_python_greedy", ratios["cpu"]["median"], TARGET, ">=",
                 f"x (Python-loop greedy / PSRR at {args.sizes[-1]} boxes, CPU time)",
                 "median of per-round ratios, arms interleaved; the compiled torchvision NMS is not measured here",
                 details, THREADS, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
