"""An MPCFormer-style proxy, the baseline SelectFormer (Ouyang, Lin, Ji, arXiv:2310.02373) compares its
MLP-emulated proxies with: the target's whole architecture with the MPC-costly nonlinearities replaced
by low-degree polynomials, as MPCFormer (Li et al., arXiv:2211.01452) does, then distilled from the
target (SelectFormer card: "softmax -> normalised (x+c)^2, GELU -> 0.125x^2+0.25x+0.5, distilled on
D_boot").

* attention row-softmax -> "2Quad": ``(s + c)^2 / sum_row (s + c)^2`` (c = ``quad_shift``, 5 in MPCFormer);
* FFN GELU -> "Quad": ``0.125 x^2 + 0.25 x + 0.5``;
* LayerNorm stays exact (with the target's calibrated public range scales).

Inputs and outputs are those of :class:`~honed.private.proxy_selection.TinyTransformer`: images
(B, 64) in [0, 1] -> logits (B, classes); ``forward_with`` runs on tensors and CrypTensors alike.
"""
from typing import Any

import torch

from honed.core.errors import ConfigError, InputError
from honed.private.proxy_selection import TinyTransformer


class MPCFormerProxy(TinyTransformer):
    """MPCFormer-style baseline proxy of SelectFormer (arXiv:2310.02373): the target architecture with
    2Quad attention and Quad activations (MPCFormer, arXiv:2211.01452). Build it from a target with
    :func:`make_mpcformer_proxy`, then distil (the card: on D_boot)."""

    def __init__(self, n_blocks: int = 2, width: int = 32, heads: int = 2, ffn: int = 64, classes: int = 10,
                 quad_shift: float = 5.0) -> None:
        super().__init__(n_blocks, width, heads, ffn, classes)
        if not quad_shift > 0:
            raise ConfigError(f"quad_shift must be > 0, got {quad_shift!r}")
        self.quad_shift = float(quad_shift)

    def row_softmax(self, scores: Any) -> Any:
        """2Quad over the last dim. The squares are first divided by the public n c^2 (n keys), which
        leaves the ratio unchanged but keeps the row sum near 1, inside the accurate range of
        CrypTen's reciprocal."""
        shifted = scores + self.quad_shift
        squares = shifted * shifted * (1.0 / (scores.shape[-1] * self.quad_shift ** 2))
        return squares * squares.sum(-1, keepdim=True).reciprocal()

    def activation(self, hid: Any) -> Any:
        return hid * hid * 0.125 + hid * 0.25 + 0.5


def make_mpcformer_proxy(target: TinyTransformer, quad_shift: float = 5.0) -> MPCFormerProxy:
    """An :class:`MPCFormerProxy` with ``target``'s weights and LayerNorm range scales (SelectFormer,
    arXiv:2310.02373, MPCFormer-like baseline); distil it before use. ``target`` must be an exact
    TinyTransformer (no emulators)."""
    if not isinstance(target, TinyTransformer) or target.emulated:
        raise InputError("make_mpcformer_proxy needs an exact TinyTransformer target (no emulator MLPs)")
    proxy = MPCFormerProxy(target.n_blocks, target.width, target.heads, target.ffn, target.classes, quad_shift)
    with torch.no_grad():
        for name, value in target.params.items():
            proxy.params[name].copy_(value)
        proxy.norm_scales.copy_(target.norm_scales)
    return proxy
