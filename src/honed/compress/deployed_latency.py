"""Latency of compared models in the form they would be deployed: a pruned or low-rank model against its
dense reference, timed fairly (used by experiments 19, Force Regularization arXiv:1703.09746, and 28,
GDP arXiv:2109.02220; usable on any torch.fx-traceable models of one input).

Every model, the dense reference included, is timed as :func:`deployed` makes it: BatchNorm folded
into the preceding conv (:func:`honed.compress.fuse.fold_batchnorm`, the same function up to float
rounding) and channels-last memory format with a channels-last input. The models take turns in
interleaved rounds (:func:`honed.core.benchmark.interleaved_times`, order reversed on odd rounds);
the judged clock is this process's CPU time (what a forward costs; on a shared machine the wall
clock also measures the neighbours), the wall clock is recorded beside it.
"""
import copy
import statistics

import torch
from torch import nn

from honed.compress.fuse import fold_batchnorm, keep_faster_form
from honed.core.benchmark import interleaved_times
from honed.core.errors import InputError
from honed.core.measure import count_macs, repeated_forwards

DEPLOYED_FORM = ("latency is measured on the deployed form of every compared model, the dense reference "
                 "included: BatchNorm folded into the preceding conv (fold_batchnorm) and channels-last memory "
                 "format with a channels-last input, judged on process CPU time (wall recorded); the same "
                 "function up to float rounding, so what was pruned is unchanged. Reason (issue 15, "
                 "benchmarks/bench_prune.py): an unfolded BN and NCHW convs add per-layer costs that do not shrink "
                 "with the pruned channels and would be charged to the method rather than to the export")


def deployed(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` (torch.fx-traceable) with BatchNorm folded and, if
    ``channels_last``, its 4-d weights in channels-last format; ``model`` is left as it was."""
    ready = fold_batchnorm(model)
    return ready.to(memory_format=torch.channels_last) if channels_last else ready


def deployed_input(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """``x`` in the memory format :func:`deployed` models take (channels-last for 4-d image batches)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x.contiguous()


def deployed_latency(models: dict[str, nn.Module], example: torch.Tensor, rounds: int, repeats: int = 1,
                     batches: tuple[int, ...] = (1, 64), reference: str = "dense",
                     channels_last: bool = True) -> dict[str, dict]:
    """Per model, for each batch size b (``example[:1]`` repeated b times): ``latency_b{b}_ms`` (median
    CPU ms per forward over ``rounds`` interleaved rounds of ``repeats`` forwards), ``latency_b{b}_wall_ms``,
    ``speedup_b{b}`` (median per-round ratio reference / model, CPU), ``speedup_b{b}_wall`` and
    ``speedup_b{b}_rounds`` (the per-round CPU ratios: paired over rounds, so claims bootstrap them)."""
    if reference not in models:
        raise InputError(f"models must include the reference {reference!r}; got {', '.join(models)}")
    if not torch.is_tensor(example) or example.dim() < 1 or len(example) == 0:
        raise InputError("example must be a non-empty input batch tensor")
    ready = {name: deployed(model, channels_last) for name, model in models.items()}
    one = example[:1]
    table: dict[str, dict] = {name: {} for name in models}
    for b in batches:
        x = deployed_input(one.expand(b, *one.shape[1:]), channels_last)
        times = interleaved_times({n: repeated_forwards(m, x, repeats) for n, m in ready.items()}, rounds, warmup=2)
        for name, row in table.items():
            for clock, tag in (("cpu", ""), ("wall", "_wall")):
                ratios = [d / t for d, t in zip(times[reference][clock], times[name][clock])]
                row[f"latency_b{b}{tag}_ms"] = 1e3 * statistics.median(times[name][clock]) / repeats
                row[f"speedup_b{b}{tag}"] = statistics.median(ratios)
                if clock == "cpu":
                    row[f"speedup_b{b}_rounds"] = ratios
    return table


def keep_faster_pairs(model: nn.Module, example: torch.Tensor, layers: tuple[str, ...], rounds: int, repeats: int,
                      channels_last: bool = True, batch: int = 64) -> tuple[nn.Module, dict, list[dict]]:
    """A copy of ``model`` (a decomposed net, see :mod:`honed.compress.lowrank`) in the timed memory
    format with each low-rank pair kept only where it measured faster than its rank-K product at batch
    ``batch`` of ``example[:1]`` (:func:`keep_faster_form`, ``rounds`` x ``repeats``; the product has the
    pair's rank). Returns (model, columns: ``layers_decomposed`` = pairs kept factored,
    ``kept_factored_<layer>`` for each of ``layers``, ``macs_all_factored`` before the choice; the
    measured forms as dicts)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = deployed_input(example[:1].expand(batch, *example.shape[1:]), channels_last)
    macs_factored = float(count_macs(model, example[:1]))
    kept, forms = keep_faster_form(copy.deepcopy(model).eval().to(memory_format=fmt), x, rounds, repeats,
                                   inplace=True)
    factored = {f.name for f in forms if f.form == "factored"}
    cols = {"layers_decomposed": float(len(factored)), "macs_all_factored": macs_factored,
            **{f"kept_factored_{layer}": float(layer in factored) for layer in layers}}
    return kept, cols, [vars(f) for f in forms]
