"""PSRR-MaxpoolNMS (honed, arXiv:2105.12990; method card 35) beside GreedyNMS and MaxpoolNMS, in
one run: median CPU time per call at growing box counts, the speed ratio greedy / PSRR and the log-log
slope of each method's time against the box count (1.0 = linear, 2.0 = quadratic).

The peer the card names, torchvision.ops.nms, cannot import beside this torch (see ENVIRONMENT.md), so
GreedyNMS is honed's own vectorised implementation with torchvision's semantics. Boxes are random
candidates of the experiment's synthetic final stage (the same generator as ``honed run
35-psrr-maxpool-nms``). Writes benchmarks/results/bench_nms.json; figures are measured, never typed.
Usage: python benchmarks/bench_nms.py [--sizes 1000 5000 20000] [--repeats 7] [--seed 0] [--threads 1]
"""
import argparse
from dataclasses import replace
from pathlib import Path

from honed.core.atomic import atomic_write_json
from honed.core.seed import environment, seed_everything, torch_threads
from honed.experiments.e35_psrr_maxpool_nms import ARMS, PSRRConfig, loglog_slope, timing

TARGET_SPEEDUP = 1.0  # card headline: PSRR-MaxpoolNMS faster than GreedyNMS at the largest count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    seed_everything(args.seed)
    cfg = replace(PSRRConfig(), timing_sizes=tuple(args.sizes), timing_repeats=args.repeats)
    with torch_threads(args.threads):
        times = timing(cfg, args.seed)
    rows = {arm: {"ms": dict(zip(map(str, args.sizes), times[arm])),
                  "loglog_slope": loglog_slope(args.sizes, times[arm]) if len(args.sizes) > 1 else None}
            for arm in ARMS}
    speedup = times["greedy"][-1] / times["psrr"][-1]
    out = {"sizes": args.sizes, "repeats": args.repeats, "arms": rows,
           "greedy_over_psrr_at_max": speedup, "target": TARGET_SPEEDUP, "met": speedup >= TARGET_SPEEDUP,
           "environment": environment("cpu", args.threads)}
    path = atomic_write_json(Path(__file__).parent / "results" / "bench_nms.json", out)
    for arm in ARMS:
        cells = "  ".join(f"{n}: {ms:8.2f} ms" for n, ms in zip(args.sizes, times[arm]))
        print(f"{arm:14s} {cells}  slope {rows[arm]['loglog_slope'] or float('nan'):.2f}")
    print(f"greedy / psrr at {args.sizes[-1]} boxes: {speedup:.2f}x (target >= {TARGET_SPEEDUP}) -> {path}")


if __name__ == "__main__":
    main()
