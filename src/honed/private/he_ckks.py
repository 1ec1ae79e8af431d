"""Real CKKS ciphertexts for the FFConv packing plans (FFConv: Fast Factorized Convolutional Neural
Network Inference on Encrypted Data, Lu et al., arXiv:2102.03494), on Microsoft SEAL through
``tenseal.sealapi`` (extra ``he``).

:class:`CKKSBackend` stands in for :class:`~honed.private.he_packing.SlotSimulator`: the packing
functions of :mod:`honed.private.he_packing` and :func:`honed.private.he_plan.encrypted_forward` run on
it unchanged, one image at a time, and every homomorphic operation is really executed, counted (the
same :class:`~honed.private.he_packing.OpCounts` sections as the simulator) and timed (wall seconds
per section, plaintext encoding included: the server encodes each weight / mask plaintext when it
uses it). A plan's ``slots`` S divides the ring's N/2 slots; values are encoded with period S, so a
rotation by k acts on the S-slot vector exactly as the simulator's ``rot(k)`` (slot i receives i + k).

Levels (:class:`CKKSParameters`): the chain holds ``levels`` rescaling primes of ``scale_bits`` bits
between two ``edge_bits`` primes. A multiply that would need a level the ciphertext no longer has
first **refreshes** it - the client decrypts and re-encrypts it at the top level (a round trip of a
client-aided protocol; counted in ``refreshes`` and timed in ``refresh_seconds``, outside the server
sections). ``depth`` is the number of rescaled multiplies on the ciphertext's path (refreshes do not
reset it), so it equals the simulator's multiplicative depth of the plan. Rotation keys are made
for each step on first use (key generation is setup, not timed).
"""
import math
import time
from dataclasses import dataclass

import numpy as np

from honed.core.errors import ConfigError, InputError
from honed.private.he_packing import OpCounter


def load_sealapi():
    """``tenseal.sealapi``, or ConfigError naming the extra when TenSEAL is not installed."""
    try:
        import tenseal.sealapi as sealapi
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ConfigError("real CKKS runs need TenSEAL: pip install 'honed[he]'") from err
    return sealapi


@dataclass(frozen=True)
class CKKSParameters:
    """FFConv (arXiv:2102.03494) CKKS parameters: ring degree N (N/2 slots), ``levels`` rescaling
    primes of ``scale_bits`` bits (the scale is 2^scale_bits) between two ``edge_bits`` primes (the
    first holds the integer part of the values, the last is SEAL's key-switching prime); the total
    must fit 128-bit security for N (SEAL's table: 109 bits at N = 4096, 218 at 8192)."""

    poly_degree: int = 8192
    scale_bits: int = 35
    levels: int = 3
    edge_bits: int = 50

    @property
    def chain(self) -> list[int]:
        return [self.edge_bits] + [self.scale_bits] * self.levels + [self.edge_bits]

    @property
    def scale(self) -> float:
        return 2.0 ** self.scale_bits

    def validate(self) -> None:
        sealapi = load_sealapi()
        n = self.poly_degree
        if isinstance(n, bool) or not isinstance(n, int) or n < 1024 or n & (n - 1):
            raise ConfigError(f"poly_degree must be a power of two >= 1024, got {n!r}")
        if self.levels < 1 or not 20 <= self.scale_bits < self.edge_bits <= 60:
            raise ConfigError(f"need levels >= 1 and 20 <= scale_bits < edge_bits <= 60, got {self}")
        limit = sealapi.CoeffModulus.MaxBitCount(n, sealapi.SEC_LEVEL_TYPE.TC128)
        if sum(self.chain) > limit:
            raise ConfigError(f"the chain {self.chain} ({sum(self.chain)} bits) exceeds the {limit} bits "
                              f"that keep 128-bit security at N = {n}")


