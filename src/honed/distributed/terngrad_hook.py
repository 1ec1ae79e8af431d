"""TernGrad as a DDP communication hook (TernGrad: Ternary Gradients to Reduce Communication in
Distributed Deep Learning, arXiv:1705.07878).

    state = TernGradState(clip_factor=2.5, seed=0)
    ddp.register_comm_hook(state, terngrad_hook)

Per bucket, on every worker:

1. layer-wise scaler ``s_i`` of each gradient tensor in the bucket (per tensor, not per bucket);
2. one tiny all-reduce(MAX) of the scaler vector -> shared scalers ``s`` (all workers quantise alike);
3. stochastic ternarisation with a per-worker independent generator (seeded ``seed``, ``rank``);
4. codes packed 4 per byte; an all-gather of the packed uint8 payloads (the bytes on the wire are the
   2-bit codes, not float ternary values);
5. decode every worker's codes, average, write into the bucket. Tensors kept in full precision
   (fewer than ``min_numel`` elements, or listed in ``float_parameters``) are all-reduced in fp32.

A NaN or inf gradient on any rank makes every rank raise the same :class:`InputError` at the same
bucket (a non-finite scaler is sent as +inf, so the MAX all-reduce of step 2 tells every rank; the
fp32 all-reduce's sum is non-finite on every rank alike), instead of one rank raising while its peers
wait in a collective and die with an unrelated gloo error.

The hook runs its collectives synchronously and returns an already-completed Future holding the
bucket's flat gradient: simple and reliable with gloo on CPU (no overlap of the exchange with the
rest of backward). Bytes are counted per worker per step in the state: the message this worker
contributes (packed codes + float32 scalers + fp32 tensors), the card's "bits sent per worker"; a
ring all-gather forwards each message to N - 1 peers, so wire traffic per link grows with N, while
a ring all-reduce's does not - see :mod:`honed.distributed.terngrad` for the formula.

No ``from __future__ import annotations`` here: DDP inspects the hook's annotations.
"""
import math
from typing import Any, Iterable

import torch
import torch.distributed as dist

from honed.core.errors import InputError
from honed.distributed.terngrad import DEFAULT_CLIP_FACTOR, _pack, _scaler_of, _unpack, _levels, ZERO_CODE


class TernGradState:
    """TernGrad (arXiv:1705.07878) state of :func:`terngrad_hook`: options, per-worker generator and
    byte counters.

    process_group: None = the default group. clip_factor: c > 0 gives ``s = c * std(g)``, 0 gives
    ``s = max |g|`` (card default 2.5). min_numel: tensors with fewer elements stay fp32 (the code's
    ``--size_to_binarize``; 1, its default, ternarises every tensor). float_parameters: parameters whose
    gradients stay fp32 whatever their size - pass the last layer's to reproduce ``--quantize_logits
    False``. seed: the worker with global rank r draws from a generator seeded with (seed, r).

    Counters (per worker): ``steps``, ``bytes_sent`` (all steps), ``last_step_bytes``,
    ``fp32_bytes_per_step`` (what plain fp32 all-reduce of the same buckets sends: 4 bytes/element),
    ``last_local_scalers`` / ``last_shared_scalers`` of the most recent bucket (for inspection).
    """

    def __init__(self, process_group: Any = None, clip_factor: float = DEFAULT_CLIP_FACTOR,
                 min_numel: int = 1, float_parameters: Iterable[torch.Tensor] = (), seed: int = 0) -> None:
        c = float(clip_factor)
        if math.isnan(c) or math.isinf(c) or c < 0:
            raise InputError(f"clip_factor must be a finite number >= 0 (0 = use max|g|), got {clip_factor!r}")
        if not isinstance(min_numel, int) or min_numel < 0:
            raise InputError(f"min_numel must be an integer >= 0, got {min_numel!r}")
        self.process_group = process_group
        self.clip_factor = c
        self.min_numel = min_numel
        self.float_ptrs = {p.data_ptr() for p in float_parameters}
        self.seed = int(seed)
        self.generator: torch.Generator | None = None
        self.steps = 0
        self.bytes_sent = 0
        self.last_step_bytes = 0
        self.fp32_bytes_per_step = 0
        self._step_bytes = 0
        self._step_fp32_bytes = 0
        self.last_local_scalers = torch.empty(0)
        self.last_shared_scalers = torch.empty(0)

    @property
    def bytes_per_step(self) -> float:
        """Mean bytes this worker sent per optimizer step so far (0 before the first step)."""
        return self.bytes_sent / self.steps if self.steps else 0.0

    def worker_generator(self, device: torch.device) -> torch.Generator:
        """The worker's own random stream, created on first use (the rank is known only then)."""
        if self.generator is None:
            rank = dist.get_rank()
            self.generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + rank)
        return self.generator

    def quantizes(self, param: torch.Tensor) -> bool:
        return param.numel() >= self.min_numel and param.data_ptr() not in self.float_ptrs

    def count(self, sent: int, fp32: int, last: bool) -> None:
        self._step_bytes += sent
        self._step_fp32_bytes += fp32
        if last:
            self.steps += 1
            self.bytes_sent += self._step_bytes
            self.last_step_bytes = self._step_bytes
            self.fp32_bytes_per_step = self._step_fp32_bytes
            self._step_bytes = self._step_fp32_bytes = 0


