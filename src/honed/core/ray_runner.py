"""``honed reproduce --ray auto|ADDRESS``: every seed of every experiment as one Ray task (extra ``cluster``).

Each task runs :func:`honed.core.runner.run_one_seed`, the local runner's own seed step, into the
local layout ``<out>/<ID>/<config hash>/seed_<N>/`` (resolved to an absolute path on the driver), so a
task resumes from the parts it finished before, like a local run. When the driver's folder cannot be
written on the task's machine (no shared filesystem), the task writes under that machine's temporary
folder instead. Either way it sends back its seed's ``seed_result.json`` and ``part_*.json`` files, and
the driver writes the ones it does not already hold. When every seed of an experiment is in, the driver
runs :func:`honed.core.runner.run_experiment`, which finds them all finished and only aggregates:
``result.json``, its plot and the report come out as a local run writes them.

A task whose worker dies (killed, out of memory, its machine lost) is retried by Ray up to
``RETRIES`` times; an exception in the experiment itself is not retried (it would fail again) and
marks that experiment crashed while the others go on.

    honed reproduce 22 35 --preset smoke --ray auto          # RAY_ADDRESS, `ray start`'s cluster, or a new local one
    honed reproduce --ray ray://head-node:10001             # Ray Client
"""
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

from honed.core.errors import require_extra

RETRIES = 3
SHIPPED = ("seed_result.json", "part_*.json")  # what the driver needs to aggregate, and a retry to resume
Done = Callable[[str, dict | None, str], None]


def connect(address: str) -> Any:
    """The ``ray`` module, connected: ``auto`` lets Ray choose (``RAY_ADDRESS``, the cluster ``ray start``
    began on this machine, else a new local instance); anything else is a cluster address. A session
    already connected (``ray.init`` called by the caller) is used as it is."""
    ray = require_extra("ray", "cluster")
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address)
    return ray


def seed_folder(out: str, exp_cls: type, cfg: Any, device: str, seed: int) -> Path:
    """The seed's folder under ``out``, or under this machine's temporary folder when ``out`` cannot be
    created here (a worker without the driver's filesystem)."""
    path = seed_dir(Path(out), exp_cls, cfg, device, seed)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = seed_dir(Path(tempfile.gettempdir()) / "honed-ray", exp_cls, cfg, device, seed)
        path.mkdir(parents=True, exist_ok=True)
    return path


def seed_dir(out: Path, exp_cls: type, cfg: Any, device: str, seed: int) -> Path:
    """``<out>/<ID>/<config hash>/seed_<N>``, as the local runner names it."""
    from honed.core.runner import run_dir

    return run_dir(out, exp_cls.id, cfg, device) / f"seed_{seed}"


def seed_task(exp_cls: type, cfg: Any, seed: int, out: str, device: str, lines: Any) -> dict[str, str]:
    """In a Ray worker: run (or resume) one seed; return its finished files ``{name: text}``."""
    import torch

    from honed.core.runner import run_one_seed

    def say(line: str) -> None:
        if lines is not None:
            lines.put((exp_cls.id, line))

    folder = seed_folder(out, exp_cls, cfg, device, seed)
    say(f"seed {seed} on {socket.gethostname()} (pid {os.getpid()})")
    run_one_seed(exp_cls(), cfg, seed, folder, torch.device(device), False, say)
    return {f.name: f.read_text(encoding="utf-8") for pattern in SHIPPED for f in sorted(folder.glob(pattern))}


def write_shipped(folder: Path, files: dict[str, str]) -> None:
    """Write the files a task sent back, unless this folder already holds them (shared filesystem)."""
    from honed.core.atomic import atomic_write_text

    for name, text in files.items():
        target = folder / Path(name).name
        if not (target.exists() and target.read_text(encoding="utf-8") == text):
            atomic_write_text(target, text)


def prepare(exp_cls: type, cfg: Any, out: Path, device: str, force: bool) -> bool:
    """Make (or, with ``force``, remake) the run folder and check it belongs to this config, as the local
    runner does; True when its result is already stored (nothing to compute)."""
    from honed.core.runner import check_run_dir, make_folder, result_name, run_dir

    path = run_dir(out, exp_cls.id, cfg, device)
    make_folder(path.parent)
    if force and path.exists():
        shutil.rmtree(path)
    make_folder(path)
    check_run_dir(path, exp_cls.id, cfg, device)
    return (path / result_name(cfg)).exists()


def run_on_ray(address: str, experiments: dict[str, tuple[type, Any]], preset: str, out: Path, device: str,
               force: bool, say: Callable[[str], None], done: Done) -> None:
    """Run every ``{exp_id: (Experiment class, config)}`` as Ray tasks, one per seed; ``say(line)`` for
    progress lines and ``done(exp_id, result_json or None, error)`` as each experiment finishes."""
    ray = connect(address)
    from ray.util.queue import Queue

    out = Path(out).resolve()
    lines = Queue()
    task = ray.remote(seed_task).options(max_retries=RETRIES, retry_exceptions=False, num_cpus=1,
                                         num_gpus=1 if str(device).startswith("cuda") else 0)
    refs, waiting, errors = {}, {}, {}
    for exp_id, (exp_cls, cfg) in experiments.items():
        stored = prepare(exp_cls, cfg, out, device, force)
        waiting[exp_id] = set() if stored else set(cfg.seeds)
        for seed in waiting[exp_id]:
            refs[task.remote(exp_cls, cfg, seed, str(out), str(device), lines)] = (exp_id, seed)

    def finish(exp_id: str) -> None:
        aggregate_on_driver(exp_id, *experiments[exp_id], preset, out, device, errors.get(exp_id), say, done)

    for exp_id in [i for i, seeds in waiting.items() if not seeds]:
        finish(exp_id)
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
        drain(lines, say)
        for ref in ready:
            exp_id, seed = refs.pop(ref)
            exp_cls, cfg = experiments[exp_id]
            try:
                write_shipped(seed_dir(out, exp_cls, cfg, device, seed), ray.get(ref))
            except Exception as err:  # the experiment raised, or its worker died RETRIES + 1 times
                errors.setdefault(exp_id, f"seed {seed}: {task_error(err)}")
            waiting[exp_id].discard(seed)
            if not waiting[exp_id]:
                finish(exp_id)
    drain(lines, say)


def aggregate_on_driver(exp_id: str, exp_cls: type, cfg: Any, preset: str, out: Path, device: str,
                        error: str | None, say: Callable[[str], None], done: Done) -> None:
    """Every seed of ``exp_id`` is in: aggregate them with the local runner (it computes nothing)."""
    from honed.core.runner import run_experiment

    if error is not None:
        done(exp_id, None, error)
        return
    try:
        result = run_experiment(exp_cls(), cfg, preset, out, device, progress=False,
                                log=lambda line: say(f"{exp_id}: {line}"))
    except Exception as err:
        done(exp_id, None, f"{err.__class__.__name__}: {err}")
        return
    done(exp_id, result.to_json(), "")


def task_error(err: BaseException) -> str:
    """One line for a failed task: the experiment's own exception when Ray wrapped one."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{cause.__class__.__name__}: {text[0] if text else ''}"


def drain(lines: Any, say: Callable[[str], None]) -> None:
    """Print every progress line the tasks have queued so far."""
    while not lines.empty():
        exp_id, line = lines.get_nowait()
        say(f"{exp_id}: {line}")
