"""Packed on-disk format for pruned + codebook-quantised models (OPQ, arXiv:2205.11141).

A compressed weight tensor W (C output channels first) is a :class:`CompressedLayer`: a boolean mask
of kept positions, one integer code per kept weight (``bits`` in 1..8) and an affine per-channel
codebook ``value = offset[c] + step[c] * (code - zero)`` (``offset``/``step`` hold 1 or C entries).
Pruned positions are exactly 0. Every other tensor of the state dict (biases, BatchNorm, counters) is
stored dense in its own dtype.

File layout (all integers little-endian)::

    bytes 0..7    magic  b"HONEDPQ\\x01"
    bytes 8..11   uint32 H, length of the header
    bytes 12..    H bytes: zlib-compressed UTF-8 JSON header
    then          payload: the sections the header points to, as [offset, nbytes] from payload start

    header = {"format": "honed-packed-v1", "payload_bytes": n, "crc32": crc of payload, "meta": {...},
              "layers": [[name, shape, bits, zero, gap_bits, entries, index, codes, step, offset], ...],
              "dense":  [[name, dtype, shape, section], ...]}

For a layer: ``index`` is the relative position index (``entries`` gap codes of ``gap_bits`` bits,
see :func:`encode_positions`), ``codes`` the kept weights' codes bit-packed at ``bits`` bits in
row-major order of the kept positions, ``step``/``offset`` float32 arrays. Bit packing is LSB first
(:func:`pack_bits`). Reading anything else raises :class:`honed.core.errors.StoreError`.
"""
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from honed.core.atomic import atomic_write
from honed.core.errors import InputError, StoreError

MAGIC = b"HONEDPQ\x01"
FORMAT = "honed-packed-v1"
MAX_BITS = 8
DENSE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
                "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
_DTYPE_NAMES = {v: k for k, v in DENSE_DTYPES.items()}


def check_bits(bits: int, name: str = "bits") -> int:
    """Return ``bits`` or raise InputError unless it is an integer in 1..8."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise InputError(f"{name} must be an integer in 1..{MAX_BITS}, got {bits!r}")
    return int(bits)


def pack_bits(values: torch.Tensor | np.ndarray, bits: int) -> bytes:
    """OPQ packed format (arXiv:2205.11141): pack unsigned integers of ``bits`` bits (1..8) densely.

    values: 1-D integers in [0, 2**bits). Value i occupies stream bits [i*bits, (i+1)*bits), least
    significant bit first; the stream is cut into bytes LSB first. Returns ceil(n*bits/8) bytes.
    """
    bits = check_bits(bits)
    arr = np.asarray(values.cpu() if torch.is_tensor(values) else values).reshape(-1)
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= 1 << bits):
        raise InputError(f"values to pack must be integers in [0, {1 << bits}), got range "
                         f"[{arr.min()}, {arr.max()}] of dtype {arr.dtype}")
    planes = (arr.astype(np.uint8)[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` integers of ``bits`` bits -> int64 tensor (count,)."""
    bits = check_bits(bits)
    if count < 0 or len(data) < math.ceil(count * bits / 8):
        raise StoreError(f"packed stream of {len(data)} bytes cannot hold {count} values of {bits} bits")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.int64))
    return torch.from_numpy(flat.reshape(count, bits).astype(np.int64) @ weights)


