"""Start N gloo CPU worker processes and collect what each returns (used by TernGrad's experiment and
tests, and usable for any small ``torch.distributed`` job without torchrun).

    def work(rank, world_size, lr):          # module-level, so spawn can pickle it
        ...                                  # the default process group is ready here
        return {"loss": 0.1}

    results = run_workers(work, world_size=2, args=(0.1,))   # [rank 0's value, rank 1's value]

Each worker: joins a fresh gloo group on 127.0.0.1 and a free port, calls ``torch.set_num_threads``
(1 by default: small CPUs), runs ``fn(rank, world_size, *args)``, writes its return value (pickled) to
a temporary file, then ends with ``sys.stdout.flush(); dist.destroy_process_group(); os._exit(code)``:
on torch 2.13 gloo workers that exit normally often die with SIGABRT at interpreter exit.

Under torchrun (``torchrun --nproc_per_node 2 -m honed.cli run 18-terngrad ...``, or several nodes with a
rendezvous endpoint) torchrun has started the processes: :func:`torchrun_main` makes rank 0 run the
command (it alone reads and writes the runs folder) while every other rank waits, and each
``run_workers`` call of rank 0 sends ``fn`` and its arguments to the other ranks, runs its own share and
gathers their values: the same list a local launch returns, from processes on every node.
"""
import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from honed.core.errors import HonedError, InputError


