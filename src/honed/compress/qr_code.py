"""A self-contained QR code codec, version 3 (29x29 modules), error-correction level H, byte mode
(ISO/IEC 18004 layout), for the mask-topology signatures of lottery-ticket ownership verification
(You are caught stealing my winning lottery ticket!, arXiv:2111.00162, step 2a/2f), so no qrcode /
OpenCV package is needed.

:func:`qr_encode` gives a (29, 29) bool tensor (True = dark module, no quiet zone) that equals the
``qrcode`` package's matrix for the same mask pattern; :func:`qr_decode` reads one back after
Reed-Solomon correction (2 blocks of 13 data + 22 check codewords over GF(256) mod 0x11D: up to 11
wrong codewords per block are corrected, more are detected). :func:`data_cells` marks the 567 data
modules; the rest are function patterns and format information. The mask pattern is
chosen by the ISO penalty score (default) or given; every pattern is a valid QR code.
"""
from functools import lru_cache

import numpy as np
import torch

from honed.core.errors import InputError

QR_SIZE = 29
MAX_TEXT_BYTES = 24  # version 3-H, byte mode: 26 data codewords - 12 header bits
_BLOCKS, _BLOCK_DATA, _BLOCK_EC = 2, 13, 22
_LEVEL_H = 0b10
_QR_MASKS = (lambda r, c: (r + c) % 2 == 0, lambda r, c: r % 2 == 0, lambda r, c: c % 3 == 0,
             lambda r, c: (r + c) % 3 == 0, lambda r, c: (r // 2 + c // 3) % 2 == 0,
             lambda r, c: (r * c) % 2 + (r * c) % 3 == 0,
             lambda r, c: ((r * c) % 2 + (r * c) % 3) % 2 == 0,
             lambda r, c: ((r + c) % 2 + (r * c) % 3) % 2 == 0)

# ---------------------------------------------------------------- GF(256) and Reed-Solomon
_EXP, _LOG = [0] * 512, [0] * 256
_v = 1
for _i in range(255):
    _EXP[_i], _LOG[_v] = _v, _i
    _v = (_v << 1) ^ (0x11D if _v & 0x80 else 0)
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


def _mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    return 0 if a == 0 else _EXP[(_LOG[a] - _LOG[b]) % 255]


def _eval_ascending(poly: list[int], x: int) -> int:
    out = 0
    for coef in reversed(poly):
        out = _mul(out, x) ^ coef
    return out


def _eval_descending(poly: list[int], x: int) -> int:
    return _eval_ascending(poly[::-1], x)


@lru_cache(maxsize=None)
def _rs_generator(nsym: int) -> tuple[int, ...]:
    """prod_{i<nsym} (x - a^i), coefficients highest degree first (monic)."""
    gen = [1]
    for i in range(nsym):
        gen = [(gen[j] if j < len(gen) else 0) ^ (_mul(gen[j - 1], _EXP[i]) if j > 0 else 0)
               for j in range(len(gen) + 1)]
    return tuple(gen)


def rs_encode(data: list[int], nsym: int) -> list[int]:
    """Reed-Solomon check bytes (QR convention: GF(256) mod 0x11D, roots a^0..a^(nsym-1))."""
    gen, rem = _rs_generator(nsym), [0] * nsym
    for byte in data:
        factor = byte ^ rem[0]
        rem = rem[1:] + [0]
        for i in range(nsym):
            rem[i] ^= _mul(gen[i + 1], factor)
    return rem


def _berlekamp_massey(synd: list[int]) -> list[int]:
    """Error locator Lambda(x) (ascending coefficients) of the syndrome sequence."""
    locator, prev, length, shift, prev_d = [1], [1], 0, 1, 1
    for n, s in enumerate(synd):
        d = s
        for i in range(1, length + 1):
            d ^= _mul(locator[i] if i < len(locator) else 0, synd[n - i])
        if d == 0:
            shift += 1
            continue
        scaled = [0] * shift + [_mul(_div(d, prev_d), v) for v in prev]
        old = list(locator)
        size = max(len(locator), len(scaled))
        locator = [(locator[i] if i < len(locator) else 0) ^ (scaled[i] if i < len(scaled) else 0)
                   for i in range(size)]
        if 2 * length <= n:
            length, prev, prev_d, shift = n + 1 - length, old, d, 1
        else:
            shift += 1
    return (locator + [0] * (length + 1))[:length + 1]


def rs_correct(received: list[int], nsym: int) -> list[int] | None:
    """Corrected data bytes of one Reed-Solomon block (data + ``nsym`` check bytes), or None when
    more than nsym/2 bytes are wrong (detected failure). Berlekamp-Massey, Chien search, Forney."""
    n = len(received)
    synd = [_eval_descending(received, _EXP[i]) for i in range(nsym)]
    if not any(synd):
        return list(received[:n - nsym])
    locator = _berlekamp_massey(synd)
    errors = len(locator) - 1
    powers = [k for k in range(n) if _eval_ascending(locator, _EXP[(255 - k) % 255]) == 0]
    if 2 * errors > nsym or len(powers) != errors:
        return None
    omega = [0] * nsym
    for i, s in enumerate(synd):
        for j, lam in enumerate(locator):
            if i + j < nsym:
                omega[i + j] ^= _mul(s, lam)
    derivative = [locator[i] if i % 2 else 0 for i in range(1, len(locator))]
    out = list(received)
    for k in powers:
        x_inv = _EXP[(255 - k) % 255]
        den = _eval_ascending(derivative, x_inv)
        if den == 0:
            return None
        out[n - 1 - k] ^= _div(_mul(_EXP[k], _eval_ascending(omega, x_inv)), den)
    if any(_eval_descending(out, _EXP[i]) for i in range(nsym)):
        return None
    return out[:n - nsym]


# ---------------------------------------------------------------- QR version 3-H layout
@lru_cache(maxsize=None)
def _function_layout() -> tuple[np.ndarray, np.ndarray]:
    """(dark, is_function) of the fixed patterns; format cells are reserved (values set later)."""
    n = QR_SIZE
    dark, func = np.zeros((n, n), bool), np.zeros((n, n), bool)
    for i in range(n):
        dark[6, i] = dark[i, 6] = i % 2 == 0
        func[6, i] = func[i, 6] = True
    for r0, c0 in ((3, 3), (3, n - 4), (n - 4, 3)):  # finders with their separators
        for r in range(max(r0 - 4, 0), min(r0 + 5, n)):
            for c in range(max(c0 - 4, 0), min(c0 + 5, n)):
                dark[r, c], func[r, c] = max(abs(r - r0), abs(c - c0)) not in (2, 4), True
    for r in range(20, 25):  # the one alignment pattern of version 3, centred at (22, 22)
        for c in range(20, 25):
            dark[r, c], func[r, c] = max(abs(r - 22), abs(c - 22)) != 1, True
    for copy in _format_cells():
        for r, c in copy:
            func[r, c] = True
    dark[n - 8, 8] = func[n - 8, 8] = True  # the dark module
    return dark, func


def _format_cells() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    n = QR_SIZE
    first = [(i, 8) for i in range(6)] + [(7, 8), (8, 8), (8, 7)] + [(8, 14 - i) for i in range(9, 15)]
    second = [(8, n - 1 - i) for i in range(8)] + [(n - 15 + i, 8) for i in range(8, 15)]
    return first, second


def _format_bits(mask_pattern: int) -> int:
    data = (_LEVEL_H << 3) | mask_pattern
    rem = data
    for _ in range(10):
        rem = (rem << 1) ^ ((rem >> 9) * 0x537)
    return ((data << 10) | rem) ^ 0x5412


@lru_cache(maxsize=None)
def _data_cell_order() -> tuple[tuple[int, int], ...]:
    """Data modules in QR placement order (2-column zigzag from the bottom right, skipping col 6)."""
    func, n, cells, right = _function_layout()[1], QR_SIZE, [], QR_SIZE - 1
    while right >= 1:
        if right == 6:
            right = 5
        upward = ((right + 1) & 2) == 0
        for vert in range(n):
            row = n - 1 - vert if upward else vert
            cells += [(row, right - j) for j in range(2) if not func[row, right - j]]
        right -= 2
    return tuple(cells)


def data_cells() -> torch.Tensor:
    """(29, 29) bool: True on the 567 data modules of a version-3 QR code (the cells written into a
    mask); False on function patterns and format information."""
    return torch.from_numpy(~_function_layout()[1].copy())


def _to_bits(value: int, width: int) -> list[int]:
    return [(value >> (width - 1 - k)) & 1 for k in range(width)]


def _codeword_bits(payload: bytes) -> list[int]:
    """Byte-mode bit stream of ``payload``: header, data, terminator, pad bytes, interleaved blocks."""
    capacity = _BLOCKS * _BLOCK_DATA * 8
    bits = [0, 1, 0, 0] + _to_bits(len(payload), 8) + [b for byte in payload for b in _to_bits(byte, 8)]
    bits += [0] * min(4, capacity - len(bits))
    bits += [0] * (-len(bits) % 8)
    data = [int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8)]
    data += [(0xEC, 0x11)[i % 2] for i in range(_BLOCKS * _BLOCK_DATA - len(data))]
    blocks = [data[b * _BLOCK_DATA:(b + 1) * _BLOCK_DATA] for b in range(_BLOCKS)]
    checks = [rs_encode(block, _BLOCK_EC) for block in blocks]
    codewords = [blk[i] for i in range(_BLOCK_DATA) for blk in blocks]
    codewords += [chk[i] for i in range(_BLOCK_EC) for chk in checks]
    return [b for cw in codewords for b in _to_bits(cw, 8)]


