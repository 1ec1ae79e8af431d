"""QR code version 3 (29x29 modules), error-correction level H, byte mode, for the mask-topology
signatures of lottery-ticket ownership verification (You are caught stealing my winning lottery
ticket!, arXiv:2111.00162, step 2a/2f), built on two maintained codecs:

* ``qrcode`` (python-qrcode) writes the symbol (:func:`qr_encode`), and its own layout routines
  (function patterns, format information, codeword placement, data masks) give the decoder its map
  of the symbol, so encoder and decoder cannot disagree about where a module lives. (segno was
  tried first: its padding writes a zero byte instead of the first pad codeword whenever the bit
  stream ends on a codeword boundary - always, for byte mode in version 3 - an open segno bug that
  gives a matrix other than the ISO/IEC 18004 one the tests hold.)
* ``reedsolo`` does the Reed-Solomon arithmetic (GF(256) mod 0x11D, generator 2, first root a^0: the QR
  convention) for :func:`rs_encode` / :func:`rs_correct`.

:func:`qr_decode` reads a code matrix back. The steps written here are only the reading ones that
neither library has (qrcode is an encoder; image decoders such as zxing-cpp or pyzbar take a rendered
picture and a native library): pick the mask from the format field, unmask, split the two interleaved
blocks (13 data + 22 check codewords each: up to 11 wrong codewords per block are corrected, more are
detected), parse the byte-mode header. :func:`data_cells` marks the 567 data modules.
"""
from functools import lru_cache

import numpy as np
import qrcode
import torch
from qrcode import util as qr_util
from reedsolo import ReedSolomonError, RSCodec

from honed.core.errors import InputError

QR_SIZE = 29
MAX_TEXT_BYTES = 24  # version 3-H, byte mode: 26 data codewords - 12 header bits
_VERSION, _LEVEL = 3, qrcode.constants.ERROR_CORRECT_H
_BLOCKS, _BLOCK_DATA, _BLOCK_EC = 2, 13, 22
_MAX_FORMAT_DISTANCE = 3  # format words are >= 7 bits apart: up to 3 wrong bits name one pattern


@lru_cache(maxsize=None)
def _codec(nsym: int) -> RSCodec:
    return RSCodec(nsym, prim=0x11D, generator=2, fcr=0, c_exp=8)


def rs_encode(data: list[int], nsym: int) -> list[int]:
    """The ``nsym`` Reed-Solomon check bytes of ``data`` (QR convention, via reedsolo)."""
    return list(_codec(nsym).encode(bytearray(data))[-nsym:])


def rs_correct(received: list[int], nsym: int) -> list[int] | None:
    """Corrected data bytes of one Reed-Solomon block (data + ``nsym`` check bytes), or None when
    reedsolo finds more than nsym/2 wrong bytes (a detected failure)."""
    try:
        data = _codec(nsym).decode(bytearray(received))[0]
    except ReedSolomonError:
        return None
    return list(data)


# ---------------------------------------------------------------- the symbol's map, from qrcode
def _layout(mask_pattern: int | None = 0) -> qrcode.QRCode:
    """A version-3-H symbol with qrcode's function patterns and the format field of ``mask_pattern``
    (None: left empty); its data modules are still None."""
    symbol = qrcode.QRCode(version=_VERSION, error_correction=_LEVEL, border=0)
    symbol.modules_count = QR_SIZE
    symbol.modules = [[None] * QR_SIZE for _ in range(QR_SIZE)]
    for row, col in ((0, 0), (QR_SIZE - 7, 0), (0, QR_SIZE - 7)):
        symbol.setup_position_probe_pattern(row, col)
    symbol.setup_position_adjust_pattern()
    symbol.setup_timing_pattern()
    if mask_pattern is not None:
        symbol.setup_type_info(False, mask_pattern)  # format field and the dark module
    return symbol


def _free(symbol: qrcode.QRCode) -> np.ndarray:
    return np.array([[m is None for m in row] for row in symbol.modules])


