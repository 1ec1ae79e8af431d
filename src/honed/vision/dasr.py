"""DASR: Deeply Activated Salient Region instance features from layer-wise back-propagation
(Xiao, Zhao, Lin, Hong, Ngo, ACM TOMM 2022, arXiv:2002.00185).

A classification CNN, untouched by training, localises arbitrary object instances: the peaks of its
class-agnostic response map (channel mean of a late conv output) are back-propagated to the input with
every ``nn.Conv2d``'s backward replaced by a positive-weight, mass-conserving rule (excitation back-prop
style; BN, ReLU, pooling and residual adds keep their normal gradients)::

    g_in = (x - o) * conv_transpose(W+, g_out / (conv(x - o, W+) + eps)),  o = min(x), W+ = relu(W)

(zero where the normaliser is < eps). The input gradient of one peak, summed over RGB, clamped at 0 and
cut at its 95th percentile, is a salient blob; a Gaussian fitted to it gives an ellipse (semi-axes
2 sqrt(eigenvalues)) whose axis-aligned box is the instance region. Each region average-pools (ROI-align
style) a CNN feature map into an L2-normalised instance descriptor.

Pieces, each usable alone: :func:`layerwise_backprop` (context manager patching a user's convs),
:func:`find_peaks`, :func:`peak_response_map`, :func:`ellipse_box`, :func:`pool_regions`, and
:class:`DASR` tying them to a model. Coordinates: boxes are (x0, y0, x1, y1) in pixels with pixel (r, c)
covering [c, c+1] x [r, r+1].
"""
import contextlib
import types
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.grad import conv2d_input

from honed.core.errors import InputError


class ExcitationConv2d(torch.autograd.Function):
    """DASR layer-wise rule (arXiv:2002.00185) for one conv: the forward is ``F.conv2d`` unchanged; the
    backward returns ``(x - o) * conv_transpose(W+, g / (conv(x - o, W+) + eps))`` for the input (o =
    per-sample min of x, (N, C, H, W)) and no gradient for weight or bias. Sum of g_in equals sum of g_out
    wherever the normaliser is positive."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, eps):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, eps)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, eps = ctx.conf
        shifted = x - x.amin(dim=(1, 2, 3), keepdim=True)
        w_pos = weight.clamp_min(0)
        norm = F.conv2d(shifted, w_pos, None, stride, padding, dilation, groups)
        ratio = torch.where(norm >= eps, grad_out / (norm + eps), torch.zeros_like(grad_out))
        back = conv2d_input(shifted.shape, w_pos, ratio, stride, padding, dilation, groups)
        return shifted * back, None, None, None, None, None, None, None


def numeric_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The conv's padding as two ints ('same' / 'valid' resolved); non-zero padding modes are refused."""
    if conv.padding_mode != "zeros":
        raise InputError(f"layerwise_backprop supports padding_mode='zeros' only, got {conv.padding_mode!r}")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(conv.padding)


def excitation_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return ExcitationConv2d.apply(x, self.weight, self.bias, self.stride, numeric_padding(self),
                                  self.dilation, self.groups, self._dasr_eps)


@contextlib.contextmanager
def layerwise_backprop(model: nn.Module, eps: float = 1e-9) -> Iterator[nn.Module]:
    """DASR (arXiv:2002.00185) layer-wise back-propagation: inside the block every ``nn.Conv2d`` of
    ``model`` computes the same forward values but back-propagates with :class:`ExcitationConv2d`; the
    original forwards are restored on exit (also on error). The model must be in eval mode (the rule is
    for inference; BN must use its running statistics)."""
    if model.training:
        raise InputError("layerwise_backprop needs the model in eval mode (call model.eval() first)")
    if eps <= 0:
        raise InputError(f"eps must be > 0, got {eps}")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    saved = [m.__dict__.get("forward") for m in convs]
    for conv in convs:
        numeric_padding(conv)
        conv._dasr_eps = eps
        conv.forward = types.MethodType(excitation_forward, conv)
    try:
        yield model
    finally:
        for conv, old in zip(convs, saved):
            del conv.forward
            del conv._dasr_eps
            if old is not None:
                conv.forward = old


