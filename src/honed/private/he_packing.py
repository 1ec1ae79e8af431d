"""A numpy float64 SIMD-slot simulator of CKKS-style ciphertexts with operation counters, and the two
convolution packings FFConv combines (FFConv: Fast Factorized Convolutional Neural Network Inference
on Encrypted Data, Lu et al., arXiv:2102.03494).

No encryption happens here: a :class:`Ciphertext` is a float64 vector of ``slots`` values (or a batch
(B, slots) of independent per-image ciphertexts run in lockstep; counts are per image), and every
homomorphic operation is counted, so a packing plan's cost is measured by running it. The packing
functions only call ciphertext methods, so the same plans also run on real CKKS ciphertexts
(:class:`honed.private.he_ckks.CKKSBackend`, Microsoft SEAL through TenSEAL, extra ``he``); the
simulator stays their fast oracle.

Packings (stride-1 convolutions; a "packed tensor" :class:`Packed` maps each value (c, i, j) to a slot
of one of its ciphertexts):

* :func:`dense_pack_linear` - LoLa's dense representation (DensePack): the whole input in one
  ciphertext within slots [0, n), n a power of two, replicated k = S // n times; per group of k outputs:
  one ct x pt multiply by the stacked Toeplitz rows, log2(n) rotate-and-adds, one mask multiply and one
  rotation placing the group at offset g. Output o = g + G*j lands in slot j*n + g (G = ceil(m/k)).
* :func:`conv_pack_conv` - ConvPack: one output ciphertext per output channel, built from rotated
  (shifted) copies of the input channels times masked weight plaintexts; the rotations are shared by
  all outputs. :func:`client_conv_copies` is the first-layer variant whose shifted copies the client
  encrypts, so the server rotates nothing.

Closed-form counts (per image; ``rot(0)`` is a no-op and not counted; "HMA" = ct x pt multiply):

=====================  ==========================  ===============================  ======================
packing                rotations                   HMA (mul_plain)                  adds
=====================  ==========================  ===============================  ======================
DensePack (m outputs)  G*log2(n) + G - 1           2G (Toeplitz + mask)             G*log2(n) + G-1 (+1 bias)
ConvPack d x d         distinct non-zero shifts    d*d*C_in*C_out                   (d*d*C_in - 1)*C_out (+C_out bias)
                       (<= d*d*C_in; r-1 for 1x1)
=====================  ==========================  ===============================  ======================

The card counts G repack rotations and G HMAs for DensePack; we count G-1 rotations (group 0 needs
none) and also the G mask multiplies. Latency units (:class:`CostModel`, the card's defaults):
c_rot = 10 per rotation, c_hma = 1 per ct x pt multiply, c_add = 0.1 per addition, c_sq = 2 per
ct x ct multiply (Falcon reports a rotation ~10x a ct x pt multiply). These formulas are our
specification of the plan, not the paper's tables.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from honed.core.errors import InputError

OPS = ("rotations", "mul_plain", "mul_ct", "adds")


@dataclass
class OpCounts:
    """FFConv (arXiv:2102.03494) homomorphic operation counts (per image) of one plan section."""

    rotations: int = 0
    mul_plain: int = 0
    mul_ct: int = 0
    adds: int = 0

    def __add__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(*(getattr(self, k) + getattr(other, k) for k in OPS))

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in OPS}


@dataclass(frozen=True)
class CostModel:
    """FFConv (arXiv:2102.03494) modelled latency units per operation (the card's defaults):
    rotation 10, ct x pt multiply (HMA) 1, addition 0.1, ct x ct multiply (square) 2."""

    c_rot: float = 10.0
    c_hma: float = 1.0
    c_add: float = 0.1
    c_sq: float = 2.0

    def latency(self, counts: OpCounts) -> float:
        return (self.c_rot * counts.rotations + self.c_hma * counts.mul_plain
                + self.c_add * counts.adds + self.c_sq * counts.mul_ct)


class OpCounter:
    """FFConv (arXiv:2102.03494) operation counts per named plan section (``conv:3``, ``layout:3``...),
    shared by the slot simulator and the real CKKS backend."""

    def __init__(self):
        self.counts: dict[str, OpCounts] = {}
        self.current = "main"

    @contextmanager
    def section(self, name: str):
        """Count the operations of the ``with`` block under ``name``."""
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    def count(self, op: str, n: int = 1) -> None:
        record = self.counts.setdefault(self.current, OpCounts())
        setattr(record, op, getattr(record, op) + n)

    def total(self, prefix: str = "") -> OpCounts:
        """Sum of the counts of every section whose name starts with ``prefix``."""
        out = OpCounts()
        for name, record in self.counts.items():
            if name.startswith(prefix):
                out = out + record
        return out


class SlotSimulator(OpCounter):
    """FFConv (arXiv:2102.03494) slot simulator: creates :class:`Ciphertext` objects of ``slots``
    float64 values and counts every operation on them under the current :meth:`section` name.
    ``encrypted`` counts the ciphertexts the client sends (per image)."""

    def __init__(self, slots: int = 4096):
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 2 or slots & (slots - 1):
            raise InputError(f"slots must be a power of two >= 2, got {slots!r}")
        super().__init__()
        self.slots = slots
        self.encrypted = 0

    def encrypt(self, values: np.ndarray) -> "Ciphertext":
        """A ciphertext from a (slots,) or (B, slots) float array (shorter rows are zero-padded)."""
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[None] if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[1] > self.slots or not np.isfinite(arr).all():
            raise InputError(f"encrypt needs finite (B, <= {self.slots}) values, got shape {arr.shape}")
        out = np.zeros((arr.shape[0], self.slots))
        out[:, :arr.shape[1]] = arr
        self.encrypted += 1
        return Ciphertext(self, out)


class Ciphertext:
    """FFConv (arXiv:2102.03494) simulated ciphertext: ``values`` (B, slots) float64, one row per image.
    ``rot(k)`` rotates left cyclically (slot i receives slot i + k mod S); ``rot(-k)`` inverts it."""

    def __init__(self, sim: SlotSimulator, values: np.ndarray, depth: int = 0):
        self.sim, self.values, self.depth = sim, values, depth  # depth: multiplicative levels used

    def _plain(self, plain) -> np.ndarray:
        arr = np.asarray(plain, dtype=np.float64)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != self.sim.slots) or not np.isfinite(arr).all():
            raise InputError(f"a plaintext must be a finite scalar or ({self.sim.slots},) vector")
        return arr

    def add(self, other: "Ciphertext") -> "Ciphertext":
        self.sim.count("adds")
        return Ciphertext(self.sim, self.values + other.values, max(self.depth, other.depth))

    def add_plain(self, plain) -> "Ciphertext":
        self.sim.count("adds")
        return Ciphertext(self.sim, self.values + self._plain(plain), self.depth)

    def mul_plain(self, plain) -> "Ciphertext":
        self.sim.count("mul_plain")
        return Ciphertext(self.sim, self.values * self._plain(plain), self.depth + 1)

    def mul_ct(self, other: "Ciphertext") -> "Ciphertext":
        self.sim.count("mul_ct")
        return Ciphertext(self.sim, self.values * other.values, max(self.depth, other.depth) + 1)

    def rot(self, k: int) -> "Ciphertext":
        k = int(k) % self.sim.slots
        if k == 0:
            return self
        self.sim.count("rotations")
        return Ciphertext(self.sim, np.roll(self.values, -k, axis=1), self.depth)

    def decrypt(self) -> np.ndarray:
        return self.values.copy()


@dataclass
class Packed:
    """FFConv (arXiv:2102.03494) packed tensor of shape (C, H, W): channel c lives in ciphertext
    ``cts[chan_ct[c]]`` and value (c, i, j) in slot ``slot[c, i, j]``; every other slot is zero."""

    cts: list
    chan_ct: np.ndarray
    slot: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.slot.shape)

    def decrypt(self) -> np.ndarray:
        """The (B, C, H, W) float64 values."""
        plain = [ct.decrypt() for ct in self.cts]
        out = np.zeros((plain[0].shape[0],) + self.shape)
        for c in range(self.shape[0]):
            out[:, c] = plain[self.chan_ct[c]][:, self.slot[c]]
        return out


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def client_dense_input(sim: SlotSimulator, x: np.ndarray) -> tuple[Packed, int]:
    """FFConv (arXiv:2102.03494) client-prepared DensePack input: x (B, C, H, W) raster-flattened into
    slots [0, C*H*W), replicated k = S // n times (n = next power of two); returns (packed, n)."""
    batch, c, h, w = x.shape
    n = next_pow2(c * h * w)
    if n > sim.slots:
        raise InputError(f"input of {c * h * w} values does not fit {sim.slots} slots")
    flat = np.zeros((batch, n))
    flat[:, :c * h * w] = x.reshape(batch, -1)
    ct = sim.encrypt(np.tile(flat, (1, sim.slots // n)))
    return Packed([ct], np.zeros(c, dtype=int), np.arange(c * h * w).reshape(c, h, w)), n


def replicate(ct: Ciphertext, n: int) -> Ciphertext:
    """FFConv (arXiv:2102.03494) server-side replication of a clean ciphertext whose content lies in
    slots [0, n) into k = S // n copies: log2(k) rotate-and-adds."""
    for t in range(int(math.log2(ct.sim.slots // n))):
        ct = ct.add(ct.rot(-(n << t)))
    return ct


def merge_into_one(packed: Packed) -> Packed:
    """FFConv (arXiv:2102.03494) layout step: move every ciphertext of ``packed`` into one by a single
    rotation each (the smallest right shift that collides with nothing placed yet)."""
    sim = packed.cts[0].sim
    if len(packed.cts) == 1:
        return packed
    taken = np.zeros(sim.slots, dtype=bool)
    out, shifts = None, []
    for t, ct in enumerate(packed.cts):
        used = np.unique(packed.slot[packed.chan_ct == t])
        shift = next((s for s in range(sim.slots - int(used.max()))
                      if not taken[used + s].any()), None)
        if shift is None:
            raise InputError("the channels do not fit one ciphertext")
        taken[used + shift] = True
        moved = ct.rot(-shift)
        out = moved if out is None else out.add(moved)
        shifts.append(shift)
    slot = packed.slot + np.asarray(shifts)[packed.chan_ct][:, None, None]
    return Packed([out], np.zeros(len(packed.chan_ct), dtype=int), slot)


def conv_matrix(weight: torch.Tensor, height: int, width: int, padding: int) -> np.ndarray:
    """FFConv (arXiv:2102.03494): the (C_out*H'*W', C_in*H*W) float64 Toeplitz matrix of a stride-1
    conv (weight (C_out, C_in, d, d)) on (C_in, H, W) inputs, rows and columns raster-ordered."""
    c_in = weight.shape[1]
    eye = torch.eye(c_in * height * width, dtype=torch.float64).reshape(-1, c_in, height, width)
    out = F.conv2d(eye, weight.detach().double().cpu(), padding=padding)
    return out.reshape(eye.shape[0], -1).T.numpy()


def dense_pack_linear(packed: Packed, matrix: np.ndarray, n: int, bias: np.ndarray | None = None,
                      out_shape: tuple[int, int, int] | None = None) -> tuple[Packed, int]:
    """FFConv (arXiv:2102.03494) DensePack (LoLa dense) evaluation of y = matrix @ x (+ bias).

    ``packed`` holds x (C, H, W) in ONE ciphertext replicated k = S // n times, content in [0, n);
    ``matrix`` (m, C*H*W) has raster-ordered columns (:func:`conv_matrix` for a conv). Groups of k
    outputs share one Toeplitz multiply, log2(n) rotate-and-adds and a mask; output o = g + G*j goes
    to slot j*n + g. Returns (packed output of ``out_shape`` (default (m, 1, 1)), G)."""
    sim, cols = packed.cts[0].sim, packed.slot.reshape(-1)
    m, k = matrix.shape[0], sim.slots // n
    groups = math.ceil(m / k)
    if len(packed.cts) != 1 or cols.max() >= n or n & (n - 1) or groups > n:
        raise InputError("DensePack needs one replicated ciphertext with content in [0, n), n a power of two")
    if matrix.shape[1] != cols.size:
        raise InputError(f"matrix has {matrix.shape[1]} columns for {cols.size} input values")
    placed = np.zeros((m, n))
    placed[:, cols] = matrix
    out = None
    for g in range(groups):
        rows = np.arange(g, m, groups)
        toeplitz = np.zeros(sim.slots)
        toeplitz[:len(rows) * n] = placed[rows].reshape(-1)
        z = packed.cts[0].mul_plain(toeplitz)
        for step in range(int(math.log2(n))):
            z = z.add(z.rot(1 << step))
        mask = np.zeros(sim.slots)
        mask[np.arange(len(rows)) * n] = 1.0
        z = z.mul_plain(mask).rot(-g)
        out = z if out is None else out.add(z)
    o = np.arange(m)
    slot = (o // groups) * n + o % groups
    if bias is not None:
        plain = np.zeros(sim.slots)
        plain[slot] = bias
        out = out.add_plain(plain)
    shape = out_shape or (m, 1, 1)
    return Packed([out], np.zeros(shape[0], dtype=int), slot.reshape(shape)), groups


def compact_dense_output(packed: Packed, n: int, groups: int) -> Packed:
    """FFConv (arXiv:2102.03494) repack of a DensePack output (blocks of ``groups`` values at stride n)
    into contiguous raster slots [0, m): ceil(log2(blocks)) steps of 2 masks, 1 rotation, 1 add."""
    sim, ct = packed.cts[0].sim, packed.cts[0]
    m = packed.slot.size
    width, stride, blocks = groups, n, math.ceil(m / groups)
    idx = np.arange(sim.slots)
    for _ in range(math.ceil(math.log2(blocks)) if blocks > 1 else 0):
        inside = idx % stride < width
        even = ct.mul_plain((inside & ((idx // stride) % 2 == 0)).astype(float))
        odd = ct.mul_plain((inside & ((idx // stride) % 2 == 1)).astype(float))
        ct = even.add(odd.rot(stride - width))
        width, stride = 2 * width, 2 * stride
    return Packed([ct], packed.chan_ct, np.arange(m).reshape(packed.shape))


def tap_mask(height: int, width: int, a: int, b: int, padding: int) -> np.ndarray:
    """(H, W) bool: output pixels (i, j) whose input pixel (i + a - p, j + b - p) is inside the map."""
    rows = (np.arange(height) + a - padding)
    cols = (np.arange(width) + b - padding)
    return ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]


def client_conv_copies(sim: SlotSimulator, x: np.ndarray, kernel: int, padding: int) -> tuple[dict, np.ndarray]:
    """FFConv (arXiv:2102.03494) client-prepared ConvPack input: for x (B, C, H, W), the d*d*C shifted
    copies (c, a, b) -> ciphertext holding x[c, i+a-p, j+b-p] (0 outside) at raster slot i*W + j.
    Returns (copies, output slot map (H, W))."""
    batch, channels, height, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    copies = {}
    for c in range(channels):
        for a in range(kernel):
            for b in range(kernel):
                window = padded[:, c, a:a + height, b:b + width].reshape(batch, -1)
                copies[(c, a, b)] = sim.encrypt(window)
    return copies, np.arange(height * width).reshape(height, width)


def shifted_copies(packed: Packed, kernel: int, padding: int) -> dict:
    """FFConv (arXiv:2102.03494) server-side ConvPack input: (c, a, b) -> copy of channel c rotated so
    that input (c, i+a-p, j+b-p) sits in channel 0's slot of (i, j); one rotation per distinct
    non-zero (ciphertext, shift), shared by every output channel."""
    channels, height, width = packed.shape
    ref, keys = packed.slot[0], {}
    for c in range(channels):
        for a in range(kernel):
            for b in range(kernel):
                valid = tap_mask(height, width, a, b, padding)
                if not valid.any():
                    continue
                src = np.roll(np.roll(packed.slot[c], padding - a, axis=0), padding - b, axis=1)
                shifts = np.unique((src - ref)[valid])
                if shifts.size != 1:
                    raise InputError("ConvPack needs a layout where every channel tap is one rotation")
                keys[(c, a, b)] = (int(packed.chan_ct[c]), int(shifts[0]))
    rotated = {key: packed.cts[key[0]].rot(key[1]) for key in sorted(set(keys.values()))}
    return {tap: rotated[key] for tap, key in keys.items()}


def conv_pack_conv(copies: dict, ref: np.ndarray, weight: torch.Tensor, bias: torch.Tensor | None,
                   padding: int) -> Packed:
    """FFConv (arXiv:2102.03494) ConvPack stride-1 'same' convolution: output channel o is one
    ciphertext sum_{c,a,b} copy(c,a,b) * plaintext(w[o,c,a,b] on the tap's valid output slots of
    ``ref`` (H, W)) (+ bias). ``copies`` from :func:`client_conv_copies` or :func:`shifted_copies`.
    On the simulator the sums are computed tap by tap in one einsum (same values and counts as the
    term-by-term evaluation that real ciphertexts get)."""
    c_out, c_in, kernel, _ = weight.shape
    if 2 * padding != kernel - 1:
        raise InputError(f"ConvPack here evaluates 'same' convolutions: need padding (d-1)/2, got {padding}")
    sim = next(iter(copies.values())).sim
    w = weight.detach().double().cpu().numpy()
    height, width = ref.shape
    masks = {}
    for a, b in {(a, b) for (_, a, b) in copies}:
        masks[(a, b)] = np.zeros(sim.slots)
        masks[(a, b)][ref[tap_mask(height, width, a, b, padding)].reshape(-1)] = 1.0
    bias_plain = None
    if bias is not None:
        bias_plain = np.zeros((c_out, sim.slots))
        bias_plain[:, ref.reshape(-1)] = bias.detach().double().cpu().numpy()[:, None]
    evaluate = _conv_pack_lockstep if isinstance(sim, SlotSimulator) else _conv_pack_terms
    outs = evaluate(copies, masks, w, bias_plain)
    return Packed(outs, np.arange(c_out), np.broadcast_to(ref, (c_out, height, width)).copy())


def _conv_pack_terms(copies: dict, masks: dict, w: np.ndarray, bias_plain: np.ndarray | None) -> list:
    """Output o = sum over the copies (c, a, b) of copy * (w[o, c, a, b] x tap mask), term by term."""
    outs = []
    for o in range(w.shape[0]):
        acc = None
        for (c, a, b), copy in sorted(copies.items()):
            term = copy.mul_plain(w[o, c, a, b] * masks[(a, b)])
            acc = term if acc is None else acc.add(term)
        outs.append(acc if bias_plain is None else acc.add_plain(bias_plain[o]))
    return outs


def _conv_pack_lockstep(copies: dict, masks: dict, w: np.ndarray, bias_plain: np.ndarray | None) -> list:
    """The simulator's shortcut of :func:`_conv_pack_terms`: one einsum per tap, counted as the terms."""
    sim, c_out, c_in = next(iter(copies.values())).sim, w.shape[0], w.shape[1]
    acc, depth = 0.0, 0
    for a, b in sorted(masks):
        chans = [c for c in range(c_in) if (c, a, b) in copies]
        stack = np.stack([copies[(c, a, b)].values for c in chans])  # (C, B, S)
        acc = acc + masks[(a, b)] * np.einsum("oc,cbs->obs", w[:, chans, a, b], stack)
        depth = max([depth] + [copies[(c, a, b)].depth + 1 for c in chans])
    sim.count("mul_plain", c_out * len(copies))
    sim.count("adds", c_out * (len(copies) - 1))
    if bias_plain is not None:
        sim.count("adds", c_out)
        acc = acc + bias_plain[:, None, :]
    return [Ciphertext(sim, acc[o], depth) for o in range(c_out)]


def square(packed: Packed) -> Packed:
    """FFConv (arXiv:2102.03494) square activation: one ct x ct multiply per ciphertext."""
    return Packed([ct.mul_ct(ct) for ct in packed.cts], packed.chan_ct, packed.slot)


def avgpool2(packed: Packed) -> Packed:
    """FFConv (arXiv:2102.03494) 2x2 average pooling in the slots: per ciphertext two rotate-and-adds
    (column pair, row pair) and one mask multiply by 1/4 on the kept slots, which also clears the
    partial sums elsewhere. Needs even H, W and one column / row offset per ciphertext."""
    channels, height, width = packed.shape
    if height % 2 or width % 2:
        raise InputError(f"avgpool2 needs even H and W, got {height}x{width}")
    outs = []
    for t, ct in enumerate(packed.cts):
        slot = packed.slot[packed.chan_ct == t]
        dx = np.unique(slot[:, :, 1::2] - slot[:, :, 0::2])
        dy = np.unique(slot[:, 1::2, :] - slot[:, 0::2, :])
        if dx.size != 1 or dy.size != 1:
            raise InputError("avgpool2 needs one column and one row offset per ciphertext")
        ct = ct.add(ct.rot(int(dx[0])))
        ct = ct.add(ct.rot(int(dy[0])))
        mask = np.zeros(ct.sim.slots)
        mask[slot[:, 0::2, 0::2].reshape(-1)] = 0.25
        outs.append(ct.mul_plain(mask))
    return Packed(outs, packed.chan_ct, packed.slot[:, 0::2, 0::2].copy())
