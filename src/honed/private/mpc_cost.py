"""Modelled selection delay for SelectFormer (Ouyang, Lin, Ji, arXiv:2310.02373): measured MPC costs fed
to a network model, the parallel MPC scheduling (MPS) pipeline of card step 9, and the cost of the
secure top-k (QuickSelect) that :func:`~honed.private.proxy_selection.secure_topk_standin` stands in for.

* :class:`NetworkModel` - delay of ``rounds`` round trips and ``nbytes`` bytes on a link of round-trip
  time ``rtt_s`` and ``bandwidth`` bytes/s: ``rounds * rtt_s + nbytes / bandwidth``.
* :class:`BatchCost` - one MPC batch of a scorer: measured local compute seconds, rounds and bytes.
* :func:`sequential_delay` / :func:`pipelined_delay` - J batches run one after the other
  (sum of compute + communication) or pipelined on two resources, compute and network, so that batch
  j+1 computes while batch j communicates (a two-machine flow shop; card step 9, MPS).
* :func:`quickselect_topk` - the comparisons a randomised QuickSelect for the top k makes on the given
  scores (each partition step = one batched secure comparison of the survivors with a pivot); with
  the measured cost of one batched CrypTen comparison (:class:`PivotComparison`) it gives the top-k cost.

Every delay here is *modelled*: measured CrypTen rounds, bytes and local compute seconds, times a
network the run does not have (the parties share a loopback link). The secure top-k is modelled on
QuickSelect that reveals each comparison bit with the pivot (it leaks the order relative to pivots; an
oblivious top-k that reveals only membership would cost more).
"""
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from honed.core.errors import InputError
from honed.core.seed import draw_device


@dataclass(frozen=True)
class NetworkModel:
    """SelectFormer (arXiv:2310.02373) link between the two parties: round-trip time (s) and bandwidth
    (bytes/s). Both are assumptions of the model, not measurements."""

    rtt_s: float = 1e-3
    bandwidth: float = 125e6  # 1 Gbit/s

    def __post_init__(self) -> None:
        finite = math.isfinite(self.rtt_s) and math.isfinite(self.bandwidth)
        if not (finite and self.rtt_s >= 0 and self.bandwidth > 0):
            raise InputError(f"need rtt_s >= 0 and bandwidth > 0 (finite), got {self.rtt_s!r}, {self.bandwidth!r}")

    def seconds(self, rounds: float, nbytes: float) -> float:
        """Communication delay of ``rounds`` round trips carrying ``nbytes`` bytes."""
        return rounds * self.rtt_s + nbytes / self.bandwidth


@dataclass(frozen=True)
class BatchCost:
    """SelectFormer (arXiv:2310.02373) cost of one MPC batch of ``examples`` inputs: ``compute_s`` local
    compute seconds (measured as the party's process CPU time), ``rounds`` and ``nbytes`` sent (measured)."""

    examples: int
    compute_s: float
    rounds: float
    nbytes: float

    @classmethod
    def from_measure(cls, measured: dict[str, Any], examples: int) -> "BatchCost":
        """From one entry of :func:`~honed.private.mpc.measure_mpc_costs` (a batch of ``examples``)."""
        return cls(examples, measured["cpu_seconds_per_example"] * examples, measured["rounds_per_batch"],
                   measured["bytes_per_example"] * examples)


def _batch_count(n: int, cost: BatchCost) -> int:
    if n < 0 or cost.examples < 1:
        raise InputError(f"need n >= 0 examples and a batch of >= 1, got n {n}, batch {cost.examples}")
    return math.ceil(n / cost.examples)


def sequential_delay(n: int, cost: BatchCost, net: NetworkModel) -> float:
    """Delay of scoring ``n`` examples in batches of ``cost.examples``, one batch after the other."""
    return _batch_count(n, cost) * (cost.compute_s + net.seconds(cost.rounds, cost.nbytes))


def pipelined_delay(n: int, cost: BatchCost, net: NetworkModel) -> float:
    """The same batches pipelined on compute and network (MPS, card step 9): a two-machine flow shop of
    J identical jobs, makespan ``comp + comm + (J - 1) max(comp, comm)``."""
    batches = _batch_count(n, cost)
    if batches == 0:
        return 0.0
    comp, comm = cost.compute_s, net.seconds(cost.rounds, cost.nbytes)
    return comp + comm + (batches - 1) * max(comp, comm)


