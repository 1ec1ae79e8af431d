"""A mini ReActNet-A binary network with BN, without BN (scaled WS + alpha/beta) or with BN simply deleted
("BNN - BN = ?", arXiv:2104.08215; ReActNet arXiv:2003.03488), for 8x8 to 32x32 images such as digits.

Variants (:data:`VARIANTS`, built by :func:`create_bnn`):

* ``bnfree`` - the method: scaled weight standardisation on every conv, no BN, alpha/beta residual scaling;
* ``bn`` - the baseline: the same net with BN after the stem and after every binary conv, plain convs;
* ``none`` - BN deleted and nothing else changed (plain convs, no alpha/beta);
* ``bnfree_no_ws`` - ablation: alpha/beta scaling but plain (unstandardised) convs;
* ``fp32`` - real-valued reference / KD teacher: the ``bn`` net with real activations and real weights.

The binary variants have binary activations AND binary weights by default; ``binary_weights=False``
gives the card's step 1 (real weights, switched later with ``set_binary_weights``). :func:`binarize`
turns a user's own CNN / MLP into a binary network.
"""
import copy
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from honed.compress.binary import (BinaryConv2d, BinaryLinear, RPReLU, RSign, ScaledStdConv2d, WeightInit,
                                   residual_betas)
from honed.core.errors import InputError
from honed.core.measure import forward_with_hooks

Norm = Literal["scaled", "bn", "none"]
NORMS = ("scaled", "bn", "none")
VARIANTS = {
    "bnfree": {"norm": "scaled", "standardize": True},
    "bn": {"norm": "bn", "standardize": False},
    "none": {"norm": "none", "standardize": False},
    "bnfree_no_ws": {"norm": "scaled", "standardize": False},
    "fp32": {"norm": "bn", "standardize": False, "binary_activations": False, "binary_weights": False},
}