def _index_entries(gaps: np.ndarray, gap_bits: int) -> int:
    return int(gaps.size + (gaps // ((1 << gap_bits) - 1)).sum())


def encode_positions(mask: torch.Tensor) -> tuple[np.ndarray, int]:
    """Relative index of the True positions of ``mask`` (any shape, row-major): (gap codes, gap_bits).

    Each kept position is preceded by g zeros since the previous one; with b bits and E = 2**b - 1,
    g is written as g // E escape codes E ("skip E positions") then one code g % E ("skip, then a
    kept weight"). b in 1..8 is chosen to minimise entries * b (b = 1 is a bitmap without its tail).
    """
    pos = np.flatnonzero(mask.reshape(-1).cpu().numpy())
    gaps = np.diff(np.concatenate([[-1], pos])) - 1
    gap_bits = min(range(1, MAX_BITS + 1), key=lambda b: (_index_entries(gaps, b) * b, b))
    escape = (1 << gap_bits) - 1
    reps = gaps // escape
    codes = np.full(int(reps.sum() + gaps.size), escape, dtype=np.int64)
    codes[np.cumsum(reps + 1) - 1] = gaps % escape
    return codes, gap_bits


def decode_positions(codes: torch.Tensor, gap_bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`encode_positions`: gap codes -> flat bool mask of ``numel`` entries."""
    escape = (1 << check_bits(gap_bits, "gap_bits")) - 1
    is_weight = codes != escape
    positions = torch.cumsum(torch.where(is_weight, codes + 1, escape), 0)[is_weight] - 1
    trailing_escape = len(codes) > 0 and not bool(is_weight[-1])
    if trailing_escape or (len(positions) > 0 and int(positions[-1]) >= numel):
        raise StoreError(f"position index does not fit a tensor of {numel} entries")
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[positions] = True
    return mask


def channel_view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a per-channel (C,) or shared (1,) vector to broadcast over a weight of ``ndim`` dims."""
    return values.reshape(-1, *([1] * (ndim - 1)))


def codebook_values(level: torch.Tensor, mask: torch.Tensor, offset: torch.Tensor,
                    step: torch.Tensor) -> torch.Tensor:
    """OPQ (arXiv:2205.11141) decoding: ``where(mask, offset[c] + step[c] * level, 0)``.

    level: float32 tensor shaped like the weight (C, ...); offset/step: float32 (1,) or (C,). The one
    place where codes become weights: training (STE forward) and reading a file both call it, so
    the decoded weights are bit-identical.
    """
    ndim = level.dim()
    values = channel_view(offset, ndim) + channel_view(step, ndim) * level
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


@dataclass
class CompressedLayer:
    """One pruned + quantised weight (OPQ, arXiv:2205.11141).

    shape: the weight's shape (C, ...); mask: bool tensor of that shape (True = kept); codes: int64
    (mask.sum(),) in [0, 2**bits) for the kept weights in row-major order; zero: float with
    ``level = code - zero``; offset, step: float32 (1,) or (C,).
    """

    shape: tuple[int, ...]
    mask: torch.Tensor
    codes: torch.Tensor
    bits: int
    zero: float
    offset: torch.Tensor
    step: torch.Tensor

    def validate(self, name: str = "layer") -> None:
        check_bits(self.bits, f"{name}.bits")
        channels = self.shape[0] if self.shape else 1
        if tuple(self.mask.shape) != tuple(self.shape) or self.mask.dtype != torch.bool:
            raise InputError(f"{name}: mask must be bool of shape {tuple(self.shape)}")
        if self.codes.numel() != int(self.mask.sum()):
            raise InputError(f"{name}: {self.codes.numel()} codes for {int(self.mask.sum())} kept weights")
        for key in ("offset", "step"):
            vec = getattr(self, key)
            if vec.dtype != torch.float32 or vec.dim() != 1 or vec.numel() not in (1, channels):
                raise InputError(f"{name}: {key} must be float32 of length 1 or {channels}")
            if not torch.isfinite(vec).all():
                raise InputError(f"{name}: {key} contains NaN or inf")

    def weight(self) -> torch.Tensor:
        """The decoded float32 weight (pruned entries exactly 0)."""
        level = torch.zeros(self.shape, dtype=torch.float32, device=self.codes.device)
        level[self.mask] = self.codes.to(torch.float32) - self.zero
        return codebook_values(level, self.mask, self.offset, self.step)


@dataclass
class PackedModel:
    """What :func:`read_packed` returns: compressed layers, dense tensors and the writer's metadata."""

    layers: dict[str, CompressedLayer]
    dense: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Decoded state dict: every layer's weight plus the dense tensors."""
        out = {name: layer.weight() for name, layer in self.layers.items()}
        out.update(self.dense)
        return out


class _Payload:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, blob: bytes) -> list[int]:
        self.parts.append(blob)
        self.size += len(blob)
        return [self.size - len(blob), len(blob)]


def _layer_record(name: str, layer: CompressedLayer, payload: _Payload) -> list:
    layer.validate(name)
    gap_codes, gap_bits = encode_positions(layer.mask)
    return [name, list(layer.shape), layer.bits, layer.zero, gap_bits, len(gap_codes),
            payload.add(pack_bits(gap_codes, gap_bits)), payload.add(pack_bits(layer.codes, layer.bits)),
            payload.add(layer.step.cpu().numpy().astype("<f4").tobytes()),
            payload.add(layer.offset.cpu().numpy().astype("<f4").tobytes())]


def _dense_record(name: str, tensor: torch.Tensor, payload: _Payload) -> list:
    if tensor.dtype not in _DTYPE_NAMES:
        raise InputError(f"dense tensor {name} has unsupported dtype {tensor.dtype}")
    data = tensor.detach().cpu().contiguous().numpy()
    return [name, _DTYPE_NAMES[tensor.dtype], list(tensor.shape), payload.add(data.astype(data.dtype.newbyteorder("<")).tobytes())]


def write_packed(path: str | Path, layers: Mapping[str, CompressedLayer],
                 dense: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> int:
    """OPQ (arXiv:2205.11141): write ``layers`` and ``dense`` tensors atomically in the packed layout
    of this module's docstring; returns the file's size in bytes (measured with os.path.getsize)."""
    payload = _Payload()
    header = {"format": FORMAT, "meta": dict(meta or {}),
              "layers": [_layer_record(n, layer, payload) for n, layer in layers.items()],
              "dense": [_dense_record(n, t, payload) for n, t in dense.items()]}
    body = b"".join(payload.parts)
    header.update(payload_bytes=len(body), crc32=zlib.crc32(body))
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode("utf-8"), 9)
    blob = MAGIC + struct.pack("<I", len(head)) + head + body

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(blob)

    return atomic_write(path, write).stat().st_size


def _read_header(path: Path) -> tuple[dict, bytes]:
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise StoreError(f"cannot read packed model {path}: {err.strerror}") from None
    if len(blob) < 12 or blob[:8] != MAGIC:
        raise StoreError(f"{path} is not a honed packed model (bad magic)")
    (size,) = struct.unpack("<I", blob[8:12])
    try:
        header = json.loads(zlib.decompress(blob[12:12 + size]).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError):
        raise StoreError(f"{path} has a corrupt header") from None
    body = blob[12 + size:]
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StoreError(f"{path} has unknown format {header.get('format') if isinstance(header, dict) else None!r}")
    if len(body) != header.get("payload_bytes") or zlib.crc32(body) != header.get("crc32"):
        raise StoreError(f"{path} is truncated or corrupt (payload size or checksum mismatch)")
    return header, body


def _section(body: bytes, where: list[int]) -> bytes:
    start, size = where
    return body[start:start + size]


def _read_layer(record: list, body: bytes) -> tuple[str, CompressedLayer]:
    name, shape, bits, zero, gap_bits, entries, index, codes, step, offset = record
    numel = math.prod(shape)
    mask = decode_positions(unpack_bits(_section(body, index), gap_bits, entries), gap_bits, numel)
    layer = CompressedLayer(
        tuple(shape), mask.reshape(shape), unpack_bits(_section(body, codes), bits, int(mask.sum())),
        bits, float(zero), torch.from_numpy(np.frombuffer(_section(body, offset), "<f4").astype(np.float32)),
        torch.from_numpy(np.frombuffer(_section(body, step), "<f4").astype(np.float32)))
    layer.validate(name)
    return name, layer


def _read_dense(record: list, body: bytes) -> tuple[str, torch.Tensor]:
    name, dtype, shape, where = record
    np_dtype = torch.empty(0, dtype=DENSE_DTYPES[dtype]).numpy().dtype.newbyteorder("<")
    array = np.frombuffer(_section(body, where), dtype=np_dtype).astype(np_dtype.newbyteorder("="))
    return name, torch.from_numpy(array.copy()).reshape(shape)


def read_packed(path: str | Path) -> PackedModel:
    """OPQ (arXiv:2205.11141): read a file written by :func:`write_packed`. A file of another kind,
    truncated or corrupt raises StoreError naming it."""
    path = Path(path)
    header, body = _read_header(path)
    try:
        layers = dict(_read_layer(r, body) for r in header["layers"])
        dense = dict(_read_dense(r, body) for r in header["dense"])
    except (KeyError, TypeError, ValueError, RuntimeError, InputError) as err:
        raise StoreError(f"{path} has inconsistent records ({err.__class__.__name__}: {err})") from None
    return PackedModel(layers, dense, header.get("meta", {}))


def load_packed(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load the decoded weights of a packed file into ``model`` (strict: every key must match)."""
    state = read_packed(path).state_dict()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise StoreError(f"{path} does not fit this model: {str(err).splitlines()[0]}") from None
    return model
