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

Encoding and decoding are whole-bucket tensor passes (no per-element Python, no per-worker unpack:
see :func:`honed.distributed.terngrad._sum_levels`). Steps 1-4 run before the hook returns (the
ternarisation needs the shared scalers); the all-gather of step 4 and the fp32 all-reduce are
asynchronous, and step 5 runs as the Future's callback when they complete, so DDP goes on with the
backward pass (and the next buckets) meanwhile. The result is bit-identical to computing it tensor by
tensor (tests/distributed/test_terngrad_hook_identity.py pins it against
:func:`honed.distributed.terngrad.aggregate_ternary`).

A NaN or inf gradient on any rank makes every rank raise the same :class:`InputError` at the same
bucket, in step 2 (a non-finite scaler, or a flag for the bucket's fp32 tensors, is sent as +inf, so
the MAX all-reduce tells every rank; a bucket with only fp32 tensors checks the all-reduced sum, the
same on every rank), instead of one rank raising while its peers wait in a collective and die with an
unrelated gloo error.

Bytes are counted per worker per step in the state: the message this worker contributes (packed
codes + float32 scalers + fp32 tensors), the card's "bits sent per worker"; a ring all-gather
forwards each message to N - 1 peers, so wire traffic per link grows with N, while a ring
all-reduce's does not - see :mod:`honed.distributed.terngrad` for the formula.

No ``from __future__ import annotations`` here: DDP inspects the hook's annotations.
"""
import math
from typing import Any, Iterable

import torch
import torch.distributed as dist

from honed.core.errors import InputError
from honed.distributed.terngrad import (DEFAULT_CLIP_FACTOR, MAX_LANE_WORKERS, ZERO_CODE, _code_sums, _pack_signed_pair,
                                        _scalers_of, _sum_levels)


class TernGradState:
    """TernGrad (arXiv:1705.07878) state of :func:`terngrad_hook`: options, per-worker generator and
    byte counters.

    process_group: None = the default group. clip_factor: c > 0 gives ``s = c * std(g)``, 0 gives
    ``s = max |g|`` (card default 2.5). min_numel: tensors with fewer elements stay fp32 (the code's
    ``--size_to_binarize``; 1, its default, ternarises every tensor). float_parameters: parameters whose
    gradients stay fp32 whatever their size - pass the last layer's to reproduce ``--quantize_logits
    False``. seed: the worker with global rank r draws from a generator seeded with (seed, r).

    Counters (per worker; the 4-byte non-finite flag a bucket with fp32 tensors adds to the scaler
    all-reduce is not counted): ``steps``, ``bytes_sent`` (all steps), ``last_step_bytes``,
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
        self.scratch: dict[int, tuple] = {}  # bucket index -> (layout, work buffers) of the hook

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


class _Plan:
    """Where one bucket's ternarised and fp32 tensors lie in its flat buffer (element offsets)."""

    def __init__(self, state: TernGradState, buffer: torch.Tensor, bucket: dist.GradBucket) -> None:
        self.ternary: list[tuple[int, int]] = []
        self.floats: list[tuple[int, int]] = []
        start = 0
        for p in bucket.parameters():
            (self.ternary if state.quantizes(p) else self.floats).append((start, start + p.numel()))
            start += p.numel()
        self.buffer = buffer
        self.ternary_numel = sum(b - a for a, b in self.ternary)

    def gather(self, spans: list[tuple[int, int]]) -> torch.Tensor:
        """The buffer's ``spans`` as one flat tensor (the buffer itself when they cover it)."""
        if spans == [(0, self.buffer.numel())]:
            return self.buffer
        return torch.cat([self.buffer[a:b] for a, b in spans])


