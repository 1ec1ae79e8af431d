"""Binary neural networks without batch normalisation ("BNN - BN = ?", arXiv:2104.08215).

Pieces, each usable on its own in a plain PyTorch model:

* :func:`sign_pm1`, :class:`ApproxSign` / :func:`binary_activation` - forward sign (values exactly
  {-1, +1}), backward the piecewise-quadratic ApproxSign derivative ``2 - 2|x|`` on ``|x| < 1`` (Bi-Real Net).
* :func:`standardize_weight` - scaled weight standardisation (NF-Nets, arXiv:2101.08692).
* :func:`binarize_weight` - ``a_o * sign(W_hat)`` with a detached per-output-channel scale and the
  straight-through estimator through ``clamp(W_hat, -1, 1)``.
* :class:`ScaledStdConv2d` (real), :class:`BinaryConv2d`, :class:`BinaryLinear` - layers with a learnable
  per-output gain; ``binary_weights`` switches between the card's step 1 (real weights) and step 2.
* :class:`RSign`, :class:`RPReLU` - ReActNet's learnable shifts (arXiv:2003.03488).
* :func:`residual_betas` - the alpha/beta signal-propagation scaling that replaces BN.
* :func:`adaptive_clip_grad_` / :class:`AdaptiveGradClip` - unit-wise adaptive gradient clipping
  (Brock et al. 2021, arXiv:2102.06171), as a function for plain loops and a loop callback.
* :func:`conv_weight_decay_groups`, :func:`set_binary_weights` - the card's two-step training helpers.

Choices the card leaves open: ``sign(0) = +1`` so binary tensors take
exactly two values; AGC treats a 1-D parameter (bias, PReLU slope) as ONE unit (the NF-Nets rule).
"""
import math
from typing import Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_number
from honed.core.loop import Callback, TrainState

WeightInit = Literal["uniform_small", "kaiming"]
WEIGHT_INITS = ("uniform_small", "kaiming")


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """Sign with ``sign(0) = +1`` ("BNN - BN = ?", arXiv:2104.08215): any shape, values exactly {-1, +1}."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)


class ApproxSign(torch.autograd.Function):
    """ApproxSign (Bi-Real Net, arXiv:1808.00278; used by arXiv:2104.08215): forward ``sign_pm1(x)``,
    backward ``grad * (2 - 2|x|)`` where ``|x| < 1`` and 0 elsewhere. Any shape, real input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        slope = (2 - 2 * x.abs()).clamp_min(0)  # 2 - 2|x| inside (-1, 1), exactly 0 at and beyond |x| = 1
        return grad * slope


def binary_activation(x: torch.Tensor) -> torch.Tensor:
    """Binarise activations ("BNN - BN = ?", arXiv:2104.08215, step 3): any shape -> same shape in {-1, +1}
    with the ApproxSign surrogate gradient."""
    if not torch.is_floating_point(x):
        raise InputError(f"binary_activation expects a float tensor, got dtype {x.dtype}")
    return ApproxSign.apply(x)


def standardize_weight(weight: torch.Tensor, gamma: float = 1.0, eps: float = 1e-5) -> torch.Tensor:
    """Scaled weight standardisation (NF-Nets arXiv:2101.08692; "BNN - BN = ?" arXiv:2104.08215, step 1).

    ``weight`` (out, ...) with at least 2 dims; per output row o, statistics over all other dims
    (fan_in = their product), biased std: ``gamma * (W[o] - mean) / (std + eps) / sqrt(fan_in)``. The
    per-output gain is NOT applied here (the layers multiply it afterwards). Returns the same shape.
    """
    if weight.dim() < 2:
        raise InputError(f"standardize_weight expects a weight of shape (out, in, ...), got {tuple(weight.shape)}")
    check_number(gamma, "gamma", strict=True)
    check_number(eps, "eps", strict=True)
    dims = tuple(range(1, weight.dim()))
    fan_in = weight[0].numel()
    std, mean = torch.std_mean(weight, dim=dims, keepdim=True, unbiased=False)
    return gamma * (weight - mean) / (std + eps) / math.sqrt(fan_in)