class CKKSBackend(OpCounter):
    """FFConv (arXiv:2102.03494) real-CKKS stand-in for the slot simulator (see the module docstring).
    ``slots`` is the plan's S (a power of two dividing N/2). ``seconds[section]`` is the wall time of
    the server's operations in each section; ``encrypted`` counts the ciphertexts the client sends;
    :meth:`new_image` clears the per-image counters."""

    def __init__(self, slots: int = 4096, params: CKKSParameters = CKKSParameters()):
        params.validate()
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 2 or slots & (slots - 1) \
                or slots > params.poly_degree // 2:
            raise InputError(f"slots must be a power of two <= N/2 = {params.poly_degree // 2}, got {slots!r}")
        super().__init__()
        self.slots, self.params, self.seal = slots, params, load_sealapi()
        self._setup_keys()
        self.new_image()

    def _setup_keys(self) -> None:
        seal, p = self.seal, self.params
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(p.poly_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(p.poly_degree, p.chain))
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        self.keygen = seal.KeyGenerator(self.context)
        public, self.relin = seal.PublicKey(), seal.RelinKeys()
        self.keygen.create_public_key(public)
        self.keygen.create_relin_keys(self.relin)
        self.encoder, self.evaluator = seal.CKKSEncoder(self.context), seal.Evaluator(self.context)
        self.encryptor = seal.Encryptor(self.context, public)
        self.decryptor = seal.Decryptor(self.context, self.keygen.secret_key())
        self._rotation_keys: dict[int, object] = {}

    def new_image(self) -> None:
        """Clear the per-image counters (keys and context stay)."""
        self.counts, self.seconds, self.current = {}, {}, "main"
        self.encrypted = self.refreshes = 0
        self.refresh_seconds = self.encode_seconds = 0.0

    def seconds_total(self, prefix: str = "") -> float:
        """Wall seconds of every section whose name starts with ``prefix``."""
        return sum(v for k, v in self.seconds.items() if k.startswith(prefix))

    # ------------------------------------------------------------------ helpers for CKKSCiphertext
    def timed(self, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + time.perf_counter() - start
        return out

    def encode(self, values, parms_id, scale: float):
        """A server-side plaintext of a scalar or an (S,) vector at ``parms_id``; its time also goes to
        ``encode_seconds`` (the share of the server time spent encoding plaintexts)."""
        start = time.perf_counter()
        plain = self._plaintext(values, parms_id, scale)
        self.encode_seconds += time.perf_counter() - start
        return plain

    def _plaintext(self, values, parms_id, scale: float):
        """A plaintext of a scalar or an (S,) vector (repeated to the N/2 slots) at ``parms_id``."""
        plain = self.seal.Plaintext()
        if np.ndim(values) == 0:
            self.encoder.encode(float(values), parms_id, scale, plain)
        else:
            tiled = np.tile(np.asarray(values, dtype=np.float64), self.params.poly_degree // 2 // self.slots)
            self.encoder.encode(tiled.tolist(), parms_id, scale, plain)
        return plain

    def level(self, ct) -> int:
        """Rescales still possible on ``ct`` (0 at the last level)."""
        return self.context.get_context_data(ct.parms_id()).chain_index()

    def rotation_key(self, step: int):
        if step not in self._rotation_keys:
            keys = self.seal.GaloisKeys()
            self.keygen.create_galois_keys([pow(3, step, 2 * self.params.poly_degree)], keys)
            self._rotation_keys[step] = keys
        return self._rotation_keys[step]

    def fresh(self, values: np.ndarray):
        """A SEAL ciphertext of (S,) ``values`` at the top level (client side)."""
        ct = self.seal.Ciphertext()
        self.encryptor.encrypt(self._plaintext(values, self.context.first_parms_id(), self.params.scale), ct)
        return ct

    def read(self, ct) -> np.ndarray:
        """The (S,) values of a SEAL ciphertext (client side)."""
        plain = self.seal.Plaintext()
        self.decryptor.decrypt(ct, plain)
        return np.asarray(self.encoder.decode_double(plain)[:self.slots])

    def refresh(self, ct):
        """Client-aided refresh: decrypt and re-encrypt at the top level (timed apart)."""
        start = time.perf_counter()
        out = self.fresh(self.read(ct))
        self.refreshes += 1
        self.refresh_seconds += time.perf_counter() - start
        return out

    # ------------------------------------------------------------------ the simulator's interface
    def encrypt(self, values: np.ndarray) -> "CKKSCiphertext":
        """A ciphertext from an (S,) or (1, S) float array (shorter rows are zero-padded); one image."""
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[None] if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[0] != 1 or arr.shape[1] > self.slots or not np.isfinite(arr).all():
            raise InputError(f"CKKS encrypt needs finite (1, <= {self.slots}) values (one image), got {arr.shape}")
        row = np.zeros(self.slots)
        row[:arr.shape[1]] = arr[0]
        self.encrypted += 1
        return CKKSCiphertext(self, self.fresh(row), 0)


class CKKSCiphertext:
    """FFConv (arXiv:2102.03494) one real CKKS ciphertext with the simulator's ciphertext methods:
    ``add``, ``add_plain``, ``mul_plain``, ``mul_ct``, ``rot`` and ``decrypt`` ((1, S) float64). A
    ct x pt product comes out at exactly the scale Delta = 2^scale_bits (its plaintext is encoded at
    the scale that cancels the prime the rescale divides out); a ct x ct product keeps its exact
    scale Delta^2 / q until the next ct x pt product restores Delta."""

    def __init__(self, backend: CKKSBackend, ct, depth: int):
        self.sim, self.ct, self.depth = backend, ct, depth

    @property
    def values(self) -> np.ndarray:
        return self.decrypt()

    def decrypt(self) -> np.ndarray:
        return self.sim.read(self.ct)[None]

    def _plain(self, plain) -> np.ndarray:
        arr = np.asarray(plain, dtype=np.float64)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != self.sim.slots) or not np.isfinite(arr).all():
            raise InputError(f"a plaintext must be a finite scalar or ({self.sim.slots},) vector")
        return arr

    def _new(self, ct, depth: int) -> "CKKSCiphertext":
        return CKKSCiphertext(self.sim, ct, depth)

    def _aligned(self, other: "CKKSCiphertext"):
        """Both SEAL ciphertexts at the lower of the two levels (modulus switching, no noise cost)."""
        a, b, sim = self.ct, other.ct, self.sim
        if sim.level(a) > sim.level(b):
            a = sim.timed(_switched, sim, a, b.parms_id())
        elif sim.level(b) > sim.level(a):
            b = sim.timed(_switched, sim, b, a.parms_id())
        if a.scale != b.scale:  # the plans add differently scaled terms nowhere; if one does, align
            b = sim.timed(_switched, sim, b, b.parms_id())
            b.scale = a.scale
        return a, b

    def _with_level(self) -> "CKKSCiphertext":
        """Self, refreshed in place (same values, top level) when no rescale is left, so a ciphertext
        that feeds many products (a shifted ConvPack copy) makes one round trip, not one per product."""
        if self.sim.level(self.ct) == 0:
            self.ct = self.sim.refresh(self.ct)
        return self

    def _dropped_prime(self) -> float:
        data = self.sim.context.get_context_data(self.ct.parms_id())
        return float(data.parms().coeff_modulus()[-1].value())

    def add(self, other: "CKKSCiphertext") -> "CKKSCiphertext":
        self.sim.count("adds")
        a, b = self._aligned(other)
        out = self.sim.seal.Ciphertext()
        self.sim.timed(self.sim.evaluator.add, a, b, out)
        return self._new(out, max(self.depth, other.depth))

    def add_plain(self, plain) -> "CKKSCiphertext":
        self.sim.count("adds")
        sim, values, out = self.sim, self._plain(plain), self.sim.seal.Ciphertext()
        encoded = sim.timed(sim.encode, values, self.ct.parms_id(), self.ct.scale)
        sim.timed(sim.evaluator.add_plain, self.ct, encoded, out)
        return self._new(out, self.depth)

    def mul_plain(self, plain) -> "CKKSCiphertext":
        self.sim.count("mul_plain")
        values, src = self._plain(plain), self._with_level()
        sim, out = self.sim, self.sim.seal.Ciphertext()
        if not np.any(values):  # SEAL refuses a product it knows is zero ("transparent"): encrypt 0
            out = sim.timed(sim.fresh, np.zeros(sim.slots))
            sim.timed(sim.evaluator.mod_switch_to_inplace, out, src.ct.parms_id())
        else:  # encoded at the scale that makes (ct scale x plaintext scale) / dropped prime = Delta
            scale = src._dropped_prime() * sim.params.scale / src.ct.scale
            encoded = sim.timed(sim.encode, values, src.ct.parms_id(), scale)
            sim.timed(sim.evaluator.multiply_plain, src.ct, encoded, out)
        sim.timed(sim.evaluator.rescale_to_next_inplace, out)
        out.scale = sim.params.scale
        return self._new(out, src.depth + 1)

    def mul_ct(self, other: "CKKSCiphertext") -> "CKKSCiphertext":
        self.sim.count("mul_ct")
        left, right = self._with_level(), other._with_level()
        a, b = left._aligned(right)
        sim, out = self.sim, self.sim.seal.Ciphertext()
        sim.timed(sim.evaluator.multiply, a, b, out)
        sim.timed(sim.evaluator.relinearize_inplace, out, sim.relin)
        sim.timed(sim.evaluator.rescale_to_next_inplace, out)  # scale Delta^2 / q: the next mul_plain restores Delta
        return self._new(out, max(self.depth, other.depth) + 1)

    def rot(self, k: int) -> "CKKSCiphertext":
        k = int(k) % self.sim.slots
        if k == 0:
            return self
        self.sim.count("rotations")
        out, key = self.sim.seal.Ciphertext(), self.sim.rotation_key(k)
        self.sim.timed(self.sim.evaluator.rotate_vector, self.ct, k, key, out)
        return self._new(out, self.depth)


def _switched(backend: CKKSBackend, ct, parms_id):
    out = backend.seal.Ciphertext()
    backend.evaluator.mod_switch_to(ct, parms_id, out)
    return out


def level_bits_needed(depth: int, params: CKKSParameters) -> int:
    """Bits of modulus a non-interactive run of ``depth`` multiplies would need with ``params``'s primes."""
    return 2 * params.edge_bits + depth * params.scale_bits


def smallest_ring_for(depth: int, params: CKKSParameters) -> int | None:
    """The smallest power-of-two N whose 128-bit-security modulus holds ``depth`` levels (None > 32768)."""
    seal = load_sealapi()
    for log_n in range(int(math.log2(params.poly_degree)), 16):
        n = 1 << log_n
        if level_bits_needed(depth, params) <= seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128):
            return n
    return None
