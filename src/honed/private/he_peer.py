"""The TenSEAL peer of FFConv's encrypted inference (FFConv: Fast Factorized Convolutional Neural Network
Inference on Encrypted Data, Lu et al., arXiv:2102.03494): TenSEAL's own LoLa-style path - the first
convolution by ``im2col`` encoding (``ts.im2col_encoding`` + ``CKKSVector.conv2d_im2col``, one
vector per output channel, packed with ``CKKSVector.pack_vectors``), square activations, and every
later linear stretch (pooling, convolutions, the classifier) as one vector x plain-matrix product
``CKKSVector.mm`` (extra ``he``).

:func:`peer_layers` folds a square-activation ``nn.Sequential`` (first layer a ``Conv2d`` with one
input channel, then :class:`~honed.private.ffconv.Square` between linear stretches) into that form;
:func:`tenseal_forward` encrypts one image and runs it. TenSEAL applies no level management of its
own: when the next multiplicative step would need a level the vector no longer has, the client
decrypts and re-encrypts it (counted and timed apart, as for :class:`~honed.private.he_ckks.CKKSBackend`).
"""
import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from honed.core.errors import ConfigError, InputError
from honed.private.ffconv import Square
from honed.private.he_ckks import CKKSParameters


def load_tenseal():
    """The ``tenseal`` module, or ConfigError naming the extra."""
    try:
        import tenseal
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ConfigError("the TenSEAL peer needs TenSEAL: pip install 'honed[he]'") from err
    return tenseal


@dataclass
class PeerLayers:
    """The folded network: first conv (weight (C_out, d, d), bias (C_out,), padding), then per square
    activation a plain matrix (n_in, n_out) and bias (n_out,) for ``mm`` (y = x @ M + b)."""

    conv_weight: np.ndarray
    conv_bias: np.ndarray
    padding: int
    stages: list[tuple[np.ndarray, np.ndarray]]


def fold_linear(layers: nn.Module, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(M (n_in, n_out), b (n_out,)) of an affine ``layers`` on inputs of ``shape``, in float64 NumPy (the
    probes are built on the layers' device; the results come back to the host for TenSEAL)."""
    n = int(np.prod(shape))
    device = next((p.device for p in layers.parameters()), torch.device("cpu"))
    with torch.no_grad():
        zero = layers(torch.zeros(1, *shape, dtype=torch.float64, device=device)).reshape(-1)
        basis = layers(torch.eye(n, dtype=torch.float64, device=device).reshape(n, *shape)).reshape(n, -1)
    return (basis - zero).cpu().numpy(), zero.cpu().numpy()


def peer_layers(model: nn.Sequential, image_shape: tuple[int, int, int]) -> PeerLayers:
    """FFConv (arXiv:2102.03494) peer: fold ``model`` (Conv2d(1 -> C, d, stride 1, 'same' padding),
    then stretches of linear layers separated by Square) for :func:`tenseal_forward`."""
    layers = list(model)
    first = layers[0] if layers else None
    if not isinstance(first, nn.Conv2d) or first.in_channels != 1 or first.stride != (1, 1) \
            or first.groups != 1 or 2 * first.padding[0] != first.kernel_size[0] - 1 or first.bias is None \
            or image_shape[0] != 1:
        raise InputError("the TenSEAL peer needs a first Conv2d with one input channel, stride 1, 'same' "
                         "padding and a bias, on one-channel images")
    cuts = [i for i, layer in enumerate(layers) if isinstance(layer, Square)]
    if not cuts or cuts[0] != 1:
        raise InputError("the TenSEAL peer needs a Square right after the first Conv2d")
    model64 = copy.deepcopy(nn.Sequential(*layers)).double().cpu().eval()  # a CPU copy for TenSEAL
    with torch.no_grad():
        shape = tuple(model64[:2](torch.zeros(1, *image_shape, dtype=torch.float64)).shape[1:])
    stages = []
    for start, stop in zip(cuts, cuts[1:] + [len(layers)]):
        stretch = model64[start + 1:stop]
        stages.append(fold_linear(stretch, shape))
        with torch.no_grad():
            shape = tuple(stretch(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
    weight = first.weight.detach().double().cpu().numpy()[:, 0]
    return PeerLayers(weight, first.bias.detach().double().cpu().numpy(), first.padding[0], stages)


class TenSEALPeer:
    """FFConv (arXiv:2102.03494) TenSEAL im2col + mm peer with a TenSEAL context of ``params``
    (single-threaded, like :class:`~honed.private.he_ckks.CKKSBackend`); galois keys are made once."""

    def __init__(self, params: CKKSParameters = CKKSParameters()):
        params.validate()
        if params.levels < 2:
            raise ConfigError("the TenSEAL peer needs >= 2 levels: conv2d_im2col and pack_vectors each use one")
        self.ts, self.params = load_tenseal(), params
        self.context = self.ts.context(self.ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_degree,
                                       coeff_mod_bit_sizes=params.chain, n_threads=1)
        self.context.global_scale = params.scale
        self.context.generate_galois_keys()
        self._seal = self.context.seal_context().data

    def _level(self, vector) -> int:
        ct = vector.ciphertext()
        ct = ct[0] if isinstance(ct, list) else ct
        return self._seal.get_context_data(ct.parms_id()).chain_index()

    def forward(self, net: PeerLayers, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits (classes,) of one image (1, H, W) and {seconds (server), refresh_seconds, refreshes,
        depth (levels used, refreshes not resetting it), client_ciphertexts}."""
        stats = {"seconds": 0.0, "refresh_seconds": 0.0, "refreshes": 0, "depth": 0, "client_ciphertexts": 1}
        padded = np.pad(np.asarray(image, dtype=np.float64)[0], net.padding)
        enc, windows = self.ts.im2col_encoding(self.context, padded.tolist(), *net.conv_weight.shape[1:], 1)
        start = time.perf_counter()
        channels = [enc.conv2d_im2col(k.tolist(), windows) + float(b) for k, b in zip(net.conv_weight, net.conv_bias)]
        vector = self.ts.CKKSVector.pack_vectors(channels)
        stats["seconds"] += time.perf_counter() - start
        stats["depth"] += self.params.levels - self._level(vector)  # measured: levels the ciphertext lost
        for matrix, bias in net.stages:
            vector = self._step(vector, lambda v: v.square(), stats)
            vector = self._step(vector, lambda v, m=matrix, b=bias: v.mm(m.tolist()) + b.tolist(), stats)
        return np.asarray(vector.decrypt()), stats

    def _step(self, vector, fn, stats: dict):
        """One multiplicative step, after a client-aided refresh when no level is left."""
        if self._level(vector) == 0:
            start = time.perf_counter()
            vector = self.ts.ckks_vector(self.context, vector.decrypt())
            stats["refresh_seconds"] += time.perf_counter() - start
            stats["refreshes"] += 1
            stats["client_ciphertexts"] += 1
        level, start = self._level(vector), time.perf_counter()
        out = fn(vector)
        stats["seconds"] += time.perf_counter() - start
        stats["depth"] += level - self._level(out)
        return out
