"""``honed reproduce --jobs N``: several experiments at once, each in its own (spawned) process.

Each job runs :func:`honed.core.runner.run_experiment` exactly as a sequential run would (same seeds,
same folders, same resume), so the result files are identical apart from timings. A job whose config
leaves torch's thread count alone (``threads = 0``) gets ``cores // jobs`` threads, so N jobs never
oversubscribe the machine. Log lines come back to the parent through a queue and print under one
progress display; a crash in one job is reported and the others go on.
"""
import multiprocessing as mp
import os
import queue
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

from honed.core.config import to_dict

Done = Callable[[str, dict | None, str], None]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_job(exp_id: str, config: dict, preset: str, out: str, device: str, force: bool, lines: Any) -> dict:
    """In a worker process: run one experiment and return its result as JSON."""
    from honed.core.config import from_dict
    from honed.core.experiment import load_experiments
    from honed.core.runner import run_experiment

    exp = load_experiments().get(exp_id)
    cfg = from_dict(exp.Config, config)
    result = run_experiment(exp(), cfg, preset, Path(out), device, force=force, progress=False,
                            log=lambda line: lines.put((exp_id, line)),
                            on_seed=lambda s: lines.put((exp_id, f"seed {s}")))
    return result.to_json()


def expected_seconds(root: Path, exp_id: str) -> float:
    """The runtime of this experiment's newest stored result (for the ETA), or 0 when none exists."""
    from honed.core.report import find_runs

    entry = find_runs(root).get(exp_id) if (root / exp_id).exists() else None
    return entry.result.runtime_s if entry and entry.result else 0.0


def run_parallel(configs: dict[str, Any], preset: str, out: Path, device: str, force: bool, jobs: int,
                 say: Callable[[str], None], done: Done) -> None:
    """Run every ``{exp_id: config}`` on ``jobs`` processes; ``say(line)`` for progress lines and
    ``done(exp_id, result_json or None, error)`` as each finishes (in completion order)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                                        initargs=(threads,)) as pool:
        lines = manager.Queue()
        futures: dict[Future, str] = {
            pool.submit(_run_job, exp_id, {k: v for k, v in to_dict(cfg).items()}, preset, str(out), str(device),
                        force, lines): exp_id for exp_id, cfg in configs.items()}
        pending = set(futures)
        while pending:
            _drain(lines, say)
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                error = future.exception()
                done(futures[future], None if error else future.result(),
                     "" if error is None else f"{error.__class__.__name__}: {error}")
            time.sleep(0.2)
        _drain(lines, say)


def _drain(lines: Any, say: Callable[[str], None]) -> None:
    while True:
        try:
            exp_id, line = lines.get_nowait()
        except queue.Empty:
            return
        say(f"{exp_id}: {line}")
