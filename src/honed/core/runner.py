"""Runs an experiment: folders, locks, seeds, resume, aggregation, result file and plot.

Layout: ``<out>/<ID>/<config hash>[-<device>]/config.json``, ``.../seed_<N>/seed_result.json`` (one per
finished seed, with per-example outcomes), ``.../result.json`` (the result of the config's default seeds;
another seed set writes ``result_seeds_<seeds>.json``) and its plot. A finished seed is never recomputed;
a run killed in the middle of a seed resumes from that seed's cached parts and training checkpoints,
generators included. Every piece carries a checksum: a damaged one is named, moved aside and recomputed.
A lock beside the folder (``.<hash>.lock``) makes a second identical run wait for the first.
"""
import hashlib
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from filelock import FileLock, Timeout

from honed.core.aggregate import aggregate, mean_curve, split_outcomes, summarise  # noqa: F401  (re-exported)
from honed.core.atomic import atomic_write_json, sweep_temp_files
from honed.core.config import UNHASHED_FIELDS, ExperimentConfig, config_hash, to_dict, validate_config
from honed.core.errors import CorruptFileError, HonedError, StoreError
from honed.core.experiment import Experiment, Result, SeedOutput
from honed.core.progress import bars_allowed
from honed.core.seed import seed_everything, source_digest, torch_threads
from honed.core.runtime_ledger import RESTORED_SECONDS, note_restored_seconds
from honed.core.store import move_aside, read_checked_entry, read_checked_json, write_checked_json

Log = Callable[[str], None] | None


