"""DoReFa k-bit weight / activation quantisers with a straight-through estimator, and the low-bit student
of role-wise KD (Role-Wise Data Augmentation for Knowledge Distillation, arXiv:2004.08861; DoReFa-Net,
arXiv:1606.06160).

* ``quantize_k(x, k) = round((2^k - 1) x) / (2^k - 1)`` for x in [0, 1]; the backward pass is the identity (STE).
* weights: ``w_q = 2 quantize_k(tanh(w) / (2 max|tanh w|) + 1/2, k) - 1`` (at most 2^k values per layer);
* activations: ``quantize_k(clip(x, 0, 1), k)`` (gradient zero outside [0, 1], identity inside).

:func:`quantize_student` copies a full-precision CNN and swaps every ``Conv2d`` / ``Linear`` except the first
conv and the last linear layer for a quantised one with the same weights (the student is initialised from the
teacher). A quantised layer quantises its input activation and its weight; ``bits = 32`` means full precision.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError

FULL_PRECISION = 32


def _check_bits(bits: int, name: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= 16 or bits == FULL_PRECISION):
        raise InputError(f"{name} must be an integer in 1-16 or 32 (full precision), got {bits!r}")
    return bits


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


def quantize_k(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa (arXiv:1606.06160, used by arXiv:2004.08861): round x in [0, 1] (any shape) to the grid
    {0, 1/(2^k-1), ..., 1}; straight-through gradient. ``bits = 32`` returns x."""
    _check_bits(bits, "bits")
    if bits == FULL_PRECISION:
        return x
    levels = 2 ** bits - 1
    return _RoundSTE.apply(x * levels) / levels


def dorefa_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa weight quantiser (arXiv:1606.06160, as in arXiv:2004.08861): any-shape real weight ->
    values in [-1, 1] on a grid of 2^k levels, ``2 quantize_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1``."""
    _check_bits(bits, "weight bits")
    if bits == FULL_PRECISION:
        return weight
    t = torch.tanh(weight)
    scaled = t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
    return 2 * quantize_k(scaled, bits) - 1


def dorefa_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa activation quantiser (arXiv:1606.06160, as in arXiv:2004.08861): ``quantize_k(clip(x, 0, 1))``
    for any-shape x; ``bits = 32`` returns x unchanged (no clip)."""
    _check_bits(bits, "activation bits")
    if bits == FULL_PRECISION:
        return x
    return quantize_k(x.clamp(0.0, 1.0), bits)


class _DoReFaLayer:
    """Shared part of the DoReFa layers (arXiv:1606.06160): bit widths and the quantised weight."""

    weight: torch.Tensor

    def set_bits(self, weight_bits: int, act_bits: int) -> None:
        self.weight_bits = _check_bits(weight_bits, "weight_bits")
        self.act_bits = _check_bits(act_bits, "act_bits")

    def quantized_weight(self) -> torch.Tensor:
        return dorefa_weight(self.weight, self.weight_bits)


class QuantConv2d(_DoReFaLayer, nn.Conv2d):
    """DoReFa conv (arXiv:1606.06160; the student of arXiv:2004.08861): quantises its input (N, C, H, W)
    activation to ``act_bits`` and its weight to ``weight_bits`` before the convolution."""

    def __init__(self, *args, weight_bits: int = 2, act_bits: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_bits(weight_bits, act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv_forward(dorefa_activation(x, self.act_bits), self.quantized_weight(), self.bias)


class QuantLinear(_DoReFaLayer, nn.Linear):
    """DoReFa linear layer (arXiv:1606.06160; the student of arXiv:2004.08861): quantises its input
    (N, in_features) activation and its weight before the affine map."""

    def __init__(self, *args, weight_bits: int = 2, act_bits: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_bits(weight_bits, act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.linear(dorefa_activation(x, self.act_bits), self.quantized_weight(), self.bias)


def _quantized_copy(layer: nn.Module, weight_bits: int, act_bits: int) -> nn.Module:
    bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        new = QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=bias,
                          padding_mode=layer.padding_mode, weight_bits=weight_bits, act_bits=act_bits)
    else:
        new = QuantLinear(layer.in_features, layer.out_features, bias=bias,
                          weight_bits=weight_bits, act_bits=act_bits)
    new.load_state_dict(layer.state_dict())
    return new.to(layer.weight.device, layer.weight.dtype)


def quantize_student(teacher: nn.Module, weight_bits: int = 2, act_bits: int = 2) -> nn.Module:
    """Role-wise KD student (arXiv:2004.08861): a deep copy of ``teacher`` in which every ``Conv2d`` and
    ``Linear`` except the first conv and the last linear layer (module order) becomes a DoReFa
    :class:`QuantConv2d` / :class:`QuantLinear` with the teacher's weights. The teacher is not changed;
    the copy is in train mode with every parameter trainable."""
    _check_bits(weight_bits, "weight_bits")
    _check_bits(act_bits, "act_bits")
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    names = [n for n, m in student.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    convs = [n for n in names if isinstance(student.get_submodule(n), nn.Conv2d)]
    linears = [n for n in names if isinstance(student.get_submodule(n), nn.Linear)]
    if not convs or not linears:
        raise InputError("quantize_student needs a model with at least one Conv2d and one Linear layer")
    keep = {convs[0], linears[-1]}
    for name in names:
        if name in keep:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = student.get_submodule(parent_name) if parent_name else student
        setattr(parent, child, _quantized_copy(student.get_submodule(name), weight_bits, act_bits))
    return student
