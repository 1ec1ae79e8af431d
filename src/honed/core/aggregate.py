"""Aggregation of a run's seeds into a Result: per-metric summaries, per-example outcomes, curves, and
the experiment's claims, preconditions and invariants, judged."""
import math
import statistics
from typing import Any

import numpy as np
import torch

from honed.core.config import ExperimentConfig, to_dict
from honed.core.experiment import Experiment, Result, SeedOutput
from honed.core.seed import environment


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
