"""Runs an experiment: folders, seeds, resume, aggregation, claims, result.json and its plot.

Layout: ``<out>/<ID>/<config hash>/config.json``, ``.../seed_<N>/seed_result.json`` (one per finished
seed), ``.../result.json`` and ``.../plot.png``. A finished seed is never recomputed; a run killed in
the middle of a seed resumes from that seed's own checkpoints (see ``RunContext.cached`` and the
loop's ``resume_from``).
"""
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from honed.core.atomic import atomic_write_json
from honed.core.config import UNHASHED_FIELDS, ExperimentConfig, config_hash, to_dict
from honed.core.errors import StoreError
from honed.core.experiment import Experiment, Result, SeedOutput
from honed.core.seed import environment, seed_everything, source_digest, torch_threads


@dataclass
class RunContext:
    """Handed to ``Experiment.run_seed``: where to write, which device, whether to show progress."""

    dir: Path
    device: torch.device
    seed: int
    progress: bool = True
    log: Callable[[str], None] | None = None  # one status line per computed part (the CLI prints it)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Return the JSON value stored under ``key`` in this seed's folder, computing and storing
        it atomically first if absent. Use it for each arm so a killed seed resumes per arm."""
        path = self.dir / f"part_{key}.json"
        if path.exists():
            return read_json(path)
        start = time.perf_counter()
        value = compute()
        atomic_write_json(path, value)
        if self.log is not None:
            self.log(f"seed {self.seed}: {key} done in {time.perf_counter() - start:.1f} s")
        return value

    def checkpoint(self, key: str) -> Path:
        """Path for a training checkpoint of this seed (used by ``train(..., checkpoint=...)``)."""
        return self.dir / f"ckpt_{key}.safetensors"


def read_json(path: Path) -> Any:
    """Parse a JSON file; StoreError naming the file if it is corrupt."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{path} is corrupt ({err.__class__.__name__}); delete it or rerun with --force") from None


def run_dir(out: Path, exp_id: str, cfg: ExperimentConfig) -> Path:
    """``out/ID/<config hash>``: the folder that owns the run of this config."""
    return Path(out) / exp_id / config_hash(cfg)


def check_run_dir(path: Path, exp_id: str, cfg: ExperimentConfig) -> None:
    """Refuse to write into a folder holding a different experiment's or config's files."""
    meta = path / "config.json"
    want = {"id": exp_id, "config": json.loads(json.dumps(to_dict(cfg), default=list))}
    for key in UNHASHED_FIELDS:
        want["config"].pop(key)
    if meta.exists():
        have = read_json(meta)
        if have != want:
            raise StoreError(f"{path} holds a run of another config or experiment; "
                             f"move it away or rerun with --force")
    else:
        atomic_write_json(meta, want)


def run_experiment(exp: Experiment, cfg: ExperimentConfig, preset: str, out: Path,
                   device: torch.device, force: bool = False, progress: bool = True,
                   on_seed: Callable[[int], None] | None = None,
                   log: Callable[[str], None] | None = None) -> Result:
    """Run (or resume, or load) ``exp`` under ``cfg`` over ``cfg.seeds`` and return its Result.
    ``on_seed(seed)`` is called as each seed starts, ``log(line)`` as each cached part finishes."""
    path = run_dir(out, exp.id, cfg)
    if force and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    check_run_dir(path, exp.id, cfg)
    done = path / "result.json"
    if done.exists():
        old = Result.from_json(read_json(done))
        if old.seeds == list(cfg.seeds):
            if log is not None and old.environment.get("honed_source") not in (None, source_digest()):
                log(f"note: {done} was written by other honed code (source {old.environment['honed_source']}, "
                    f"now {source_digest()}); rerun with --force to refresh it")
            return old
    outputs = []
    for seed in cfg.seeds:
        if on_seed:
            on_seed(seed)
        outputs.append(run_one_seed(exp, cfg, seed, path / f"seed_{seed}", device, progress, log))
    result = aggregate(exp, cfg, preset, outputs, device)
    atomic_write_json(done, result.to_json())
    from honed.core.plots import save_experiment_plot

    save_experiment_plot(exp, result, path / "plot.png")
    return result