def _exchange_ternary(state: TernGradState, grads: list[torch.Tensor], group: Any,
                      world: int) -> tuple[list[torch.Tensor], int]:
    """Steps 1-5 for the ternarised tensors of one bucket; returns their averages and bytes sent."""
    flats = [g.reshape(-1) for g in grads]
    local = torch.stack([_scaler_of(g, state.clip_factor) for g in flats]).to(torch.float32)
    finite_here = bool(torch.isfinite(local).all())
    # a non-finite scaler travels as +inf: the MAX all-reduce hands it to every rank, so all of them
    # refuse this bucket together (no extra message; NaN would not survive a MAX reliably)
    shared = torch.where(torch.isfinite(local), local, torch.full_like(local, math.inf))
    dist.all_reduce(shared, op=dist.ReduceOp.MAX, group=group)
    if not bool(torch.isfinite(shared).all()):
        raise_non_finite(finite_here)
    state.last_local_scalers, state.last_shared_scalers = local, shared.clone()
    generator = state.worker_generator(flats[0].device)
    safe = torch.where(shared > 0, shared, torch.ones_like(shared))  # 0 only if g == 0 everywhere
    codes = torch.cat([(_levels(g, s.to(g.dtype), generator) + ZERO_CODE).to(torch.uint8)
                       for g, s in zip(flats, safe)])
    payload = _pack(codes)
    gathered = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(gathered, payload, group=group)
    summed = (_unpack(torch.stack(gathered), codes.numel()).to(torch.int32) - ZERO_CODE).sum(0)
    outs, start = [], 0
    for g, s in zip(flats, shared):
        outs.append(summed[start:start + g.numel()].to(g.dtype) * (s.to(g.dtype) / world))
        start += g.numel()
    return outs, payload.numel() + shared.numel() * shared.element_size()


def terngrad_hook(state: TernGradState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """TernGrad (arXiv:1705.07878) DDP communication hook (register with
    ``ddp.register_comm_hook(state, terngrad_hook)``).

    bucket: DDP's GradBucket whose flat buffer holds this worker's gradients (any float dtype).
    Returns a completed Future with the flat bucket buffer overwritten by the average over workers
    of the ternarised gradients (fp32 average for tensors kept in full precision).
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    grads, params = bucket.gradients(), bucket.parameters()
    keep = [state.quantizes(p) for p in params]
    sent = 0
    ternary = [g for g, k in zip(grads, keep) if k]
    if ternary:
        averaged, sent = _exchange_ternary(state, ternary, group, world)
        for g, avg in zip(ternary, averaged):
            g.copy_(avg.view_as(g))
    floats = [g for g, k in zip(grads, keep) if not k]
    if floats:
        flat = torch.cat([g.reshape(-1) for g in floats])
        finite_here = bool(torch.isfinite(flat).all())
        dist.all_reduce(flat, group=group)
        if not bool(torch.isfinite(flat).all()):  # the sum is the same on every rank: all refuse alike
            raise_non_finite(finite_here)
        flat.div_(world)
        start = 0
        for g in floats:
            g.copy_(flat[start:start + g.numel()].view_as(g))
            start += g.numel()
        sent += flat.numel() * flat.element_size()
    _write_back(buffer, grads)
    state.count(sent, 4 * buffer.numel(), bucket.is_last())
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(buffer)
    return future


def raise_non_finite(finite_here: bool) -> None:
    """The one error every rank raises when any rank's gradient in the bucket is NaN or inf."""
    where = "another rank's (this rank's are finite)" if finite_here else "this rank's"
    raise InputError(f"terngrad_hook: a gradient in this bucket is NaN or inf on at least one rank ({where}); "
                     "every rank refuses the step here instead of averaging it")


def _write_back(buffer: torch.Tensor, grads: list[torch.Tensor]) -> None:
    """Copy per-tensor results into the flat buffer unless ``grads`` already are views of it."""
    start = 0
    for g in grads:
        segment = buffer[start:start + g.numel()]
        if segment.data_ptr() != g.data_ptr():
            segment.copy_(g.reshape(-1))
        start += g.numel()
