"""PSRR-MaxpoolNMS (honed, arXiv:2105.12990; method card 35) beside GreedyNMS and MaxpoolNMS, in one run.

At each box count the arms take turns every round (order reversed on odd rounds, honed.core.benchmark),
on the experiment's synthetic final-stage candidates (the generator of ``honed run 35-psrr-maxpool-nms``).
Judged: the per-round speed-up greedy / PSRR at the largest count, on CPU time (target >= 1: the card's
"faster than GreedyNMS"); also printed: each arm's median time per count and its log-log slope against
the box count (1.0 = linear, 2.0 = quadratic).

Two greedy sides:
- honed's GreedyNMS, a Python loop with torchvision's semantics (always; result
  nms_psrr_speedup_vs_python_greedy.json);
- the compiled ``torchvision.ops.nms`` the card names, where torchvision imports (result
  nms_psrr_speedup_vs_torchvision.json). No torchvision build matches the pinned CPU torch of .venv
  (ENVIRONMENT.md), so ``make bench-torchvision`` runs this script in .venv-torchvision, a matching
  torch + torchvision pair from the registry (constraints-torchvision.txt); every arm then runs on that
  torch in one process. There the kept indices of honed's GreedyNMS and torchvision's are also compared
  (an oracle check, recorded; a mismatch fails the script).
Usage: python benchmarks/bench_nms.py [--sizes 1000 5000 20000] [--rounds 7] [--seed 0]
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from honed.core.benchmark import interleaved_times, ratios_by_clock, results_folder, spread, write_result
from honed.core.seed import torch_threads
from honed.data.synthetic_scenes import random_boxes
from honed.experiments.e35_psrr_maxpool_nms import ARMS, PSRRConfig, loglog_slope, run_nms

TARGET = 1.0
THREADS = 1
RESULTS = results_folder(Path(__file__).parent / "results")  # or $HONED_BENCHMARKS
PEER = "torchvision"
MEASURE_PEER = "make bench-torchvision"


def compiled_nms():
    """``(torchvision.ops.nms, torchvision's version)`` where it imports and runs beside this torch, else
    ``(None, why not)``."""
    try:
        import torchvision
        from torchvision.ops import nms
        nms(torch.zeros(1, 4), torch.ones(1), 0.5)
    except Exception as err:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return nms, torchvision.__version__


def candidates(cfg: PSRRConfig, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10_000 + seed)
    boxes = random_boxes(gen, n, cfg.scene_spec("final")).float()
    return boxes, torch.rand(n, generator=gen)


def time_arms(cfg: PSRRConfig, n: int, rounds: int, seed: int, peer=None) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of every arm (and of ``peer``, a compiled NMS, when given) on the same ``n``
    random candidates, interleaved."""
    boxes, scores = candidates(cfg, n, seed)
    calls = {arm: (lambda arm=arm: run_nms(arm, boxes, scores, None, boxes, cfg)) for arm in ARMS}
    if peer is not None:
        calls[PEER] = lambda: peer(boxes, scores, cfg.iou_threshold)
    return interleaved_times(calls, rounds)


def same_keep_as_peer(cfg: PSRRConfig, sizes: list[int], seed: int, peer) -> dict[int, bool]:
    """Per box count: does honed's GreedyNMS keep exactly torchvision's indices, in the same order?"""
    same = {}
    for n in sizes:
        boxes, scores = candidates(cfg, n, seed)
        same[n] = torch.equal(run_nms("greedy", boxes, scores, None, boxes, cfg),
                              peer(boxes, scores, cfg.iou_threshold))
    return same


def print_medians(sizes: list[int], medians: dict[str, list[float]], slopes: dict) -> None:
    for arm, times in medians.items():
        cells = "  ".join(f"{n}: {1e3 * s:8.2f} ms" for n, s in zip(sizes, times))
        slope = "n/a" if slopes[arm] is None else f"{slopes[arm]:.2f}"
        print(f"{arm:14s} {cells}  log-log slope {slope}")


def write_peer_result(args, per_size: dict, details: dict, same_keep: dict[int, bool], version: str) -> None:
    n = args.sizes[-1]
    ratios = ratios_by_clock(per_size[n], PEER, "psrr")
    at_sizes = {m: ratios_by_clock(per_size[m], PEER, "psrr")["cpu"]["median"] for m in args.sizes}
    peer_details = {**details, "speedup_torchvision_over_psrr_at_max": ratios,
                    "speedup_torchvision_over_psrr_by_size": at_sizes, "torchvision": version,
                    "greedy_keeps_equal_torchvision": same_keep,
                    "peer": f"torchvision.ops.nms {version} (compiled), on torch {torch.__version__}"}
    write_result("nms_psrr_speedup_vs_torchvision", ratios["cpu"]["median"], TARGET, ">=",
                 f"x (torchvision.ops.nms / PSRR at {n} boxes, CPU time)",
                 "median of per-round ratios, arms interleaved in one process on the torch torchvision matches",
                 peer_details, THREADS, RESULTS)
    print("torchvision / PSRR by box count: " + ", ".join(f"{m}: {r:.2f}x" for m, r in at_sizes.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = replace(PSRRConfig(), timing_sizes=tuple(args.sizes))
    peer, version_or_why = compiled_nms()
    with torch_threads(THREADS):
        per_size = {n: time_arms(cfg, n, args.rounds, args.seed, peer) for n in args.sizes}
    arms = (*ARMS, PEER) if peer is not None else ARMS
    medians = {arm: [spread(per_size[n][arm]["cpu"])["median"] for n in args.sizes] for arm in arms}
    slopes = {arm: loglog_slope(args.sizes, medians[arm]) if len(args.sizes) > 1 else None for arm in arms}
    print_medians(args.sizes, medians, slopes)
    details = {"sizes": args.sizes, "rounds": args.rounds, "median_cpu_s": medians, "loglog_slope": slopes,
               "judged_on": "cpu"}
    ratios = ratios_by_clock(per_size[args.sizes[-1]], "greedy", "psrr")
    peer_note = ("torchvision.ops.nms is measured beside it: nms_psrr_speedup_vs_torchvision.json" if peer
                 else f"torchvision.ops.nms cannot run beside this torch ({version_or_why}); "
                      f"{MEASURE_PEER} measures it")
    write_result("nms_psrr_speedup_vs_python_greedy", ratios["cpu"]["median"], TARGET, ">=",
                 f"x (Python-loop greedy / PSRR at {args.sizes[-1]} boxes, CPU time)",
                 "median of per-round ratios, arms interleaved",
                 {**details, "speedup_greedy_over_psrr_at_max": ratios,
                  "peer": f"honed's Python-loop GreedyNMS; {peer_note}"}, THREADS, RESULTS)
    if peer is None:
        print(f"compiled torchvision.ops.nms not measured: {version_or_why}. Run `{MEASURE_PEER}`.")
        return 0
    same_keep = same_keep_as_peer(cfg, args.sizes, args.seed, peer)
    write_peer_result(args, per_size, details, same_keep, version_or_why)
    if not all(same_keep.values()):
        print(f"honed's GreedyNMS keeps different boxes than torchvision.ops.nms at {same_keep}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