@lru_cache(maxsize=None)
def _data_cell_order() -> tuple[tuple[int, int], ...]:
    """Data modules in placement order: qrcode places the bits of each cell's index, one bit plane a
    pass, with mask 0 (taken off again)."""
    free = _free(_layout())
    n_cells, unmask = int(free.sum()), qr_util.mask_func(0)
    index = np.zeros((QR_SIZE, QR_SIZE), np.int64)
    for plane in range(n_cells.bit_length()):
        bits = [(i >> plane) & 1 for i in range(n_cells)]
        symbol = _layout()
        symbol.map_data(list(np.packbits(bits)), 0)
        placed = np.array([[bool(m) ^ unmask(r, c) for c, m in enumerate(row)]
                           for r, row in enumerate(symbol.modules)])
        index += placed.astype(np.int64) << plane
    cells = [(int(r), int(c)) for r, c in zip(*free.nonzero())]
    return tuple(sorted(cells, key=lambda rc: index[rc]))


@lru_cache(maxsize=None)
def _format_fields() -> tuple[np.ndarray, np.ndarray]:
    """(cells (k, 2), expected (8, k) bool): the format modules (both copies) and their value per mask."""
    cells = np.argwhere(_free(_layout(None)) & ~_free(_layout(0)))
    modules = [np.array(_layout(p).modules, dtype=bool) for p in range(8)]
    return cells, np.stack([m[cells[:, 0], cells[:, 1]] for m in modules])


def data_cells() -> torch.Tensor:
    """(29, 29) bool: True on the 567 data modules of a version-3 QR code (the cells written into a
    mask); False on function patterns and format information."""
    return torch.from_numpy(_free(_layout()))


def qr_encode(text: str, mask_pattern: int | None = None) -> torch.Tensor:
    """QR code version 3, level H, byte mode (arXiv:2111.00162 step 2a) of ``text`` (UTF-8, at most
    24 bytes) -> (29, 29) bool tensor, True = dark module, no quiet zone. ``mask_pattern`` 0..7, or
    None (default) for qrcode's choice: the lowest ISO/IEC 18004 penalty, scored with the format
    field left blank (every pattern is a valid QR code)."""
    payload = str(text).encode("utf-8")
    if len(payload) > MAX_TEXT_BYTES:
        raise InputError(f"text must encode to at most {MAX_TEXT_BYTES} UTF-8 bytes, got {len(payload)}")
    if mask_pattern is not None and mask_pattern not in range(8):
        raise InputError(f"mask_pattern must be an integer in 0..7 or None, got {mask_pattern!r}")
    symbol = qrcode.QRCode(version=_VERSION, error_correction=_LEVEL, border=0, mask_pattern=mask_pattern)
    symbol.add_data(qr_util.QRData(payload, mode=qr_util.MODE_8BIT_BYTE))  # byte mode, even for digits
    symbol.make(fit=False)
    return torch.from_numpy(np.array(symbol.get_matrix(), dtype=bool))


def mask_pattern_of(code: torch.Tensor) -> int | None:
    """The mask pattern (0..7) a level-H format field of ``code`` names, None when unreadable."""
    return _read_mask_pattern(check_code(code).cpu().numpy())


def _read_mask_pattern(code: np.ndarray) -> int | None:
    cells, expected = _format_fields()
    distance = (expected != code[cells[:, 0], cells[:, 1]]).sum(1)
    pattern = int(distance.argmin())
    return pattern if distance[pattern] <= _MAX_FORMAT_DISTANCE else None


def _codewords(code: np.ndarray, pattern: int) -> list[int]:
    mask_fn = qr_util.mask_func(pattern)
    cells = _data_cell_order()[:_BLOCKS * (_BLOCK_DATA + _BLOCK_EC) * 8]
    bits = [int(code[r, c]) ^ int(mask_fn(r, c)) for r, c in cells]
    return [int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8)]


def qr_decode(bits: torch.Tensor) -> str | None:
    """Text of a (29, 29) version-3-H QR code (True = dark), after Reed-Solomon correction; None when
    the format cannot be read, a block has too many errors, or the payload is not UTF-8 byte mode."""
    code = check_code(bits).cpu().numpy()
    pattern = _read_mask_pattern(code)
    if pattern is None:
        return None
    words, data = _codewords(code, pattern), []
    for b in range(_BLOCKS):
        block = words[b:_BLOCKS * _BLOCK_DATA:_BLOCKS] + words[_BLOCKS * _BLOCK_DATA + b::_BLOCKS]
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
