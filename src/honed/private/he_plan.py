"""Encrypted-style inference of a small HE-friendly CNN through the slot simulator under a packing plan
(FFConv: Fast Factorized Convolutional Neural Network Inference on Encrypted Data, Lu et al.,
arXiv:2102.03494).

:func:`encrypted_forward` runs an ``nn.Sequential`` of ``Conv2d`` (stride 1, 'same' padding),
:class:`~honed.private.ffconv.FFConv`, :class:`~honed.private.ffconv.Square`, ``AvgPool2d(2)``,
``Flatten`` and ``Linear`` layers on images (B, C, H, W) with one of three plans:

* ``"dense"``  - every conv in DensePack (LoLa-like);
* ``"conv"``   - every conv in ConvPack;
* ``"ffconv"`` - an FFConv layer's d x d part in DensePack and its 1 x 1 part in ConvPack (plain
  convs, if any, in DensePack).

The final Linear always runs in DensePack. The first layer's input is client-prepared in the layout
it needs (free for the server); every later change of layout (DensePack output compaction, merging
ConvPack's per-channel ciphertexts into one, replication) is counted in ``layout:*`` sections, the
layers themselves in ``conv:*``, ``act:*``, ``pool:*`` and ``fc:*`` sections of the simulator.
"""
from typing import Literal

import numpy as np
import torch
from torch import nn

from honed.core.errors import InputError
from honed.private.ffconv import FFConv, Square
from honed.private import he_packing as hp

Plan = Literal["dense", "conv", "ffconv"]
PLANS = ("dense", "conv", "ffconv")


def linear_steps(model: nn.Sequential, plan: Plan) -> list[tuple[int, str, str, nn.Module]]:
    """(layer index, section name, packing 'dense' / 'conv', module) of each linear op in order."""
    steps = []
    for idx, layer in enumerate(model):
        if isinstance(layer, FFConv):
            spatial = "conv" if plan == "conv" else "dense"
            pointwise = "dense" if plan == "dense" else "conv"
            steps += [(idx, f"conv:{idx}.spatial", spatial, layer.spatial),
                      (idx, f"conv:{idx}.pointwise", pointwise, layer.pointwise)]
        elif isinstance(layer, nn.Conv2d):
            steps.append((idx, f"conv:{idx}", "conv" if plan == "conv" else "dense", layer))
        elif isinstance(layer, nn.Linear):
            steps.append((idx, f"fc:{idx}", "dense", layer))
        elif not isinstance(layer, (Square, nn.AvgPool2d, nn.Flatten)):
            raise InputError(f"encrypted_forward cannot evaluate layer {idx}: {type(layer).__name__}")
    return steps


class _State:
    """The packed activation plus what the next layer needs to know about its layout."""

    def __init__(self, sim: hp.OpCounter, x: np.ndarray):
        self.sim, self.x = sim, x
        self.packed: hp.Packed | None = None
        self.pending: tuple[int, int] | None = None  # (n, G) of an uncompacted DensePack output
        self.shape = x.shape[1:]
        self.max_cts = 0

    def set(self, packed: hp.Packed, pending=None) -> None:
        self.packed, self.pending, self.shape = packed, pending, packed.shape
        self.max_cts = max(self.max_cts, len(packed.cts))

    def compact(self) -> None:
        if self.pending is not None:
            self.packed = hp.compact_dense_output(self.packed, *self.pending)
            self.pending = None


def _dense_step(state: _State, idx: int, name: str, module: nn.Module, compact: bool) -> None:
    sim = state.sim
    if isinstance(module, nn.Conv2d):
        _check_conv(module)
        c, h, w = state.shape
        matrix = hp.conv_matrix(module.weight, h, w, module.padding[0])
        out_shape = (module.out_channels, h, w)
    else:
        matrix = module.weight.detach().double().cpu().numpy()
        out_shape = (module.out_features, 1, 1)
    if state.packed is None:
        packed, n = hp.client_dense_input(sim, state.x)
    else:
        with sim.section(f"layout:{idx}"):
            state.compact()
            packed = hp.merge_into_one(state.packed)
            n = hp.next_pow2(int(packed.slot.max()) + 1)
            packed = hp.Packed([hp.replicate(packed.cts[0], n)], packed.chan_ct, packed.slot)
    bias = None if module.bias is None else module.bias.detach().double().cpu().numpy()
    if bias is not None:
        bias = np.repeat(bias, out_shape[1] * out_shape[2])  # per channel -> per output value
    with sim.section(name):
        out, groups = hp.dense_pack_linear(packed, matrix, n, bias, out_shape)
    state.set(out, (n, groups))
    if compact:
        with sim.section(f"layout:{idx}.out"):
            state.compact()