def flow_shop_makespan(compute: Sequence[float], comm: Sequence[float]) -> float:
    """Makespan of jobs in order on two machines (compute, then network): the general form of
    :func:`pipelined_delay` for unequal batches (used to check it)."""
    if len(compute) != len(comm):
        raise InputError(f"{len(compute)} compute times but {len(comm)} communication times")
    done_comp = done_comm = 0.0
    for c, m in zip(compute, comm):
        done_comp += c
        done_comm = max(done_comm, done_comp) + m
    return done_comm


def quickselect_topk(scores: torch.Tensor, k: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, int]]:
    """A randomised QuickSelect keeping the ``k`` largest of ``scores`` (1-D), run the way a secure top-k
    would: every partition step compares all survivors with a random pivot in one batched secure
    comparison. Returns (the k indices, sorted; {"steps": partition steps, "comparisons": elements
    compared in total}). Ties with the last pivot are taken by lower index."""
    if scores.ndim != 1 or not 0 <= k <= len(scores):
        raise InputError(f"need 1-D scores and 0 <= k <= {len(scores)}, got shape {tuple(scores.shape)}, k {k}")
    alive, kept, need, steps, compared = torch.arange(len(scores), device=scores.device), [], k, 0, 0
    draw = draw_device(generator, "cpu")  # pivot draws on the generator's device
    while 0 < need < len(alive):
        pivot = scores[alive[int(torch.randint(len(alive), (1,), generator=generator, device=draw))]]
        values = scores[alive]
        above, tied, below = alive[values > pivot], alive[values == pivot], alive[values < pivot]
        steps, compared = steps + 1, compared + len(alive)
        if len(above) >= need:
            alive = above
        elif len(above) + len(tied) >= need:
            kept += [above, tied[:need - len(above)]]
            need, alive = 0, alive[:0]
        else:
            kept += [above, tied]
            need, alive = need - len(above) - len(tied), below
    if need:
        kept.append(alive)
    chosen = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=scores.device)
    return chosen.sort().values, {"steps": steps, "comparisons": compared}


def topk_delay(trace: dict[str, int], per_element: BatchCost, net: NetworkModel) -> float:
    """Delay of a :func:`quickselect_topk` ``trace`` given the measured cost of one batched comparison
    (``per_element``: a batch of ``examples`` elements compared with a pivot, its rounds and bytes)."""
    n = per_element.examples
    scale = trace["comparisons"] / n  # compute and bytes scale with the elements compared
    return (per_element.compute_s * scale + trace["steps"] * per_element.rounds * net.rtt_s
            + per_element.nbytes * scale / net.bandwidth)


class PivotComparison:
    """A "model" for :func:`~honed.private.mpc.measure_mpc_costs` that times one batched secure
    comparison of SelectFormer's top-k (arXiv:2310.02373): tokens (n, ...) -> the bits x_i > x_0 (the
    first value of every row compared with the first row's, the pivot)."""

    def mpc_parameters(self) -> dict[str, torch.Tensor]:
        return {}

    def forward_with(self, params: dict, tokens: Any) -> Any:
        values = tokens.reshape(tokens.shape[0], -1)[:, :1]
        return values.gt(values[:1])


def sieve_delay(phases: Sequence[tuple[torch.Tensor, str, int]], costs: dict[str, BatchCost], comparison: BatchCost,
                net: NetworkModel, generator: torch.Generator | None = None) -> dict[str, float]:
    """Modelled delay of a SelectFormer (arXiv:2310.02373) selection: ``phases`` lists, per phase, the
    scores of its inputs (n_i,) (the secret-shared entropies, here in plaintext to trace QuickSelect),
    the scorer's name in ``costs`` and how many to keep. Each phase scores its n_i inputs in MPC batches
    (one after the other, or pipelined: MPS) and then runs the QuickSelect top-k. Returns seconds:
    {"sequential", "mps", "topk"} (topk is included in both totals; it is not pipelined)."""
    out = {"sequential": 0.0, "mps": 0.0, "topk": 0.0}
    for scores, name, keep in phases:
        if name not in costs:
            raise InputError(f"no measured cost for scorer {name!r}; have {sorted(costs)}")
        _, trace = quickselect_topk(scores, keep, generator)
        topk = topk_delay(trace, comparison, net)
        out["topk"] += topk
        out["sequential"] += sequential_delay(len(scores), costs[name], net) + topk
        out["mps"] += pipelined_delay(len(scores), costs[name], net) + topk
    return out
