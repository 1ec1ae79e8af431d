"""TernGrad's tensor operations (TernGrad: Ternary Gradients to Reduce Communication in Distributed
Deep Learning, arXiv:1705.07878). Plain tensors in, plain tensors out; no process group needed.

Per tensor (layer-wise) and per step:

1. scaler ``s_i = c * std(g_i)`` (population std) when the clip factor ``c > 0`` (default 2.5), else
   ``s_i = max |g_i|`` (:func:`layer_scaler`);
2. shared scaler ``s = max_i s_i`` over the workers (one tiny all-reduce in a real run);
3. stochastic ternarisation ``g~ = s * sign(g) * b`` with ``b ~ Bernoulli(min(|g| / s, 1))``
   (:func:`ternarize`). Elements with ``|g| >= s`` always map to ``+-s``: this IS the clipping to
   ``[-c sigma, c sigma]``, and ``E[g~] = clip(g, -s, s)``, i.e. unbiased for the clipped gradient;
4. wire format: codes ``sign + 1`` in {0, 1, 2}, four codes per byte (:func:`pack_2bit`), plus one
   float32 scaler per tensor;
5. every worker averages the N decoded gradients (``ḡ`` is not re-ternarised).

:func:`aggregate_ternary` runs steps 1-5 for N simulated workers in one process (the card's CPU
reproduction); :mod:`honed.distributed.terngrad_hook` runs them across real processes.
"""
import math
import sys
from typing import Sequence

import torch

from honed.core.errors import InputError

SCOPES = ("layer", "global")
DEFAULT_CLIP_FACTOR = 2.5  # the code's --clip_factor
ZERO_CODE = 1  # code of the level 0; also used to pad a packed message to a whole byte
LITTLE_ENDIAN = sys.byteorder == "little"


def _check_clip_factor(clip_factor: float) -> float:
    value = float(clip_factor)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise InputError(f"clip_factor must be a finite number >= 0 (0 = use max|g|), got {clip_factor!r}")
    return value


def _check_gradient(g: torch.Tensor, name: str = "gradient") -> None:
    if not isinstance(g, torch.Tensor) or not torch.is_floating_point(g):
        raise InputError(f"{name} must be a floating-point tensor, got {type(g).__name__}"
                         f"{'' if not isinstance(g, torch.Tensor) else ' of dtype ' + str(g.dtype)}")
    if g.numel() == 0:
        raise InputError(f"{name} is empty")
    if not bool(torch.isfinite(g).all()):
        raise InputError(f"{name} contains NaN or inf")


def _scaler_of(g: torch.Tensor, clip_factor: float) -> torch.Tensor:
    """Unchecked scaler: c * std(g) (population), falling back to max|g| when that is 0 or c == 0."""
    peak = g.detach().abs().max()
    if clip_factor == 0 or g.numel() < 2:
        return peak
    spread = clip_factor * g.detach().std(unbiased=False)
    # A constant non-zero tensor has std 0; c*std would zero it entirely, so use max|g| there.
    return torch.where(spread > 0, spread, peak)


def _scalers_of(flat: torch.Tensor, spans: Sequence[tuple[int, int]], clip_factor: float) -> torch.Tensor:
    """Unchecked: ``stack([_scaler_of(flat[a:b], c) for a, b in spans])``, the same values, with
    ``max |g|`` computed only for the tensors that need it (c == 0, one element, or ``c * std == 0``)."""
    if clip_factor == 0:
        return torch.stack([flat[a:b].abs().max() for a, b in spans])
    scalers = torch.stack([clip_factor * flat[a:b].std(unbiased=False) if b - a >= 2 else flat[a:b].abs().max()
                           for a, b in spans])
    if not bool((scalers > 0).all()):  # rare: fall back to max|g| where c * std is 0 (or NaN)
        peaks = torch.stack([flat[a:b].abs().max() for a, b in spans])
        scalers = torch.where(scalers > 0, scalers, peaks)
    return scalers


def layer_scaler(g: torch.Tensor, clip_factor: float = DEFAULT_CLIP_FACTOR) -> torch.Tensor:
    """TernGrad (arXiv:1705.07878) layer-wise scaler of one gradient tensor.

    g: any shape, finite floats. Returns a 0-d tensor: ``clip_factor * std(g)`` (population std, as in
    the reference code) when ``clip_factor > 0``, else ``max |g|``. Guard (ours): when ``c * std`` is 0
    (a constant tensor) the scaler falls back to ``max |g|``; it is 0 only for an all-zero gradient.
    """
    clip_factor = _check_clip_factor(clip_factor)
    _check_gradient(g)
    return _scaler_of(g, clip_factor)


