"""FFConv: a d x d convolution factorised into a low-rank d x d conv (C_in -> r) followed by a 1 x 1 conv
(r -> C_out), so each part can run in the ciphertext packing that is cheap for it (FFConv: Fast
Factorized Convolutional Neural Network Inference on Encrypted Data, Lu et al., arXiv:2102.03494).

* :class:`FFConv` - the drop-in ``nn.Module`` (input (N, C_in, H, W) float, output (N, C_out, H', W')).
  The d x d part keeps the stride / padding / dilation of the conv it replaces and has no bias; the
  1 x 1 part carries the bias.
* :meth:`FFConv.from_conv` - SVD initialisation from a trained ``nn.Conv2d``: the weight reshaped to
  W (C_out x C_in*d*d) = U S V^T, d x d filters = S_r^{1/2} V_r^T, 1 x 1 weights = U_r S_r^{1/2}. At
  r = min(C_out, C_in*d*d) the factorised layer equals the original exactly (up to float rounding).
* :func:`convert_to_ffconv` - a copy of a model with chosen ``nn.Conv2d`` layers replaced by
  SVD-initialised FFConv layers (then fine-tune).
* :class:`Square` - the HE-friendly activation x -> x^2 (LoLa / CryptoNets style).
"""
import copy
from typing import Callable

import torch
from torch import nn

from honed.core.errors import InputError


class Square(nn.Module):
    """FFConv (arXiv:2102.03494) HE-friendly activation: elementwise x^2 (one ciphertext-ciphertext
    multiply per ciphertext). Any shape, any finite float input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def check_rank(rank: int, in_channels: int, out_channels: int, kernel_size: int) -> int:
    """Return ``rank`` or raise InputError unless 1 <= rank <= min(C_out, C_in * d * d)."""
    limit = min(out_channels, in_channels * kernel_size * kernel_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise InputError(f"FFConv rank must be an integer in [1, min(C_out, C_in*d*d) = {limit}], got {rank!r}")
    return rank


class FFConv(nn.Module):
    """FFConv (arXiv:2102.03494): conv(d x d, C_in -> r, no bias) then conv(1 x 1, r -> C_out, bias).

    Input (N, C_in, H, W) float; output (N, C_out, H', W') with H', W' those of the d x d conv
    (``stride``, ``padding``, ``dilation`` as in ``nn.Conv2d``). ``rank`` r must satisfy
    1 <= r <= min(C_out, C_in*d*d); the saving in HE rotations needs r << C_out.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rank: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if isinstance(kernel_size, tuple):
            if kernel_size[0] != kernel_size[1]:
                raise InputError(f"FFConv needs a square kernel, got {kernel_size}")
            kernel_size = kernel_size[0]
        self.rank = check_rank(rank, in_channels, out_channels, kernel_size)
        self.spatial = nn.Conv2d(in_channels, rank, kernel_size, stride=stride, padding=padding,
                                 dilation=dilation, bias=False, device=device, dtype=dtype)
        self.pointwise = nn.Conv2d(rank, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.spatial.in_channels:
            raise InputError(f"FFConv expects (N, {self.spatial.in_channels}, H, W), got {tuple(x.shape)}")
        return self.pointwise(self.spatial(x))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> "FFConv":
        """FFConv (arXiv:2102.03494) SVD initialisation from a trained ``conv`` (groups = 1, square
        kernel, zero padding): W (C_out x C_in*d*d) ~ U_r S_r V_r^T; the d x d filters are
        S_r^{1/2} V_r^T and the 1 x 1 weights U_r S_r^{1/2}; the bias moves to the 1 x 1 part."""
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros":
            raise InputError("FFConv.from_conv needs an nn.Conv2d with groups=1 and zero padding")
        c_out, c_in, kh, kw = conv.weight.shape
        if kh != kw or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1] \
                or conv.dilation[0] != conv.dilation[1] or isinstance(conv.padding, str):
            raise InputError("FFConv.from_conv needs square kernel, stride, padding and dilation")
        layer = cls(c_in, c_out, kh, rank, stride=conv.stride[0], padding=conv.padding[0],
                    dilation=conv.dilation[0], bias=conv.bias is not None, device=conv.weight.device,
                    dtype=conv.weight.dtype)
        spatial, pointwise = svd_factors(conv.weight, rank)
        with torch.no_grad():
            layer.spatial.weight.copy_(spatial)
            layer.pointwise.weight.copy_(pointwise)
            if conv.bias is not None:
                layer.pointwise.bias.copy_(conv.bias)
        return layer


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FFConv (arXiv:2102.03494) SVD split of a conv weight (C_out, C_in, d, d) into the d x d filters
    (r, C_in, d, d) = S_r^{1/2} V_r^T and the 1 x 1 weights (C_out, r, 1, 1) = U_r S_r^{1/2}
    (computed in float64, returned in the weight's dtype)."""
    if weight.dim() != 4 or not torch.isfinite(weight).all():
        raise InputError(f"svd_factors needs a finite 4-d conv weight, got shape {tuple(weight.shape)}")
    c_out, c_in, kh, kw = weight.shape
    check_rank(rank, c_in, c_out, kh)
    u, s, vh = torch.linalg.svd(weight.detach().reshape(c_out, -1).double(), full_matrices=False)
    root = s[:rank].sqrt()
    spatial = (root[:, None] * vh[:rank]).reshape(rank, c_in, kh, kw)
    pointwise = (u[:, :rank] * root[None, :]).reshape(c_out, rank, 1, 1)
    return spatial.to(weight.dtype), pointwise.to(weight.dtype)


def convert_to_ffconv(model: nn.Module,
                      rank: int | dict[str, int] | Callable[[str, nn.Conv2d], int | None]) -> nn.Module:
    """FFConv (arXiv:2102.03494): a deep copy of ``model`` whose ``nn.Conv2d`` layers are replaced by
    :meth:`FFConv.from_conv` layers. ``rank``: an int r for every Conv2d, a dict name -> r for the
    named ones, or a function (name, conv) -> r or None (keep the conv). Every rank is checked before
    anything is built (InputError naming the layer). The model's own forward is untouched; fine-tune
    afterwards."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError(f"{type(model).__name__} has no nn.Conv2d layer to factorise")
    if isinstance(rank, dict):
        unknown = set(rank) - {n for n, _ in convs}
        if unknown:
            raise InputError(f"convert_to_ffconv: no Conv2d named {sorted(unknown)}")
        choose = lambda name, conv: rank.get(name)  # noqa: E731
    elif isinstance(rank, int) and not isinstance(rank, bool):
        choose = lambda name, conv: rank  # noqa: E731
    elif callable(rank):
        choose = rank
    else:
        raise InputError(f"rank must be an int, a dict name -> int or a function (name, conv) -> int | None, "
                         f"got {type(rank).__name__}")
    plan = [(name, r) for name, conv in convs if (r := choose(name, conv)) is not None]
    for name, r in plan:
        conv = model.get_submodule(name)
        try:
            check_rank(r, conv.in_channels, conv.out_channels, conv.kernel_size[0])
        except InputError as err:
            raise InputError(f"layer '{name}' ({conv.in_channels}->{conv.out_channels}, "
                             f"k={conv.kernel_size[0]}): {err}") from None
    new = copy.deepcopy(model)
    for name, r in plan:
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        setattr(parent, child, FFConv.from_conv(new.get_submodule(name), r))
    return new