def _place(stream: list[int], mask_pattern: int) -> np.ndarray:
    dark = _function_layout()[0].copy()
    mask_fn = _QR_MASKS[mask_pattern]
    for k, (r, c) in enumerate(_data_cell_order()):
        dark[r, c] = bool(stream[k] if k < len(stream) else 0) ^ mask_fn(r, c)
    fmt = _format_bits(mask_pattern)
    for copy in _format_cells():
        for i, (r, c) in enumerate(copy):
            dark[r, c] = bool((fmt >> i) & 1)
    return dark


def penalty_score(code: np.ndarray) -> int:
    """ISO/IEC 18004 mask penalty of a square bool symbol: runs >= 5 (3 + excess), 2x2 blocks (3),
    finder-like 1011101 next to 4 light modules inside the symbol (40), dark share off 50% (10 per 5%)."""
    score = 0
    for lines in (code, code.T):
        for line in lines:
            edges = np.flatnonzero(np.diff(line.astype(np.int8))) + 1
            runs = np.diff(np.concatenate([[0], edges, [len(line)]]))
            score += int(sum(3 + r - 5 for r in runs if r >= 5))
            text = "".join("1" if v else "0" for v in line)
            score += 40 * sum(text.startswith(p, i) for p in ("10111010000", "00001011101")
                              for i in range(len(text) - 10))
    same = (code[:-1, :-1] == code[1:, :-1]) & (code[:-1, :-1] == code[:-1, 1:]) & (code[:-1, :-1] == code[1:, 1:])
    score += 3 * int(same.sum())
    return score + 10 * int(abs(100 * code.mean() - 50) // 5)


def qr_encode(text: str, mask_pattern: int | None = None) -> torch.Tensor:
    """QR code version 3, level H, byte mode (arXiv:2111.00162 step 2a) of ``text`` (UTF-8, at most
    24 bytes) -> (29, 29) bool tensor, True = dark module, no quiet zone. ``mask_pattern`` 0..7, or
    None (default) for the lowest :func:`penalty_score` (the ``qrcode`` package scores with blank
    format bits, so its automatic choice can differ; every pattern is a valid QR code)."""
    payload = str(text).encode("utf-8")
    if len(payload) > MAX_TEXT_BYTES:
        raise InputError(f"text must encode to at most {MAX_TEXT_BYTES} UTF-8 bytes, got {len(payload)}")
    if mask_pattern is not None and mask_pattern not in range(8):
        raise InputError(f"mask_pattern must be an integer in 0..7 or None, got {mask_pattern!r}")
    stream = _codeword_bits(payload)
    if mask_pattern is None:
        mask_pattern = min(range(8), key=lambda p: penalty_score(_place(stream, p)))
    return torch.from_numpy(_place(stream, mask_pattern))


def mask_pattern_of(code: torch.Tensor) -> int | None:
    """The mask pattern (0..7) a level-H format field of ``code`` names, None when unreadable."""
    return _read_mask_pattern(check_code(code).cpu().numpy())


def _read_mask_pattern(code: np.ndarray) -> int | None:
    best, pattern = 99, None
    for p in range(8):
        fmt = _format_bits(p)
        for copy in _format_cells():
            dist = sum(int(code[r, c]) != (fmt >> i) & 1 for i, (r, c) in enumerate(copy))
            if dist < best:
                best, pattern = dist, p
    return pattern if best <= 3 else None


def qr_decode(bits: torch.Tensor) -> str | None:
    """Text of a (29, 29) version-3-H QR code (True = dark), after Reed-Solomon correction; None when
    the format cannot be read, a block has too many errors, or the payload is not UTF-8 byte mode."""
    code = check_code(bits).cpu().numpy()
    pattern = _read_mask_pattern(code)
    if pattern is None:
        return None
    mask_fn, cells = _QR_MASKS[pattern], _data_cell_order()
    stream = [int(code[r, c] ^ mask_fn(r, c)) for r, c in cells[:_BLOCKS * (_BLOCK_DATA + _BLOCK_EC) * 8]]
    words = [int("".join(map(str, stream[i:i + 8])), 2) for i in range(0, len(stream), 8)]
    data = []
    for b in range(_BLOCKS):
        block = [words[i * _BLOCKS + b] for i in range(_BLOCK_DATA)]
        block += [words[_BLOCKS * _BLOCK_DATA + i * _BLOCKS + b] for i in range(_BLOCK_EC)]
        fixed = rs_correct(block, _BLOCK_EC)
        if fixed is None:
            return None
        data += fixed
    bitstr = "".join(format(w, "08b") for w in data)
    count = int(bitstr[4:12], 2)
    if bitstr[:4] != "0100" or count > MAX_TEXT_BYTES:
        return None
    payload = bytes(int(bitstr[12 + 8 * i:20 + 8 * i], 2) for i in range(count))
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_code(code: torch.Tensor) -> torch.Tensor:
    """Return ``code`` or raise InputError unless it is a (29, 29) bool tensor."""
    if not torch.is_tensor(code) or code.dtype != torch.bool or tuple(code.shape) != (QR_SIZE, QR_SIZE):
        got = tuple(code.shape) if torch.is_tensor(code) else type(code).__name__
        raise InputError(f"a signature must be a ({QR_SIZE}, {QR_SIZE}) bool tensor (see qr_encode), got {got}")
    return code