class WorkerError(HonedError, RuntimeError):
    """A worker process raised, died from a signal or returned nothing; names the rank and cause."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(value, fh)
    os.replace(tmp, path)


def _worker_main(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple,
                 out_dir: str, timeout_s: float, threads: int) -> None:
    """Entry point of one spawned worker (module level so it pickles). Workers are gloo CPU processes by
    design: CUDA is hidden from them before anything can touch it (torch's PowerSGD hook, for one, calls
    ``torch.cuda.synchronize`` whenever a GPU is visible, whatever the tensors' device)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.set_num_threads(threads)
    out = Path(out_dir)
    code = 0
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
        _write(out / f"rank_{rank}.pkl", ("ok", fn(rank, world_size, *args)))
    except BaseException as err:  # report every failure to the parent, then exit non-zero
        _write(out / f"rank_{rank}.pkl", ("error", f"{type(err).__name__}: {err}", traceback.format_exc(),
                                          time.time()))
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass
    os._exit(code)


def _collect(out: Path, world_size: int, crash: tuple[int, str] | None) -> list[Any]:
    """Each rank's value. The earliest worker error wins (a crash makes its peers fail next, with
    "connection closed" errors that hide the cause), then missing files."""
    records: dict[int, tuple] = {}
    for rank in range(world_size):
        file = out / f"rank_{rank}.pkl"
        if file.exists():
            with open(file, "rb") as fh:
                records[rank] = pickle.load(fh)
    if crash is not None and crash[0] not in records:  # died without reporting: signal or os._exit
        raise WorkerError(f"worker {crash[0]} of {world_size} died without a result: {crash[1]}")
    errors = sorted((record[3], rank) for rank, record in records.items() if record[0] == "error")
    if errors:
        rank = errors[0][1]
        others = f" ({len(errors) - 1} other worker(s) failed after it)" if len(errors) > 1 else ""
        raise WorkerError(f"worker {rank} of {world_size} failed: {records[rank][1]}{others}\n{records[rank][2]}")
    missing = [rank for rank in range(world_size) if rank not in records]
    if missing:
        raise WorkerError(f"worker {missing[0]} of {world_size} returned nothing (terminated after a peer failed)")
    return [records[rank][1] for rank in range(world_size)]


def run_workers(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (), *,
                timeout_s: float = 120.0, threads_per_worker: int = 1,
                start_method: str = "spawn") -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned gloo CPU processes; return the
    list of their (picklable) return values, indexed by rank.

    fn must be a module-level function (spawn pickles it by name). Each call uses its own free
    port. A worker that raises, dies or hangs past ``timeout_s`` in a collective raises WorkerError
    naming its rank (the other workers are terminated). ``start_method``: "spawn" (default, safe
    anywhere; each worker re-imports torch, and DDP pulls in torch._dynamo: seconds per launch) or
    "fork" (POSIX; workers share the parent's imported modules and start in ~0.1 s); a parent that has
    initialised CUDA cannot fork safely, so "fork" then becomes "spawn". Workers never see a GPU (the
    gloo arms stay on the CPU by design).
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise InputError(f"world_size must be an integer >= 1, got {world_size!r}")
    if start_method not in mp.get_all_start_methods():
        raise InputError(f"start_method must be one of {mp.get_all_start_methods()}, got {start_method!r}")
    if not callable(fn):
        raise InputError(f"fn must be callable, got {type(fn).__name__}")
    if torchrun_rank() is not None:
        return _run_in_torchrun_group(fn, world_size, tuple(args), threads_per_worker)
    if start_method == "fork" and torch.cuda.is_initialized():
        start_method = "spawn"
    for attempt in range(RENDEZVOUS_ATTEMPTS):
        try:
            return _run_once(fn, world_size, args, timeout_s, threads_per_worker, start_method)
        except WorkerError as err:  # only a failed rendezvous is retried: no user code has run yet
            if attempt + 1 == RENDEZVOUS_ATTEMPTS or not any(m in str(err) for m in RENDEZVOUS_FAILURES):
                raise
    raise AssertionError("unreachable")


# Failures of the gloo rendezvous itself (a port taken between free_port() and bind, a connection
# from a stale group on a loaded machine): the group never formed, so a retry on a new port is safe.
RENDEZVOUS_FAILURES = ("connectFullMesh", "Address already in use", "EADDRINUSE")
RENDEZVOUS_ATTEMPTS = 3


def _run_once(fn: Callable[..., Any], world_size: int, args: Sequence[Any], timeout_s: float,
              threads_per_worker: int, start_method: str) -> list[Any]:
    """One launch of the workers on a fresh free port (see :func:`run_workers`)."""
    with tempfile.TemporaryDirectory(prefix="honed_workers_") as tmp:
        crash = None
        try:
            mp.start_processes(_worker_main, nprocs=world_size, join=True, start_method=start_method,
                               args=(fn, world_size, free_port(), tuple(args), tmp, timeout_s,
                                     threads_per_worker))
        except mp.ProcessExitedException as err:
            crash = (err.error_index, str(err))
        except mp.ProcessRaisedException as err:
            raise WorkerError(f"worker {err.error_index} failed: {err}") from None
        return _collect(Path(tmp), world_size, crash)


# ----------------------------------------------------------------------------- under torchrun

TORCHRUN_TIMEOUT = timedelta(hours=24)  # ranks > 0 wait this long for rank 0's next call (or its end)


def torchrun_rank() -> int | None:
    """This process's rank when torchrun (or another ``env://`` launcher) started it, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        return int(os.environ["RANK"])
    return None


def torchrun_main(command: Callable[[], int]) -> int:
    """Run a honed command under torchrun: rank 0 runs ``command()``; the other ranks serve its
    ``run_workers`` calls until it ends. Every rank then leaves with ``os._exit`` (see the module note);
    a failed rank 0 leaves at once, and torchrun ends the other ranks."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TORCHRUN_TIMEOUT)
    code = 1
    try:
        if dist.get_rank() == 0:
            code = command()
            if code == 0:
                dist.broadcast_object_list([None], src=0)  # tells the other ranks the command is over
        else:
            code = _serve_rank_zero()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if code == 0:
            dist.destroy_process_group()
        os._exit(code)


def _serve_rank_zero() -> int:
    """Ranks > 0: run each ``(fn, world_size, args, threads)`` rank 0 sends, until it sends None."""
    from honed.core.seed import torch_threads

    while True:
        call = [None]
        dist.broadcast_object_list(call, src=0)
        if call[0] is None:
            return 0
        fn, world_size, args, threads = call[0]
        try:
            with torch_threads(threads):
                record = ("ok", fn(dist.get_rank(), world_size, *args))
        except Exception as err:
            record = ("error", f"{type(err).__name__}: {err}", traceback.format_exc())
        dist.gather_object(record, None, dst=0)


def _run_in_torchrun_group(fn: Callable[..., Any], world_size: int, args: tuple, threads: int) -> list[Any]:
    """Rank 0 under torchrun: send the call to every rank, run rank 0's share, gather the values."""
    from honed.core.seed import torch_threads

    if not dist.is_initialized():
        raise WorkerError("under torchrun, run honed commands through honed's CLI (torchrun_main)")
    if world_size != dist.get_world_size():
        raise InputError(f"this call needs {world_size} workers but torchrun started {dist.get_world_size()}: "
                         f"start it with that many processes in all, or configure {dist.get_world_size()}")
    dist.broadcast_object_list([(fn, world_size, args, threads)], src=0)
    with torch_threads(threads):
        records = [("ok", fn(0, world_size, *args))]  # an error here ends rank 0, and torchrun the rest
    gathered: list[Any] = [None] * world_size
    dist.gather_object(records[0], gathered, dst=0)
    for rank, record in enumerate(gathered):
        if record[0] == "error":
            raise WorkerError(f"worker {rank} of {world_size} failed: {record[1]}\n{record[2]}")
    return [record[1] for record in gathered]