def binarize_weight(w_hat: torch.Tensor) -> torch.Tensor:
    """Binary weights ("BNN - BN = ?", arXiv:2104.08215, step 2): ``a_o * sign(w_hat)`` with
    ``a_o = mean |w_hat[o]|`` over all non-output dims, detached; gradient = straight-through estimator
    through ``clamp(w_hat, -1, 1)`` (identity inside [-1, 1], zero outside).

    ``w_hat`` (out, ...) with at least 2 dims, the standardised latent weight. Each output row of the
    result takes exactly the two values {-a_o, +a_o} (sign(0) = +1).
    """
    if w_hat.dim() < 2:
        raise InputError(f"binarize_weight expects a weight of shape (out, in, ...), got {tuple(w_hat.shape)}")
    dims = tuple(range(1, w_hat.dim()))
    scale = w_hat.abs().mean(dim=dims, keepdim=True).detach()
    binary = scale * sign_pm1(w_hat.detach())
    if not (w_hat.requires_grad and torch.is_grad_enabled()):
        return binary  # inference: the STE term is exactly zero
    clipped = w_hat.clamp(-1.0, 1.0)
    return binary + (clipped - clipped.detach())


class ScaledStdConv2d(nn.Conv2d):
    """Real-valued conv with scaled weight standardisation and a learnable per-output gain (NF-Nets
    arXiv:2101.08692, as used for the first conv of "BNN - BN = ?" arXiv:2104.08215).

    Input (N, in_channels, H, W) real; weight used = ``gain[o] * standardize_weight(W, gamma, eps)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, bias: bool = False, gamma: float = 1.0, eps: float = 1e-5,
                 device: str | torch.device | None = None) -> None:
        padding = (kernel_size - 1) // 2 if padding is None else padding
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias, device=device)
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1, device=device))
        self.gamma, self.eps = check_number(gamma, "gamma", strict=True), check_number(eps, "eps", strict=True)

    def effective_weight(self) -> torch.Tensor:
        return self.gain * standardize_weight(self.weight, self.gamma, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class _BinaryWeightMixin:
    """Shared latent-weight logic of BinaryConv2d and BinaryLinear (see their docstrings)."""

    weight: nn.Parameter
    gain: nn.Parameter | None

    def _setup(self, shape: tuple[int, ...], standardize: bool, binary_weights: bool, gamma: float,
               eps: float, weight_init: str, device, bias: bool = False) -> None:
        if weight_init not in WEIGHT_INITS:
            raise InputError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {weight_init!r}")
        self.standardize, self.binary_weights = bool(standardize), bool(binary_weights)
        self.gamma, self.eps = check_number(gamma, "gamma", strict=True), check_number(eps, "eps", strict=True)
        weight = torch.empty(shape, device=device)
        if weight_init == "uniform_small":  # card: latent weights U(0, 0.001)
            nn.init.uniform_(weight, 0.0, 1e-3)
        else:  # PyTorch's default conv/linear init, as the reference's step-1 (real-weight) layers use
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.weight = nn.Parameter(weight)
        gain_shape = (shape[0],) + (1,) * (len(shape) - 1)
        self.gain = nn.Parameter(torch.ones(gain_shape, device=device)) if standardize else None
        self.bias = nn.Parameter(torch.zeros(shape[0], device=device)) if bias else None  # real, as in the card

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer applies: WS (if on), then binarisation (if on), then the gain."""
        w = standardize_weight(self.weight, self.gamma, self.eps) if self.standardize else self.weight
        if self.binary_weights:
            w = binarize_weight(w)
        return w if self.gain is None else self.gain * w