def find_peaks(response: torch.Tensor, window: int = 3, over_mean: bool = True,
               skip_border: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """DASR peak stimulation (arXiv:2002.00185): positions of ``response`` (h, w) equal to the max of their
    ``window`` x ``window`` neighbourhood (-inf padding), >= the map mean (``over_mean``) and not on the
    outer row/column (``skip_border``). Returns (K, 2) long (row, col) and (K,) scores, by falling score."""
    if response.dim() != 2 or not torch.isfinite(response).all():
        raise InputError(f"response must be a finite (h, w) map, got shape {tuple(response.shape)}")
    if window < 1 or window % 2 == 0:
        raise InputError(f"window must be an odd integer >= 1, got {window}")
    half = window // 2
    padded = F.pad(response[None, None], (half,) * 4, value=float("-inf"))
    is_peak = response == F.max_pool2d(padded, window, stride=1)[0, 0]
    if over_mean:
        is_peak &= response >= response.mean()
    if skip_border:
        is_peak[[0, -1], :] = False
        is_peak[:, [0, -1]] = False
    rows, cols = torch.nonzero(is_peak, as_tuple=True)
    scores = response[rows, cols]
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.stack([rows, cols], 1)[order], scores[order]


def peak_response_map(input_grad: torch.Tensor, percentile: float = 0.95) -> torch.Tensor:
    """DASR peak response map (arXiv:2002.00185): ``input_grad`` (..., 3, H, W) -> (..., H, W) = the
    RGB-summed gradient clamped at 0, keeping only pixels > 0 and >= its ``percentile`` quantile, normalised
    to sum 1 (all zeros when nothing is positive)."""
    if input_grad.dim() < 3 or not 0 <= percentile < 1:
        raise InputError("input_grad must be (..., C, H, W) and percentile in [0, 1)")
    mass = input_grad.sum(-3).clamp_min(0)
    flat = mass.flatten(-2)
    cut = torch.quantile(flat, percentile, dim=-1, keepdim=True)
    kept = torch.where((flat >= cut) & (flat > 0), flat, torch.zeros_like(flat))
    kept = kept / kept.sum(-1, keepdim=True).clamp_min(1e-30)
    return kept.view_as(mass)


def ellipse_box(weights: torch.Tensor, n_sigma: float = 2.0) -> torch.Tensor:
    """DASR region (arXiv:2002.00185): fit a Gaussian (weighted mean, covariance of pixel-centre (x, y)
    coordinates) to ``weights`` (H, W) >= 0, take the ellipse with semi-axes n_sigma * sqrt(eigenvalues)
    and return its axis-aligned bounding box (4,) xyxy clipped to [0, W] x [0, H]."""
    if weights.dim() != 2 or (weights < 0).any() or not torch.isfinite(weights).all():
        raise InputError("weights must be a finite non-negative (H, W) map")
    total = weights.sum()
    if total <= 0:
        raise InputError("weights have no mass: no region to fit")
    h, w = weights.shape
    p = (weights / total).double()
    ys = torch.arange(h, dtype=torch.float64, device=weights.device) + 0.5
    xs = torch.arange(w, dtype=torch.float64, device=weights.device) + 0.5
    px, py = p.sum(0), p.sum(1)
    mx, my = (px * xs).sum(), (py * ys).sum()
    dx, dy = xs[None, :] - mx, ys[:, None] - my
    cov = torch.stack([torch.stack([(p * dx * dx).sum(), (p * dx * dy).sum()]),
                       torch.stack([(p * dx * dy).sum(), (p * dy * dy).sum()])])
    evals, evecs = torch.linalg.eigh(cov)
    semi = n_sigma * evals.clamp_min(0).sqrt()
    half = ((evecs * semi[None, :]) ** 2).sum(1).sqrt()  # extent of the rotated ellipse along x and y
    box = torch.stack([mx - half[0], my - half[1], mx + half[0], my + half[1]])
    return torch.stack([box[0].clamp(0, w), box[1].clamp(0, h), box[2].clamp(0, w), box[3].clamp(0, h)]).float()


def pool_regions(features: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                 samples: int = 6) -> torch.Tensor:
    """DASR instance descriptors (arXiv:2002.00185): average-pool ``features`` (C, h, w) inside each of
    ``boxes`` (N, 4) xyxy in input-image pixels of ``image_size`` (H, W) with ROI-align sampling
    (``samples`` x ``samples`` bilinear points per box), then L2-normalise. Returns (N, C)."""
    if features.dim() != 3 or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise InputError(f"features (C, h, w) and boxes (N, 4) expected, got {tuple(features.shape)}, "
                         f"{tuple(boxes.shape)}")
    if len(boxes) == 0:
        return features.new_zeros(0, features.shape[0])
    height, width = image_size
    steps = (torch.arange(samples, dtype=features.dtype, device=features.device) + 0.5) / samples
    b = boxes.to(features)
    gx = b[:, 0:1] + steps[None] * (b[:, 2:3] - b[:, 0:1])  # (N, s) image x
    gy = b[:, 1:2] + steps[None] * (b[:, 3:4] - b[:, 1:2])
    grid = torch.stack([(2 * gx / width - 1)[:, None, :].expand(-1, samples, -1),
                        (2 * gy / height - 1)[:, :, None].expand(-1, -1, samples)], -1)  # (N, s, s, 2)
    sampled = F.grid_sample(features[None], grid.reshape(1, -1, samples, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)  # (1, C, N*s, s)
    pooled = sampled[0].reshape(features.shape[0], len(boxes), -1).mean(-1).t()
    return F.normalize(pooled, dim=1)


class LayerTap:
    """Forward hooks storing the outputs of chosen modules (DASR helper, arXiv:2002.00185)."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self.store(name)) for name, m in modules.items()]

    def store(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class DASR:
    """DASR (arXiv:2002.00185) on a user's CNN ``model`` (eval mode, input (3, H, W) in its own domain):
    ``response_layer`` is the module whose output (1, C, h, w) gives the class-agnostic response (channel
    mean); ``descriptor_layer`` the module whose output is pooled into descriptors (same layer for queries
    and database). ``excitation=False`` gives the vanilla-gradient ablation. ``box_nms_iou`` (e.g. 0.3)
    is the DASR* variant; ``max_peaks`` keeps the highest-scoring peaks. No weights are changed."""

    def __init__(self, model: nn.Module, response_layer: nn.Module, descriptor_layer: nn.Module, *,
                 percentile: float = 0.95, n_sigma: float = 2.0, max_peaks: int = 8,
                 box_nms_iou: float | None = None, excitation: bool = True, eps: float = 1e-9):
        if max_peaks < 1 or n_sigma <= 0 or not 0 <= percentile < 1:
            raise InputError("max_peaks >= 1, n_sigma > 0 and percentile in [0, 1) are required")
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
        for role, layer in (("response_layer", response_layer), ("descriptor_layer", descriptor_layer)):
            if not any(layer is m for m in model.modules()):
                raise InputError(f"{role} must be a submodule of the model (e.g. model.features[4]), got "
                                 f"{type(layer).__name__} that the model does not contain")
        self.model, self.response_layer, self.descriptor_layer = model, response_layer, descriptor_layer
        self.percentile, self.n_sigma, self.max_peaks = percentile, n_sigma, max_peaks
        self.box_nms_iou, self.excitation, self.eps = box_nms_iou, excitation, eps

    def check_image(self, image: torch.Tensor) -> None:
        if image.dim() != 3 or not torch.isfinite(image).all():
            raise InputError(f"image must be a finite (C, H, W) tensor, got shape {tuple(image.shape)}")
        if self.model.training:
            raise InputError("DASR needs the model in eval mode (call model.eval() first)")

    def taps(self, image: torch.Tensor, names: tuple[str, ...], batch: int = 1,
             requires_grad: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        layers = {"response": self.response_layer, "descriptor": self.descriptor_layer}
        tap = LayerTap({n: layers[n] for n in names})
        x = image[None].repeat(batch, 1, 1, 1).requires_grad_(requires_grad)
        try:
            self.model(x)
        finally:
            tap.remove()
        for name in names:
            out = tap.outputs.get(name)
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                got = "never ran in the model's forward" if out is None else \
                    f"returned {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
                raise InputError(f"the {name} layer must output a (B, C, h, w) feature map, but it {got}")
        return x, tap.outputs

    def peaks(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Peaks (K, 2) (row, col) of the response map and their scores (K,); the global maximum when
        no interior over-mean peak exists."""
        self.check_image(image)
        with torch.no_grad():
            response = self.taps(image, ("response",))[1]["response"][0].mean(0)
        rc, scores = find_peaks(response)
        if len(rc) == 0:
            top = int(response.argmax())
            rc = torch.tensor([[top // response.shape[1], top % response.shape[1]]], device=response.device)
            scores = response.flatten()[[top]]
        return rc[:self.max_peaks], scores[:self.max_peaks]

    def saliency_maps(self, image: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
        """Peak response maps (K, H, W) of ``peaks`` (K, 2): one backward per peak, batched as K copies."""
        self.check_image(image)
        patch = layerwise_backprop(self.model, self.eps) if self.excitation else contextlib.nullcontext()
        with torch.enable_grad(), patch:
            x, outs = self.taps(image, ("response",), batch=len(peaks), requires_grad=True)
            response = outs["response"]
            seed = torch.zeros_like(response)
            seed[torch.arange(len(peaks), device=seed.device), :, peaks[:, 0], peaks[:, 1]] = 1.0 / response.shape[1]
            (grad,) = torch.autograd.grad(response, x, seed)
        return peak_response_map(grad.detach(), self.percentile)

    def regions(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance boxes (K, 4) xyxy in image pixels and their peak scores (K,) for ``image`` (C, H, W)."""
        peaks, scores = self.peaks(image)
        maps = self.saliency_maps(image, peaks)
        alive = maps.flatten(1).sum(1) > 0
        boxes = [ellipse_box(m, self.n_sigma) for m in maps[alive]]
        boxes = torch.stack(boxes) if boxes else torch.zeros(0, 4, device=maps.device)
        scores = scores[alive]
        if self.box_nms_iou is not None and len(boxes):
            from honed.vision.nms import greedy_nms
            keep = greedy_nms(boxes, scores, self.box_nms_iou)
            boxes, scores = boxes[keep], scores[keep]
        return boxes, scores

    def feature_map(self, image: torch.Tensor) -> torch.Tensor:
        """The descriptor layer's output (C, h, w) for ``image`` (C, H, W)."""
        self.check_image(image)
        with torch.no_grad():
            return self.taps(image, ("descriptor",))[1]["descriptor"][0]

    def describe(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptors (N, C) of ``boxes`` (N, 4) on ``image`` (C, H, W)."""
        return pool_regions(self.feature_map(image), boxes, tuple(image.shape[-2:]))
