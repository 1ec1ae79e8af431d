"""Side-by-side speed measurements and the result files of ``benchmarks/bench_*.py`` (issue 15).

A benchmark times two or more callables in one run, alternating their order every round so that a
drifting machine load hits all of them alike, on two clocks: wall time (what a user waits) and this
process's CPU time (what the code costs; on a loaded shared machine the wall clock also measures the
neighbours). A ratio is the median over rounds of the per-round ratio, reported with its quartiles.

Each target is written to ``benchmarks/results/<name>.json`` (``$HONED_BENCHMARKS`` when set, the folder the
report reads) in one stable shape::

    {"name", "ratio", "target", "comparison" ("<=" or ">="), "holds" (None where the target does not
     apply), "applies", "unit", "measured_on", "date", "notes", "details"}

``measured_on`` names the machine, torch, the thread count and the load average at the time.
"""
import datetime
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from honed.core.atomic import atomic_write_json
from honed.core.errors import ConfigError
from honed.core.measure import CLOCKS, interleaved_times  # noqa: F401  (re-exported: the benchmarks import them here)

COMPARISONS = ("<=", ">=")
RESULT_KEYS = ("name", "ratio", "target", "comparison", "holds", "applies", "unit", "measured_on", "date", "notes",
               "details")


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max of ``values``."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q25": q[0], "q75": q[2], "min": min(values), "max": max(values),
            "n": len(values)}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Spread of the per-round ratios ``numerator[i] / denominator[i]`` (paired rounds)."""
    return spread([a / b for a, b in zip(numerator, denominator)])


def ratios_by_clock(times: dict[str, dict[str, list[float]]], numerator: str, denominator: str) -> dict[str, dict]:
    """``{clock: paired_ratio(times[numerator][clock], times[denominator][clock])}``."""
    return {clock: paired_ratio(times[numerator][clock], times[denominator][clock]) for clock in CLOCKS}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def measured_on(threads: int | None = None, device: str = "cpu") -> dict:
    """The machine facts a reader needs to judge a timing."""
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(terse=True), "python": platform.python_version(),
            "torch": torch.__version__, "device": device, "threads": threads or torch.get_num_threads(),
            "load_average": load_average()}


def holds(ratio: float | None, target: float, comparison: str) -> bool:
    if ratio is None:
        return False
    return ratio <= target if comparison == "<=" else ratio >= target


def results_folder(default: Path | str) -> Path:
    """Where benchmark results go: ``$HONED_BENCHMARKS`` when set (the folder the report reads too), else
    ``default`` (a script passes its own ``benchmarks/results``, so it writes there from any directory)."""
    return Path(os.environ.get("HONED_BENCHMARKS") or default)


def write_result(name: str, ratio: float | None, target: float, comparison: str, unit: str, notes: str,
                 details: dict | None = None, threads: int | None = None, folder: Path | None = None,
                 applies: bool = True) -> dict:
    """Write ``<folder>/<name>.json`` (default ``$HONED_BENCHMARKS`` or ``benchmarks/results``) in the stable
    shape, print its one-line summary (ratio next to target, load average) and return the record.
    ``applies=False``: the target does not apply in this setting (the notes say why); the ratio is kept,
    ``holds`` is None and the summary says so instead of a verdict."""
    if comparison not in COMPARISONS:
        raise ConfigError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
    record = {"name": name, "ratio": ratio, "target": target, "comparison": comparison,
              "holds": holds(ratio, target, comparison) if applies else None, "applies": bool(applies),
              "unit": unit, "measured_on": measured_on(threads),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "notes": notes, "details": details or {}}
    folder = Path(folder) if folder is not None else results_folder("benchmarks/results")
    atomic_write_json(folder / f"{name}.json", json.loads(json.dumps(record, default=float)))
    print(summary_line(record))
    return record


def verdict_words(record: dict) -> str:
    """'holds', 'does NOT hold', or 'target does not apply here' for a record that says so."""
    if record.get("applies") is False:
        return "target does not apply here"
    return "holds" if record["holds"] else "does NOT hold"


def summary_line(record: dict) -> str:
    ratio = "-" if record["ratio"] is None else f"{record['ratio']:.3f}"
    verdict = verdict_words(record)
    load = "/".join(f"{x:.1f}" for x in record["measured_on"]["load_average"]) or "n/a"
    return (f"[{record['name']}] {ratio} {record['unit']} (target {record['comparison']} {record['target']}) -> "
            f"{verdict}; load average {load} on {record['measured_on']['cpu_count']} CPUs")