def _check_scaler(scaler: torch.Tensor | float) -> torch.Tensor:
    s = torch.as_tensor(scaler, dtype=torch.float64)
    if s.numel() != 1:
        raise InputError(f"scaler must be a single number, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s)) or float(s) <= 0:
        raise InputError(f"scaler must be a finite number > 0, got {float(s)!r}")
    return s


def ternary_levels(g: torch.Tensor, scaler: torch.Tensor | float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """TernGrad (arXiv:1705.07878) stochastic levels ``sign(g) * b``, ``b ~ Bernoulli(min(|g|/s, 1))``.

    g: any shape, finite floats; scaler s > 0. Returns int8 of g's shape with values in {-1, 0, 1};
    ``s * levels`` is :func:`ternarize`'s output. ``generator`` (on g's device) gives the random stream.
    """
    _check_gradient(g)
    s = _check_scaler(scaler)
    return _levels(g, s.to(g.dtype).to(g.device), generator)


def _levels(g: torch.Tensor, s: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Unchecked: u ~ U[0, s); keep sign(g) where u < |g| (so |g| >= s is always kept)."""
    u = torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype) * s
    return (torch.sign(g) * (u < g.abs())).to(torch.int8)


def ternarize(g: torch.Tensor, scaler: torch.Tensor | float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """TernGrad (arXiv:1705.07878) stochastic ternarisation of one tensor.

    g: any shape, finite floats; scaler s > 0 (e.g. the shared :func:`layer_scaler`). Returns a tensor
    of g's shape and dtype with every element in {-s, 0, s}; ``E[out] = clip(g, -s, s)``.
    """
    levels = ternary_levels(g, scaler, generator)
    return levels.to(g.dtype) * torch.as_tensor(float(scaler), dtype=g.dtype, device=g.device)


def pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """TernGrad (arXiv:1705.07878) wire format: four 2-bit codes per byte.

    codes: integer tensor of any shape with values in {0, 1, 2} (``level + 1``), read flattened.
    Returns uint8 of length ``ceil(n / 4)``; code ``k`` of a group of four sits at bits ``2k..2k+1``.
    A length not divisible by 4 is padded with the zero-level code (1); :func:`unpack_2bit` drops it.
    """
    if not isinstance(codes, torch.Tensor) or torch.is_floating_point(codes) or codes.dtype == torch.bool:
        raise InputError(f"codes must be an integer tensor with values in {{0, 1, 2}}, got "
                         f"{getattr(codes, 'dtype', type(codes).__name__)}")
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 2):
        raise InputError(f"codes must lie in {{0, 1, 2}}, got range [{int(flat.min())}, {int(flat.max())}]")
    return _pack(flat.to(torch.uint8))


def _pack(flat: torch.Tensor) -> torch.Tensor:
    pad = (-flat.numel()) % 4
    if pad:
        flat = torch.cat([flat, flat.new_full((pad,), ZERO_CODE)])
    return _pack_padded(flat)


def _pack_padded(codes: torch.Tensor) -> torch.Tensor:
    """Unchecked: contiguous uint8 codes, length a multiple of 4 -> one byte per group of four.

    On a little-endian machine a group of four codes read as one int32 has code k at bits 8k..8k+1; two
    shift-or passes move it to bits 2k..2k+1 and the low byte is the packed byte (a third of the
    passes of four strided byte views). Elsewhere the byte views are used."""
    if LITTLE_ENDIAN and codes.is_contiguous() and codes.storage_offset() % 4 == 0:
        word = codes.view(torch.int32)
        word = word | (word >> 6)
        return (word | (word >> 12)).to(torch.uint8)  # int32 -> uint8 keeps the low byte
    quads = codes.view(-1, 4)
    return quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)


def unpack_2bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """TernGrad (arXiv:1705.07878): inverse of :func:`pack_2bit`.

    packed: uint8 of shape (..., ceil(n / 4)); returns uint8 codes of shape (..., n) in {0, 1, 2}
    (a leading batch dimension, e.g. one row per worker, is kept).
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise InputError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    if packed.dim() == 0:
        raise InputError("packed must have at least one dimension")
    if not isinstance(n, int) or n < 0 or packed.shape[-1] != -(-n // 4):
        raise InputError(f"n={n!r} does not fit {packed.shape[-1]} packed bytes (need ceil(n/4) bytes)")
    return _unpack(packed, n)


def _pack_signed_pair(kept_positive: torch.Tensor, kept_negative: torch.Tensor,
                      words: torch.Tensor | None = None, shifted: torch.Tensor | None = None) -> torch.Tensor:
    """Unchecked: packed codes from two disjoint bool masks of a length divisible by 4 (padding False).

    code = ``1 + kept_positive - kept_negative`` (2, 0, or 1 for level 0), computed on four bools at a
    time (an int32 word of four byte lanes, each lane's result in {0, 1, 2}: no carry or borrow crosses
    lanes), then packed like :func:`_pack_padded`. ``words`` / ``shifted`` (int32, a quarter of the
    length) are optional reused work buffers."""
    aligned = kept_positive.storage_offset() % 4 == 0 and kept_negative.storage_offset() % 4 == 0
    if not (LITTLE_ENDIAN and aligned):
        codes = kept_positive.view(torch.uint8) + ZERO_CODE - kept_negative.view(torch.uint8)
        return _pack_padded(codes)
    positive = kept_positive.view(torch.uint8).view(torch.int32)
    negative = kept_negative.view(torch.uint8).view(torch.int32)
    words = torch.empty_like(positive) if words is None else words
    shifted = torch.empty_like(positive) if shifted is None else shifted
    torch.add(positive, ZERO_CODE * 0x01010101, out=words)
    words.sub_(negative)
    for shift in (6, 12):  # code k of a word: bits 8k..8k+1 -> 2k..2k+1 (see _pack_padded)
        torch.bitwise_right_shift(words, shift, out=shifted)
        words.bitwise_or_(shifted)
    return words.to(torch.uint8)  # int32 -> uint8 keeps the low byte


def _code_table(device: torch.device) -> torch.Tensor:
    """(256, 4) uint8: row b holds the four 2-bit codes of byte b, code k from bits 2k..2k+1."""
    if device not in _CODE_TABLES:
        byte = torch.arange(256, dtype=torch.int32, device=device).unsqueeze(1)
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int32, device=device)
        _CODE_TABLES[device] = ((byte >> shifts) & 3).to(torch.uint8).contiguous()
    return _CODE_TABLES[device]


_CODE_TABLES: dict[torch.device, torch.Tensor] = {}


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Unchecked inverse of :func:`_pack`: one table look-up per byte gives its four codes."""
    codes = _code_table(packed.device)[packed.long()]
    return codes.flatten(-2)[..., :n]


def _sum_levels(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Unchecked: int32 (n,) sum over the rows of ``packed`` (W, ceil(n/4)) of the levels ``code - 1``."""
    world = packed.shape[0]
    if world > MAX_LANE_WORKERS:
        return (_unpack(packed, n).to(torch.int32) - ZERO_CODE).sum(0)
    return _code_sums(packed)[:n].to(torch.int32) - ZERO_CODE * world


def _code_sums(packed: torch.Tensor, work: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Unchecked: uint8 (4 * B,) per-element sums over the W <= 127 rows of ``packed`` (W, B) of the codes.

    Each byte is looked up as an int32 holding its four codes in four byte lanes (native byte order, so
    the lanes read back in element order); the W rows are summed as int32, each lane staying below 256
    (2 W <= 254), so no carry crosses lanes; the lane sums are read back as bytes. One look-up and
    one sum replace W unpacked rows. ``work``: optional reused int32 buffers (index (W*B,), looked-up
    words (W*B,), total (B,))."""
    world, width = packed.shape
    lanes = _code_table(packed.device).view(torch.int32).reshape(256)
    if work is None:
        index, words, total = (torch.empty(world * width, dtype=torch.int32, device=packed.device),
                               torch.empty(world * width, dtype=torch.int32, device=packed.device),
                               torch.empty(width, dtype=torch.int32, device=packed.device))
    else:
        index, words, total = work
    index.copy_(packed.reshape(-1))
    torch.index_select(lanes, 0, index, out=words)
    torch.sum(words.view(world, width), 0, dtype=torch.int32, out=total)
    return total.view(torch.uint8)


MAX_LANE_WORKERS = 127  # 2 W codes must fit a byte lane: 2 * 127 = 254


def message_bytes(ternary_numel: int, num_scalers: int, float_numel: int) -> int:
    """TernGrad (arXiv:1705.07878) bytes one worker sends per step in honed's wire format: the packed
    codes of all ternarised elements (``ceil(n / 4)``: 2 bits each, rounded up to a whole byte), one
    float32 scaler per ternarised tensor and float32 values for tensors kept in full precision."""
    return -(-ternary_numel // 4) + 4 * num_scalers + 4 * float_numel


def _check_stacked(stacked_grads: Sequence[torch.Tensor]) -> int:
    if not stacked_grads:
        raise InputError("stacked_grads is empty")
    n_workers = stacked_grads[0].shape[0] if stacked_grads[0].dim() else 0
    for i, g in enumerate(stacked_grads):
        _check_gradient(g, f"stacked_grads[{i}]")
        if g.dim() < 1 or g.shape[0] != n_workers:
            raise InputError(f"stacked_grads[{i}] must be (n_workers={n_workers}, ...), got {tuple(g.shape)}")
    return n_workers


def shared_scalers(stacked_grads: Sequence[torch.Tensor], clip_factor: float = DEFAULT_CLIP_FACTOR,
                   scope: str = "layer") -> torch.Tensor:
    """TernGrad (arXiv:1705.07878) scaler sharing: ``s_l = max_i s_{i,l}`` over the workers i.

    stacked_grads: L tensors shaped (N, *shape_l), worker dimension first. Returns (L,): per tensor
    (``scope="layer"``), or one scaler over each worker's concatenated gradient repeated L times
    (``scope="global"``, the per-model variant the card warns about).
    """
    clip_factor = _check_clip_factor(clip_factor)
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    n_workers = _check_stacked(stacked_grads)
    if scope == "global":
        whole = torch.cat([g.reshape(n_workers, -1) for g in stacked_grads], dim=1)
        shared = max(_scaler_of(row, clip_factor) for row in whole)
        return shared.expand(len(stacked_grads)).clone()
    return torch.stack([max(_scaler_of(row, clip_factor) for row in g.reshape(n_workers, -1))
                        for g in stacked_grads])


def aggregate_ternary(stacked_grads: Sequence[torch.Tensor], clip_factor: float = DEFAULT_CLIP_FACTOR,
                      scope: str = "layer", generators: Sequence[torch.Generator] | None = None,
                      min_numel: int = 1, full_precision: Sequence[bool] | None = None) -> list[torch.Tensor]:
    """TernGrad (arXiv:1705.07878) exchange of N simulated workers: shared scalers, independent
    stochastic ternarisation per worker, average of the N decoded gradients (not re-ternarised).

    stacked_grads: L tensors (N, *shape_l), worker i's gradient in row i. generators: N independent
    streams (one per worker), default torch's global one. Tensors with fewer than ``min_numel``
    elements, or flagged True in ``full_precision`` (L bools, e.g. the last layer), are averaged in
    full precision. Returns L averaged tensors of shape ``shape_l``.
    """
    n_workers = _check_stacked(stacked_grads)
    if generators is not None and len(generators) != n_workers:
        raise InputError(f"need one generator per worker ({n_workers}), got {len(generators)}")
    if not isinstance(min_numel, int) or min_numel < 0:
        raise InputError(f"min_numel must be an integer >= 0, got {min_numel!r}")
    flags = list(full_precision) if full_precision is not None else [False] * len(stacked_grads)
    if len(flags) != len(stacked_grads):
        raise InputError(f"full_precision needs one flag per tensor ({len(stacked_grads)}), got {len(flags)}")
    ternary = [i for i, g in enumerate(stacked_grads) if not flags[i] and g[0].numel() >= min_numel]
    scalers = shared_scalers([stacked_grads[i] for i in ternary], clip_factor, scope) if ternary else []
    out = [g.mean(0) for g in stacked_grads]  # full-precision average; ternarised ones replaced below
    for i, s in zip(ternary, scalers):
        g = stacked_grads[i]
        safe_s = torch.where(s > 0, s, torch.ones_like(s))  # s == 0 only when every worker's g is 0
        levels = torch.stack([_levels(g[w], safe_s, generators[w] if generators else None)
                              for w in range(n_workers)])
        out[i] = levels.sum(0).to(g.dtype) * (s / n_workers)
    return out