class BinaryConv2d(_BinaryWeightMixin, nn.Module):
    """Binary conv of "BNN - BN = ?" (arXiv:2104.08215, steps 1-2): latent weight W (out, in, k, k), optional
    scaled weight standardisation (``standardize``; off for the BN and "none" nets), ``binary_weights``
    (step 2: ``a_o * sign``; step 1: real weights), learnable per-output gain when standardised.

    Input (N, in_channels, H, W): binary activations in the method (the block applies :class:`RSign`);
    zero padding. Output (N, out_channels, H', W'). ``bias`` adds a real per-channel bias (off in the card).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, standardize: bool = True, binary_weights: bool = True,
                 gamma: float = 1.0, eps: float = 1e-5, weight_init: WeightInit = "uniform_small",
                 device: str | torch.device | None = None, bias: bool = False) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("kernel_size", kernel_size), ("stride", stride)):
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride = stride
        self.padding = (kernel_size - 1) // 2 if padding is None else padding
        self._setup((out_channels, in_channels, kernel_size, kernel_size), standardize, binary_weights,
                    gamma, eps, weight_init, device, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"BinaryConv2d expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, s={self.stride}, "
                f"standardize={self.standardize}, binary_weights={self.binary_weights}")


class BinaryLinear(_BinaryWeightMixin, nn.Module):
    """Binary fully connected layer ("BNN - BN = ?", arXiv:2104.08215, steps 1-2 applied to a (out, in)
    weight); input (N, in_features) real or binary, output (N, out_features). The card keeps the final
    classifier real-valued: use this for hidden layers only."""

    def __init__(self, in_features: int, out_features: int, standardize: bool = True,
                 binary_weights: bool = True, gamma: float = 1.0, eps: float = 1e-5,
                 weight_init: WeightInit = "uniform_small", device: str | torch.device | None = None,
                 bias: bool = False) -> None:
        super().__init__()
        if not (isinstance(in_features, int) and isinstance(out_features, int)) or min(in_features, out_features) < 1:
            raise InputError(f"in_features/out_features must be positive integers, "
                             f"got {in_features!r}, {out_features!r}")
        self.in_features, self.out_features = in_features, out_features
        self._setup((out_features, in_features), standardize, binary_weights, gamma, eps, weight_init, device, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise InputError(f"BinaryLinear expects (N, {self.in_features}), got {tuple(x.shape)}")
        return F.linear(x, self.effective_weight(), self.bias)


class RSign(nn.Module):
    """ReActNet RSign (arXiv:2003.03488; "BNN - BN = ?" arXiv:2104.08215, step 3): learnable per-channel
    bias, then :func:`binary_activation`. Input (N, C, ...) (e.g. (N, C, H, W) or (N, C)) -> same shape
    in {-1, +1}."""

    def __init__(self, channels: int, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if x.dim() == 4 else self.bias.view(1, -1, *[1] * (x.dim() - 2))
        return binary_activation(x + bias)


class RPReLU(nn.Module):
    """ReActNet RPReLU (arXiv:2003.03488): per-channel bias -> PReLU (slope init 0.25) -> bias.
    Input (N, C, H, W) -> same shape."""

    def __init__(self, channels: int, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(1, channels, 1, 1, device=device))
        self.prelu = nn.PReLU(channels, device=device)
        self.shift_out = nn.Parameter(torch.zeros(1, channels, 1, 1, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(x + self.shift_in) + self.shift_out


def residual_betas(transitions: Sequence[bool], alpha: float = 0.2) -> list[tuple[float, float]]:
    """Signal-propagation scales of "BNN - BN = ?" (arXiv:2104.08215, step 4) for blocks with two residual
    additions each: returns (beta1, beta2) per block, ``beta = 1 / sqrt(Var_expected)``.

    Var_expected starts at 1 (the stem output), grows by ``alpha**2`` after every residual addition and is
    reset to 1 inside a transition block (``transitions[i]`` True: the skip path is the pooled, scaled
    input), before that block's first addition. Without transitions the betas are 1/sqrt(1 + k alpha^2),
    k = 0, 1, 2, ...
    """
    alpha = check_number(alpha, "alpha", strict=True)
    variance, betas = 1.0, []
    for is_transition in transitions:
        beta1 = variance ** -0.5
        if is_transition:
            variance = 1.0
        variance += alpha ** 2
        beta2 = variance ** -0.5
        variance += alpha ** 2
        betas.append((beta1, beta2))
    return betas


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit (NF-Nets, arXiv:2102.06171): for x (out, ...) with >= 2 dims, the norm of
    each row ``x[o]`` kept as shape (out, 1, ...); a 0-D/1-D tensor is one unit (a scalar)."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


def tensor_list(parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """``parameters`` as a list of tensors; InputError for a model (AGC must leave the final classifier
    out, so it takes the parameters to clip: see :func:`parameters_except`) or anything else."""
    if isinstance(parameters, nn.Module):
        raise InputError(f"AGC takes the parameters to clip, not a model ({type(parameters).__name__}): pass "
                         "parameters_except(model, model.<final classifier>), since AGC must skip the classifier")
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    try:
        params = list(parameters)
    except TypeError:
        raise InputError(f"parameters must be an iterable of tensors, got {type(parameters).__name__}") from None
    bad = sorted({type(p).__name__ for p in params if not isinstance(p, torch.Tensor)})
    if bad:
        raise InputError(f"parameters must be tensors, got {', '.join(bad)}")
    return params


@torch.no_grad()
def adaptive_clip_grad_(parameters: Iterable[torch.Tensor], clip_factor: float = 0.02,
                        eps: float = 1e-3) -> None:
    """Adaptive gradient clipping in place (High-Performance Normalizer-Free ResNets, arXiv:2102.06171;
    "BNN - BN = ?" arXiv:2104.08215, step 6): per unit u, if ``||G_u|| > clip_factor * max(||W_u||, eps)``
    then ``G_u <- G_u * clip_factor * max(||W_u||, eps) / ||G_u||``; smaller gradients are untouched.

    Pass every parameter except the final classifier's. The card's ImageNet scripts use 0.02. A non-finite
    gradient is left as it is (a diverging run stays visible instead of being clipped into range).
    """
    clip_factor, eps = check_number(clip_factor, "clip_factor", strict=True), check_number(eps, "eps", strict=True)
    for p in tensor_list(parameters):
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp_min(eps) * clip_factor
        grad_norm = unitwise_norm(p.grad)
        factor = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-12), torch.ones_like(grad_norm))
        p.grad.mul_(factor)


class AdaptiveGradClip(Callback):
    """AGC (arXiv:2102.06171) as a :class:`honed.core.loop.Callback` applied before each optimizer step;
    in a plain loop call :meth:`clip` between ``backward()`` and ``optimizer.step()``.

    ``parameters``: the clipped tensors (every parameter but the final classifier's, see
    :func:`parameters_except`). ``clip_factor`` lambda (card: 0.02), ``eps`` floor on ``||W_u||`` (1e-3).
    """

    def __init__(self, parameters: Iterable[torch.Tensor], clip_factor: float = 0.02, eps: float = 1e-3) -> None:
        self.parameters = tensor_list(parameters)
        self.clip_factor, self.eps = check_number(clip_factor, "clip_factor", strict=True), check_number(eps, "eps", strict=True)

    def clip(self) -> None:
        adaptive_clip_grad_(self.parameters, self.clip_factor, self.eps)

    def before_step(self, state: TrainState) -> None:
        self.clip()


def parameters_except(model: nn.Module, *excluded: nn.Module) -> list[nn.Parameter]:
    """All parameters of ``model`` not owned by the ``excluded`` modules (e.g. the final classifier,
    which AGC must skip, arXiv:2104.08215 step 6)."""
    skip = {id(p) for module in excluded for p in module.parameters()}
    return [p for p in model.parameters() if id(p) not in skip]


def conv_weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer param groups with weight decay only on conv weights ("BNN - BN = ?", arXiv:2104.08215,
    step 7): the ``weight`` of every nn.Conv2d / BinaryConv2d gets ``weight_decay``; gains, biases, PReLU
    slopes, BN and the linear head get 0."""
    if weight_decay < 0 or not math.isfinite(weight_decay):
        raise InputError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    conv_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, BinaryConv2d))}
    decayed = [p for p in model.parameters() if id(p) in conv_ids]
    others = [p for p in model.parameters() if id(p) not in conv_ids]
    return [{"params": decayed, "weight_decay": float(weight_decay)}, {"params": others, "weight_decay": 0.0}]


def set_binary_weights(model: nn.Module, binary: bool = True) -> int:
    """Switch every BinaryConv2d / BinaryLinear of ``model`` to binary (step 2) or real (step 1) weights of
    "BNN - BN = ?" (arXiv:2104.08215, step 7); returns how many layers were switched."""
    layers = [m for m in model.modules() if isinstance(m, _BinaryWeightMixin)]
    for layer in layers:
        layer.binary_weights = bool(binary)
    return len(layers)