def _conv_step(state: _State, idx: int, name: str, module: nn.Conv2d) -> None:
    _check_conv(module)
    sim, pad, kernel = state.sim, module.padding[0], module.kernel_size[0]
    if state.packed is None:
        copies, ref = hp.client_conv_copies(sim, state.x, kernel, pad)
    else:
        try:
            with sim.section(name):
                copies = hp.shifted_copies(state.packed, kernel, pad)
        except InputError:
            with sim.section(f"layout:{idx}"):
                state.compact()
            with sim.section(name):
                copies = hp.shifted_copies(state.packed, kernel, pad)
        ref = state.packed.slot[0]
    with sim.section(name):
        state.set(hp.conv_pack_conv(copies, ref, module.weight, module.bias, pad))


def _check_conv(conv: nn.Conv2d) -> None:
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 \
            or conv.kernel_size[0] != conv.kernel_size[1] or 2 * conv.padding[0] != conv.kernel_size[0] - 1:
        raise InputError("encrypted_forward evaluates stride-1, square, 'same'-padded convolutions only")


def encrypted_forward(model: nn.Sequential, x: torch.Tensor, plan: Plan, slots: int = 4096,
                      backend: hp.OpCounter | None = None) -> tuple[np.ndarray, hp.OpCounter, dict]:
    """FFConv (arXiv:2102.03494) encrypted-style inference: images x (B, C, H, W) float -> (logits
    (B, classes) float64, the backend holding per-section op counts, info {client_ciphertexts,
    max_ciphertexts, depth}). ``backend`` None: a fresh :class:`~honed.private.he_packing.SlotSimulator`
    of ``slots`` slots (counts are per image; the batch runs in lockstep); or a fresh backend with the
    simulator's interface, e.g. :class:`~honed.private.he_ckks.CKKSBackend` (real CKKS, one image)."""
    if plan not in PLANS:
        raise InputError(f"plan must be one of {PLANS}, got {plan!r}")
    if not isinstance(model, nn.Sequential):
        raise InputError(f"encrypted_forward evaluates an nn.Sequential of its supported layers (Conv2d, FFConv, "
                         f"Square, AvgPool2d(2), Flatten, Linear), got {type(model).__name__}; wrap the layers "
                         "in nn.Sequential")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not torch.isfinite(x).all():
        raise InputError(f"encrypted_forward needs finite images (B, C, H, W), got {tuple(getattr(x, 'shape', ()))}")
    sim = hp.SlotSimulator(slots) if backend is None else backend
    state = _State(sim, x.detach().double().cpu().numpy())
    steps = linear_steps(model, plan)
    by_layer: dict[int, list] = {}
    for pos, step in enumerate(steps):
        by_layer.setdefault(step[0], []).append((pos, step))
    for idx, layer in enumerate(model):
        if isinstance(layer, Square):
            with sim.section(f"act:{idx}"):
                state.set(hp.square(state.packed), state.pending)
        elif isinstance(layer, nn.AvgPool2d):
            _pool(state, idx, layer)
        for pos, (_, name, packing, module) in by_layer.get(idx, []):
            if packing == "dense":
                next_dense = pos + 1 < len(steps) and steps[pos + 1][2] == "dense"
                _dense_step(state, idx, name, module, compact=next_dense)
            else:
                _conv_step(state, idx, name, module)
    logits = state.packed.decrypt().reshape(x.shape[0], -1)
    info = {"client_ciphertexts": sim.encrypted, "max_ciphertexts": state.max_cts,
            "depth": max(ct.depth for ct in state.packed.cts)}
    return logits, sim, info


def _pool(state: _State, idx: int, layer: nn.AvgPool2d) -> None:
    if layer.kernel_size not in (2, (2, 2)) or layer.stride not in (2, (2, 2)) or layer.padding not in (0, (0, 0)):
        raise InputError("encrypted_forward evaluates AvgPool2d(2) only")
    try:
        with state.sim.section(f"pool:{idx}"):
            state.set(hp.avgpool2(state.packed))
    except InputError:
        with state.sim.section(f"layout:{idx}"):
            state.compact()
        with state.sim.section(f"pool:{idx}"):
            state.set(hp.avgpool2(state.packed))