class _Scratch:
    """Work buffers of one bucket, reused every step: a fresh multi-megabyte tensor costs page faults on
    every allocation, more than the pass that fills it. About 7 bytes per ternarised fp32 element."""

    def __init__(self, n: int, world: int, like: torch.Tensor) -> None:
        padded, device = -(-n // 4) * 4, like.device
        self.uniform = torch.empty(n, dtype=like.dtype, device=device)  # later the decoded level sums
        self.kept_positive = torch.zeros(padded, dtype=torch.bool, device=device)  # padding stays False
        self.kept_negative = torch.zeros(padded, dtype=torch.bool, device=device)
        self.words = torch.empty(padded // 4, dtype=torch.int32, device=device)
        self.shifted = torch.empty_like(self.words)
        self.gathered = torch.empty((world, padded // 4), dtype=torch.uint8, device=device)
        self.lookup = tuple(torch.empty(size, dtype=torch.int32, device=device)
                            for size in (world * padded // 4, world * padded // 4, padded // 4))


def _scratch(state: TernGradState, bucket: dist.GradBucket, n: int, world: int, like: torch.Tensor) -> _Scratch:
    """The bucket's work buffers, replaced when its layout changes (DDP rebuilds its buckets once)."""
    key = (n, world, like.dtype, like.device)
    held = state.scratch.get(bucket.index())
    if held is None or held[0] != key:
        held = state.scratch[bucket.index()] = (key, _Scratch(n, world, like))
    return held[1]


def _shared_scalers(state: TernGradState, plan: _Plan, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2: local layer-wise scalers and their MAX over the workers (one tiny all-reduce). The
    bucket's fp32 tensors ride along as one flag (0, or +inf when any is non-finite here), so a NaN or
    inf anywhere in the bucket on any rank makes every rank refuse it here, before any data moves."""
    local = _scalers_of(plan.buffer, plan.ternary, state.clip_factor)
    local = local.to(torch.float32)
    finite_floats = all(bool(torch.isfinite(plan.buffer[a:b]).all()) for a, b in plan.floats)
    finite_here = bool(torch.isfinite(local).all()) and finite_floats
    # a non-finite value travels as +inf: NaN would not survive a MAX all-reduce reliably
    message = torch.where(torch.isfinite(local), local, torch.full_like(local, math.inf))
    if plan.floats:
        message = torch.cat([message, message.new_full((1,), 0.0 if finite_floats else math.inf)])
    dist.all_reduce(message, op=dist.ReduceOp.MAX, group=group)
    if not bool(torch.isfinite(message).all()):
        raise_non_finite(finite_here)
    return local, message[:len(plan.ternary)]


def _encode(state: TernGradState, plan: _Plan, shared: torch.Tensor, work: _Scratch) -> torch.Tensor:
    """Steps 3-4 over the whole bucket at once: the packed 2-bit codes of the ternarised tensors.

    Draws ``u ~ U[0, s)`` tensor by tensor from the worker's generator (the same numbers, in the same
    order, as one ``torch.rand(shape)`` per tensor). An element keeps its sign when ``u < |g|``, i.e.
    ``u < g`` (then g > 0: code 2) or ``g < -u`` (then g < 0: code 0), else it is level 0 (code 1): two
    comparisons on the bucket, written into reused masks, then a word-wise pack."""
    flat = plan.gather(plan.ternary)
    n = flat.numel()
    generator = state.worker_generator(flat.device)
    safe = torch.where(shared > 0, shared, torch.ones_like(shared)).to(flat.dtype)  # 0 only if g == 0 everywhere
    u = work.uniform
    start = 0
    for (a, b), s in zip(plan.ternary, safe):
        u[start:start + b - a].uniform_(0, 1, generator=generator).mul_(s)
        start += b - a
    torch.lt(u, flat, out=work.kept_positive[:n])
    torch.lt(flat, u.neg_(), out=work.kept_negative[:n])
    return _pack_signed_pair(work.kept_positive, work.kept_negative, work.words, work.shifted)


def _decode(plan: _Plan, shared: torch.Tensor, work: _Scratch, world: int) -> None:
    """Step 5: the average of every worker's levels, ``s / N * sum_i level_i``, written into the buffer
    (the integer level sums are exact in floating point, so subtracting N there changes no bit)."""
    n = plan.ternary_numel
    if world > MAX_LANE_WORKERS:
        summed = _sum_levels(work.gathered, n).to(plan.buffer.dtype)
    else:
        summed = work.uniform[:n]
        summed.copy_(_code_sums(work.gathered, work.lookup)[:n]).sub_(ZERO_CODE * world)
    factors = shared.to(plan.buffer.dtype) / world
    start = 0
    for (a, b), factor in zip(plan.ternary, factors):
        torch.mul(summed[start:start + b - a], factor, out=plan.buffer[a:b])
        start += b - a


def terngrad_hook(state: TernGradState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """TernGrad (arXiv:1705.07878) DDP communication hook (register with
    ``ddp.register_comm_hook(state, terngrad_hook)``).

    bucket: DDP's GradBucket whose flat buffer holds this worker's gradients (any float dtype).
    Returns a Future of the flat bucket buffer overwritten by the average over workers of the
    ternarised gradients (fp32 average for tensors kept in full precision). The scaler exchange and the
    encoding run before the hook returns; the all-gather of the codes (and the fp32 all-reduce) run
    asynchronously and the decoding runs when they complete, while DDP goes on with the backward pass.
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    plan = _Plan(state, buffer, bucket)
    if not plan.ternary:
        return _float_only(state, plan, group, world, bucket.is_last())
    local, shared = _shared_scalers(state, plan, group)
    state.last_local_scalers, state.last_shared_scalers = local, shared.clone()
    work = _scratch(state, bucket, plan.ternary_numel, world, buffer)
    payload = _encode(state, plan, shared, work)
    futures = [dist.all_gather(list(work.gathered.unbind(0)), payload, group=group, async_op=True).get_future()]
    floats = plan.gather(plan.floats) if plan.floats else None
    if floats is not None:
        futures.append(dist.all_reduce(floats, group=group, async_op=True).get_future())
    sent = payload.numel() + shared.numel() * shared.element_size()
    sent += 0 if floats is None else floats.numel() * floats.element_size()
    state.count(sent, 4 * buffer.numel(), bucket.is_last())

    def finish(_: Any) -> torch.Tensor:
        _decode(plan, shared, work, world)
        if floats is not None:
            floats.div_(world)
            _scatter(plan, plan.floats, floats)
        return buffer

    waiting = futures[0] if len(futures) == 1 else torch.futures.collect_all(futures)
    return waiting.then(finish)


def _scatter(plan: _Plan, spans: list[tuple[int, int]], flat: torch.Tensor) -> None:
    """Copy ``flat`` back into the buffer's ``spans`` (nothing to do when it is the buffer)."""
    if flat.data_ptr() == plan.buffer.data_ptr():
        return
    start = 0
    for a, b in spans:
        plan.buffer[a:b].copy_(flat[start:start + b - a])
        start += b - a


def _float_only(state: TernGradState, plan: _Plan, group: Any, world: int,
                last: bool) -> torch.futures.Future[torch.Tensor]:
    """A bucket with no ternarised tensor: fp32 all-reduce, refused alike on every rank if non-finite."""
    buffer = plan.buffer
    finite_here = bool(torch.isfinite(buffer).all())
    dist.all_reduce(buffer, group=group)
    if not bool(torch.isfinite(buffer).all()):  # the sum is the same on every rank: all refuse alike
        raise_non_finite(finite_here)
    buffer.div_(world)
    state.count(buffer.numel() * buffer.element_size(), 4 * buffer.numel(), last)
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(buffer)
    return future


def raise_non_finite(finite_here: bool) -> None:
    """The one error every rank raises when any rank's gradient in the bucket is NaN or inf."""
    where = "another rank's (this rank's are finite)" if finite_here else "this rank's"
    raise InputError(f"terngrad_hook: a gradient in this bucket is NaN or inf on at least one rank ({where}); "
                     "every rank refuses the step here instead of averaging it")