class LearnableShift(nn.Module):
    """Per-channel learnable bias (the real-valued stand-in for RSign when activations stay real)."""

    def __init__(self, channels: int, device=None) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class BinaryReActBlock(nn.Module):
    """ReActNet-A block ("BNN - BN = ?", arXiv:2104.08215, step 5): [x beta1 -> RSign -> binary 3x3 (stride s)
    -> x alpha + skip -> RPReLU] then [x beta2 -> RSign -> binary 1x1 -> x alpha + skip -> RPReLU]; when
    ``c_out == 2 c_in`` two 1x1 convs each add the same skip and are concatenated. The skip of a stride-2
    block is AvgPool2 of the (scaled) input. With ``norm="bn"`` BN follows every binary conv; scaling
    (alpha, betas) is used only with ``norm="scaled"``.

    Input (N, c_in, H, W) real; output (N, c_out, H/s, W/s).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: Norm = "scaled", standardize: bool = True,
                 alpha: float = 0.2, betas: tuple[float, float] = (1.0, 1.0), binary_activations: bool = True,
                 binary_weights: bool = False, weight_init: WeightInit = "uniform_small", device=None) -> None:
        super().__init__()
        if norm not in NORMS:
            raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if c_out not in (c_in, 2 * c_in) or stride not in (1, 2):
            raise InputError(f"a block maps c_in -> c_in or 2 c_in with stride 1 or 2; got {c_in}->{c_out}, s={stride}")
        scaled = norm == "scaled"
        self.alpha = alpha if scaled else 1.0
        self.beta1, self.beta2 = betas if scaled else (1.0, 1.0)
        self.stride = stride
        conv = dict(standardize=standardize, binary_weights=binary_weights, weight_init=weight_init, device=device)

        def sign(c):
            return RSign(c, device) if binary_activations else LearnableShift(c, device)

        def bn(c):
            return nn.BatchNorm2d(c, device=device) if norm == "bn" else nn.Identity()

        self.sign1, self.conv3x3, self.bn1 = sign(c_in), BinaryConv2d(c_in, c_in, 3, stride, **conv), bn(c_in)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.act1, self.sign2 = RPReLU(c_in, device), sign(c_in)
        n_pointwise = c_out // c_in
        self.pointwise = nn.ModuleList(BinaryConv2d(c_in, c_in, 1, **conv) for _ in range(n_pointwise))
        self.bn2 = nn.ModuleList(bn(c_in) for _ in range(n_pointwise))
        self.act2 = RPReLU(c_out, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x * self.beta1 if self.beta1 != 1.0 else x
        branch = self.bn1(self.conv3x3(self.sign1(x_in)))
        skip = self.pool(x_in) if self.stride == 2 else x
        out1 = self.act1(skip + self.alpha * branch)
        h = self.sign2(out1 * self.beta2 if self.beta2 != 1.0 else out1)
        out2 = torch.cat([out1 + self.alpha * bn(conv(h)) for conv, bn in zip(self.pointwise, self.bn2)], dim=1)
        return self.act2(out2)


class BinaryReActNet(nn.Module):
    """Mini ReActNet-A ("BNN - BN = ?", arXiv:2104.08215; card's small-scale model): input normalisation,
    real 3x3 stem (``stem_width``, stride ``stem_stride``: 2 as in ReActNet-A), one
    :class:`BinaryReActBlock` per entry of ``widths``/``strides``, global average pooling and a real
    linear ``classifier``.

    Input (N, in_channels, H, W) with H, W in 8..32 (values in [0, 1] are normalised inside by
    ``input_mean``/``input_std``); output logits (N, num_classes). ``norm``: ``scaled`` (BN-free: the
    stem is a ScaledStdConv2d when ``standardize``, blocks use alpha/beta), ``bn`` or ``none``.
    ``binary_weights`` (default True) False is the card's step 1 (binary activations, real weights).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, stem_width: int = 16, stem_stride: int = 2,
                 widths: tuple[int, ...] = (16, 32, 32, 64, 64), strides: tuple[int, ...] = (1, 2, 1, 2, 1),
                 norm: Norm = "scaled", standardize: bool = True, alpha: float = 0.2,
                 binary_activations: bool = True, binary_weights: bool = True,
                 weight_init: WeightInit = "uniform_small", input_mean: float = 0.0, input_std: float = 1.0,
                 device: str | torch.device | None = None) -> None:
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise InputError(f"widths and strides must be non-empty and of equal length, got {widths}, {strides}")
        if input_std <= 0:
            raise InputError(f"input_std must be > 0, got {input_std}")
        self.register_buffer("input_mean", torch.tensor(float(input_mean), device=device))
        self.register_buffer("input_std", torch.tensor(float(input_std), device=device))
        if norm == "scaled" and standardize:
            self.stem = ScaledStdConv2d(in_channels, stem_width, 3, stem_stride, device=device)
        else:
            self.stem = nn.Conv2d(in_channels, stem_width, 3, stem_stride, 1, bias=False, device=device)
        self.stem_bn = nn.BatchNorm2d(stem_width, device=device) if norm == "bn" else nn.Identity()
        betas = residual_betas([s == 2 for s in strides], alpha) if norm == "scaled" else [(1.0, 1.0)] * len(widths)
        blocks, c_in = [], stem_width
        for width, stride, beta in zip(widths, strides, betas):
            blocks.append(BinaryReActBlock(c_in, width, stride, norm, standardize, alpha, beta,
                                           binary_activations, binary_weights, weight_init, device))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c_in, num_classes, device=device)
        self.in_channels = in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output (N, widths[-1], H', W') before pooling."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"BinaryReActNet expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = (x - self.input_mean) / self.input_std
        return self.blocks(self.stem_bn(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def create_bnn(variant: str, **kwargs) -> BinaryReActNet:
    """Build a :class:`BinaryReActNet` of one of :data:`VARIANTS` ("BNN - BN = ?", arXiv:2104.08215);
    ``kwargs`` (widths, alpha, input_mean, ...) go to the constructor. The binary variants have binary
    activations and weights (``binary_weights=False`` for the card's real-weight step 1); the ``fp32``
    variant has real activations and weights."""
    if variant not in VARIANTS:
        raise InputError(f"unknown BNN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return BinaryReActNet(**{**VARIANTS[variant], **kwargs})


def count_binary_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates per sample done by BinaryConv2d layers with ``binary_weights`` on (XNOR-popcount
    operations on binary hardware; "BNN - BN = ?", arXiv:2104.08215). ``example`` (N, C, H, W); counted
    with forward hooks as output elements x in_channels x k x k / N."""
    total = [0]

    def hook(name: str, module: BinaryConv2d, inputs, output) -> None:
        if module.binary_weights:
            total[0] += output[0].numel() * module.in_channels * module.kernel_size ** 2

    forward_with_hooks(model, example, [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryConv2d)], hook)
    return total[0]


ACTIVATIONS_TO_SWAP = (nn.ReLU, nn.ReLU6)


def binarize(model: nn.Module, layers: Iterable[str] | None = None, standardize: bool = True,
             swap_relu: bool = True) -> nn.Module:
    """A binary copy of a user's model ("BNN - BN = ?", arXiv:2104.08215; ReActNet arXiv:2003.03488):
    each chosen ``nn.Conv2d`` / ``nn.Linear`` becomes ``Sequential(RSign, BinaryConv2d / BinaryLinear)``
    with binary activations and binary weights, latent weights and bias copied from the layer.

    ``layers``: module names to binarise; default every Conv2d (groups=1, dilation 1, square kernel,
    stride and padding, zero padding) and Linear except the first and the last weight layer of the
    model, which the card keeps real (stem and classifier). ``standardize``: scaled weight
    standardisation + gain on the latent weights (the method). ``swap_relu``: ``nn.ReLU`` / ``ReLU6``
    modules become ``nn.PReLU`` (slope 0.25), since sign(ReLU(x)) is always +1; a ReLU called as a
    function inside ``forward`` cannot be swapped. Returns the converted deep copy (the input model is
    untouched); :func:`honed.compress.binary.set_binary_weights` switches it to real weights (step 1).
    """
    weights = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weights:
        raise InputError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer to binarise")
    by_name = dict(weights)
    chosen = [n for n, _ in weights[1:-1] if _convertible(by_name[n])] if layers is None else list(layers)
    for name in chosen:
        if name not in by_name:
            raise InputError(f"no nn.Conv2d / nn.Linear named '{name}' (layers: {', '.join(by_name)})")
        if not _convertible(by_name[name]):
            raise InputError(f"layer '{name}' cannot be binarised: BinaryConv2d needs groups=1, dilation 1, "
                             "square kernel/stride/padding and zero padding")
    new = copy.deepcopy(model)
    for name in chosen:
        _set_child(new, name, _binary_layer(new.get_submodule(name), standardize))
    if swap_relu:
        for name, module in list(new.named_modules()):
            if isinstance(module, ACTIVATIONS_TO_SWAP):
                _set_child(new, name, nn.PReLU(init=0.25))
    return new


def _convertible(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    square = all(len(set(v)) == 1 for v in (layer.kernel_size, layer.stride, layer.padding))
    return (layer.groups == 1 and layer.dilation == (1, 1) and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str) and square)


def _binary_layer(layer: nn.Module, standardize: bool) -> nn.Sequential:
    device, has_bias = layer.weight.device, layer.bias is not None
    if isinstance(layer, nn.Linear):
        binary = BinaryLinear(layer.in_features, layer.out_features, standardize, True, device=device, bias=has_bias)
        channels = layer.in_features
    else:
        binary = BinaryConv2d(layer.in_channels, layer.out_channels, layer.kernel_size[0], layer.stride[0],
                              layer.padding[0], standardize, True, device=device, bias=has_bias)
        channels = layer.in_channels
    with torch.no_grad():
        binary.weight.copy_(layer.weight)
        if has_bias:
            binary.bias.copy_(layer.bias)
    return nn.Sequential(RSign(channels, device), binary)


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