def run_one_seed(exp: Experiment, cfg: ExperimentConfig, seed: int, seed_dir: Path,
                 device: torch.device, progress: bool, log: Callable[[str], None] | None = None) -> SeedOutput:
    """Load the seed's stored result, or run it (inside the config's thread count) and store it atomically."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    file = seed_dir / "seed_result.json"
    if file.exists():
        try:
            return SeedOutput.from_json(read_json(file))
        except TypeError:
            raise StoreError(f"{file} is not a honed seed result; delete it or rerun with --force") from None
    seed_everything(seed)
    start = time.perf_counter()
    with torch_threads(cfg.threads):
        output = exp.run_seed(cfg, seed, RunContext(seed_dir, device, seed, progress, log))
    output.runtime_s = time.perf_counter() - start + output.runtime_s
    atomic_write_json(file, output.to_json())
    return output


def summarise(values: list[float]) -> dict[str, Any]:
    """mean, sample std (0 for one value) and the values themselves; a non-finite value makes mean
    and std NaN (stored as null in result.json, with the reason in ``non_finite``)."""
    vals = [math.nan if v is None else float(v) for v in values]
    if not all(math.isfinite(v) for v in vals):
        return {"mean": math.nan, "std": math.nan, "values": vals}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "values": vals}


def split_outcomes(outputs: list[SeedOutput]) -> tuple[dict, dict]:
    """Per arm and metric: the per-seed values and, where every seed gave a list of per-example
    outcomes, those outcomes as arrays (the metric is then their mean)."""
    values: dict[tuple[str, str], list[float]] = {}
    outcomes: dict[tuple[str, str], list[np.ndarray]] = {}
    for arm, by_metric in outputs[0].arms.items():
        for metric in by_metric:
            raw = [o.arms[arm][metric] for o in outputs]
            if all(isinstance(v, (list, tuple, np.ndarray)) for v in raw):
                arrays = [np.asarray([math.nan if x is None else x for x in v], dtype=float) for v in raw]
                if any(a.size == 0 for a in arrays):
                    raise ValueError(f"{arm}.{metric}: an empty list of per-example outcomes")
                outcomes[(arm, metric)] = arrays
                values[(arm, metric)] = [float(a.mean()) for a in arrays]
            elif any(isinstance(v, (list, tuple, np.ndarray)) for v in raw):
                raise ValueError(f"{arm}.{metric}: per-example outcomes in some seeds and a number in others")
            else:
                values[(arm, metric)] = raw
    return values, outcomes


def aggregate(exp: Experiment, cfg: ExperimentConfig, preset: str, outputs: list[SeedOutput],
              device: torch.device) -> Result:
    """Combine the seeds' outputs into a Result: per-metric mean/std (and example counts where per-example
    outcomes were kept), curves, claims, preconditions, invariants, verdicts, notes, environment."""
    values, outcomes = split_outcomes(outputs)
    arms: dict[str, dict[str, Any]] = {}
    for (arm, metric), vals in values.items():
        arms.setdefault(arm, {})[metric] = summarise(vals)
        if (arm, metric) in outcomes:
            arms[arm][metric]["examples"] = [int(a.size) for a in outcomes[(arm, metric)]]
    extra: dict[str, Any] = {}
    for key in outputs[0].extra:
        vals = [o.extra.get(key) for o in outputs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        extra[key] = summarise(vals) if numeric else {"values": vals}
    curves = {
        name: {arm: mean_curve([o.curves[name][arm] for o in outputs]) for arm in arm_curves}
        for name, arm_curves in outputs[0].curves.items()
    }
    result = Result(
        id=exp.id, title=exp.title, family=exp.family, preset=preset, seeds=list(cfg.seeds),
        config=to_dict(cfg), environment=environment(str(device), threads=cfg.threads or None),
        runtime_s=sum(o.runtime_s for o in outputs), method=list(exp.method),
        baselines=list(exp.baselines), arms=arms, extra=extra, curves=curves, claims=[],
        notes=[f"reconstructed (R): {r}" for r in exp.reconstructed], outcomes=outcomes,
    )
    result.claims = exp.claims(cfg, result)
    result.preconditions = exp.preconditions(cfg, result)
    result.invariants = exp.invariants(cfg, result)
    result.rejudge()
    result.notes += exp.notes(cfg, result)
    return result


def mean_curve(curves: list[list[float]]) -> list[float]:
    """Element-wise mean over seeds of equally long curves (the shortest length if they differ)."""
    n = min(len(c) for c in curves)
    return [statistics.fmean(math.nan if c[i] is None else c[i] for c in curves) for i in range(n)]