@dataclass
class RunContext:
    """Handed to ``Experiment.run_seed``: where to write, which device, whether to show progress."""

    dir: Path
    device: torch.device
    seed: int
    progress: bool = True
    log: Log = None  # one status line per computed part (the CLI prints it)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Return the JSON value stored under ``key`` in this seed's folder, computing and storing
        it (with its checksum and compute time) first if absent or damaged. Use it for each arm so a
        killed seed resumes per arm."""
        path = self.dir / f"part_{key}.json"
        if path.exists():
            try:
                stored, info = read_checked_entry(path)
                if not written_by_other_code(path, info, self._say):
                    note_restored_seconds(runtime_of(info))
                    return stored
            except CorruptFileError as err:
                self._say(f"{err}; moved aside to {move_aside(path).name}, recomputing")
        ledger = RESTORED_SECONDS.get() or []
        before, start = sum(ledger), time.perf_counter()
        value = compute()
        spent = time.perf_counter() - start + sum(ledger) - before
        write_checked_json(path, value, runtime_s=spent, source=source_digest())
        self._say(f"seed {self.seed}: {key} done in {time.perf_counter() - start:.1f} s")
        return value

    def checkpoint(self, key: str) -> Path:
        """Path for a training checkpoint of this seed (used by ``train(..., checkpoint=...)``)."""
        return self.dir / f"ckpt_{key}.safetensors"

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)


def runtime_of(info: dict[str, Any]) -> float:
    """The compute seconds recorded beside a stored piece (0 when none or unreadable)."""
    try:
        return float(info.get("runtime_s") or 0.0)
    except (ValueError, TypeError):
        return 0.0


def written_by_other_code(path: Path, info: dict[str, Any], say: Callable[[str], None]) -> bool:
    """True (and one line said) when a stored piece of a run (``info``: what was written beside its
    value) records another honed source digest than this code's: a resumed run recomputes it rather
    than mix the output of two versions of honed in one result. Files that record no source (written
    before sources were recorded) are trusted."""
    source = info.get("source")
    if source is None or source == source_digest():
        return False
    say(f"{path.name} was written by other honed code (source {source}, now {source_digest()}): recomputing")
    return True


def read_json(path: Path) -> Any:
    """Parse a JSON file (checked or plain); StoreError naming the file if it is corrupt."""
    try:
        return read_checked_json(path)
    except CorruptFileError as err:
        raise StoreError(f"{err}; delete it or rerun with --force") from None


def run_dir(out: Path, exp_id: str, cfg: ExperimentConfig, device: str | torch.device = "cpu") -> Path:
    """``out/ID/<config hash>`` (``-cuda`` appended off the CPU: the device is part of a run's identity)."""
    kind = torch.device(device).type
    return Path(out) / exp_id / (config_hash(cfg) + ("" if kind == "cpu" else f"-{kind}"))


def result_name(cfg: ExperimentConfig) -> str:
    """``result.json`` for the config's default seeds, else ``result_seeds_<seeds>.json``: a run of other
    seeds never overwrites the result of these."""
    seeds = tuple(cfg.seeds)
    if seeds == tuple(type(cfg)().seeds):
        return "result.json"
    tag = "-".join(map(str, seeds))
    if len(tag) > 40:
        tag = hashlib.sha256(tag.encode()).hexdigest()[:12]
    return f"result_seeds_{tag}.json"


def plot_name(result_file: str) -> str:
    """The plot beside a result file: ``plot.png`` for ``result.json``, ``plot_seeds_X.png`` otherwise."""
    return "plot" + result_file[len("result"):-len(".json")] + ".png"


def check_run_dir(path: Path, exp_id: str, cfg: ExperimentConfig, device: str | torch.device = "cpu") -> None:
    """Refuse to write into a folder holding a different experiment's or config's files."""
    import json

    meta = path / "config.json"
    want = {"id": exp_id, "config": json.loads(json.dumps(to_dict(cfg), default=list))}
    for key in UNHASHED_FIELDS:
        want["config"].pop(key)
    kind = torch.device(device).type
    if kind != "cpu":
        want["device"] = kind
    if meta.exists():
        have = read_json(meta)
        if have != want:
            raise StoreError(f"{path} holds a run of another config or experiment; "
                             f"move it away or rerun with --force")
    else:
        atomic_write_json(meta, want)


@contextmanager
def run_lock(path: Path, log: Log) -> Iterator[None]:
    """Hold ``.<folder>.lock`` beside the run folder; a second run of the same config waits for it."""
    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log is not None:
            log(f"another run of this config holds {lock.lock_file}; waiting for it to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def make_folder(path: Path) -> bool:
    """Create the run folder (True if it is new); a place that cannot hold it is one clear StoreError."""
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"cannot create the run folder {path}: a file is in the way") from None
    except OSError as err:
        raise StoreError(f"cannot create the run folder {path}: {err.strerror or err}") from None
    return not existed


def run_experiment(exp: Experiment, cfg: ExperimentConfig, preset: str, out: Path,
                   device: torch.device | str, force: bool = False, progress: bool = True,
                   on_seed: Callable[[int], None] | None = None, log: Log = None) -> Result:
    """Run (or resume, or load) ``exp`` under ``cfg`` over ``cfg.seeds`` and return its Result.
    ``on_seed(seed)`` is called as each seed starts, ``log(line)`` as each cached part finishes."""
    validate_config(cfg)
    device = torch.device(device)
    path = run_dir(out, exp.id, cfg, device)
    make_folder(path.parent)
    with run_lock(path, log):
        if force and path.exists():
            shutil.rmtree(path)
        created = make_folder(path)
        sweep_temp_files(path)
        check_run_dir(path, exp.id, cfg, device)
        done = path / result_name(cfg)
        finished = load_finished(exp, done, cfg, log)
        if finished is not None:
            return finished
        try:
            outputs = [run_one_seed(exp, cfg, s, path / f"seed_{s}", device, progress, log, on_seed)
                       for s in cfg.seeds]
        except HonedError:
            if created and not list(path.glob("seed_*/seed_result.json")):
                shutil.rmtree(path, ignore_errors=True)  # refused before any work: leave no orphan folder
            raise
        result = aggregate(exp, cfg, preset, outputs, device)
        atomic_write_json(done, result.to_json())
        write_plot(exp, result, path / plot_name(done.name))
        return result


def load_finished(exp: Experiment, done: Path, cfg: ExperimentConfig, log: Log) -> Result | None:
    """The stored result for these seeds (its plot redrawn if a kill lost it), or None to compute it."""
    if not done.exists():
        return None
    try:
        old = Result.from_json(read_checked_json(done))
    except (CorruptFileError, KeyError, TypeError, ValueError, AttributeError) as err:
        if log is not None:
            log(f"{done} is unreadable ({err.__class__.__name__}); moved aside, re-aggregating from the seeds")
        move_aside(done)
        return None
    if old.seeds != list(cfg.seeds):
        return None
    if log is not None and old.environment.get("honed_source") not in (None, source_digest()):
        log(f"note: {done} was written by other honed code (source {old.environment['honed_source']}, "
            f"now {source_digest()}); rerun with --force to refresh it")
    if not (done.parent / plot_name(done.name)).exists():
        write_plot(exp, old, done.parent / plot_name(done.name))
    return old


def write_plot(exp: Experiment, result: Result, path: Path) -> None:
    from honed.core.plots import save_experiment_plot

    save_experiment_plot(exp, result, path)


def run_one_seed(exp: Experiment, cfg: ExperimentConfig, seed: int, seed_dir: Path, device: torch.device,
                 progress: bool, log: Log = None, on_seed: Callable[[int], None] | None = None) -> SeedOutput:
    """Load the seed's stored result, or run it (inside the config's thread count) and store it with its
    checksum. A damaged stored piece (seed result, part, tensor file) is named, moved aside and recomputed."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    file = seed_dir / "seed_result.json"
    if file.exists():
        try:
            value, info = read_checked_entry(file)
            if not written_by_other_code(file, info, log or (lambda line: None)):
                return SeedOutput.from_json(value)
        except CorruptFileError as err:
            if log is not None:
                log(f"{err}; moved aside to {move_aside(file).name}, recomputing seed {seed}")
        except TypeError:
            raise StoreError(f"{file} is not a honed seed result; delete it or rerun with --force") from None
    if on_seed:
        on_seed(seed)
    for attempt in range(2):
        try:
            output = compute_seed(exp, cfg, seed, seed_dir, device, progress, log)
            break
        except CorruptFileError as err:
            if attempt or not err.path or not Path(err.path).exists():
                raise
            if log is not None:
                log(f"{err}; moved aside to {move_aside(err.path).name}, recomputing")
    write_checked_json(file, output.to_json(), source=source_digest())
    return output


def compute_seed(exp: Experiment, cfg: ExperimentConfig, seed: int, seed_dir: Path, device: torch.device,
                 progress: bool, log: Log) -> SeedOutput:
    """Run one seed; its runtime counts this process's work plus the earlier work it restored."""
    seed_everything(seed)
    ledger: list[float] = []
    token = RESTORED_SECONDS.set(ledger)
    start = time.perf_counter()
    try:
        with torch_threads(cfg.threads), bars_allowed(progress):
            output = exp.run_seed(cfg, seed, RunContext(seed_dir, device, seed, progress, log))
    finally:
        RESTORED_SECONDS.reset(token)
    output.runtime_s = time.perf_counter() - start + sum(ledger) + output.runtime_s
    return output
