"""Meta-smoothing: arbitrary-scale upscaling with per-pixel filters predicted from the sub-pixel offset
(MVStylizer, arXiv:2005.11630, step 3; built on the Meta-SR meta-upscale idea, Hu et al. CVPR 2019).

For an output pixel (i, j) at scale r the source pixel is (floor(i / r), floor(j / r)) (the card's i / r
convention, no half-pixel shift) and the offset vector is v_ij = (i/r - floor(i/r), j/r - floor(j/r), 1/r).
An MLP 3 -> hidden -> k*k*C_in*C_out maps v_ij to a filter applied to the k x k feature patch at the
source pixel. The features are the low-resolution input itself (so an identity filter at r = 1 returns
the input), the optional guidance image, and a small conv feature extractor's output.

Inputs are (N, C, h, w) float; the output is (N, C, round(r*h), round(r*w)). The MLP runs once per
distinct offset (for a rational r = p/q there are at most p row and p column offsets) and each
(row offset, column offset) group is one matrix product, so the cost per output pixel is one
(k*k*C_in) x C_out product.
"""
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_number


def _scales(scale: "float | tuple[float, float]") -> tuple[float, float]:
    pair = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
    if len(pair) != 2:
        raise InputError(f"scale must be a number or a pair (r_h, r_w), got {scale!r}")
    return tuple(check_number(r, "scale", minimum=0.0, strict=True) for r in pair)  # type: ignore[return-value]


def source_offsets(size_in: int, size_out: int, scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For output rows 0..size_out-1: the source row floor(i / r) (clamped to size_in - 1) and the
    fractional offset i / r - floor(i / r)."""
    pos = torch.arange(size_out, device=device, dtype=torch.float64) / scale
    source = pos.floor()
    offset = ((pos - source) * 1e6).round() / 1e6  # one value per distinct offset despite float error
    return source.long().clamp(max=size_in - 1), offset.float()


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class MetaUpscaler(nn.Module):
    """MVStylizer's meta-smoothing network (arXiv:2005.11630, step 3): feature extractor + weight-
    prediction MLP (3 -> ``hidden`` -> k*k*C_in*C_out, k = ``kernel``). ``guide_channels`` > 0 adds a
    guidance image of that many channels at the input's resolution (the card's optional (R) guidance by
    the downsampled content frame; default off). ``base="bicubic"`` ((R), default) adds the predicted
    filters' output to the bicubic upscaling of the input (a global residual) and starts the filters at
    zero, so training starts from bicubic; ``base="none"`` is the plain meta-upscale, its filters
    starting at the one that copies the source pixel (nearest neighbour). Call ``model(low, scale,
    guide=None)``."""

    def __init__(self, channels: int = 3, features: int = 16, blocks: int = 2, kernel: int = 3,
                 hidden: int = 256, guide_channels: int = 0, base: str = "bicubic") -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise InputError(f"kernel must be odd and >= 1, got {kernel}")
        if base not in ("bicubic", "none"):
            raise InputError(f"base must be 'bicubic' or 'none', got {base!r}")
        self.base = base
        self.channels, self.kernel, self.guide_channels = channels, kernel, guide_channels
        self.extract = nn.Sequential(nn.Conv2d(channels + guide_channels, features, 3, padding=1),
                                     *[ResBlock(features) for _ in range(blocks)])
        self.in_features = channels + guide_channels + features
        self.weights = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(),
                                     nn.Linear(hidden, kernel * kernel * self.in_features * channels))
        with torch.no_grad():  # filters start at zero (base bicubic) or at the source-pixel copy (base none)
            self.weights[-1].weight.zero_()
            self.weights[-1].bias.copy_(self.copy_filter().flatten() if base == "none" else 0.0)

    def copy_filter(self) -> torch.Tensor:
        """(C_out, k*k*C_in) filter whose output channel c is input channel c at the centre tap."""
        taps, centre = self.kernel * self.kernel, (self.kernel // 2) * self.kernel + self.kernel // 2
        filt = torch.zeros(self.channels, self.in_features * taps)
        for c in range(self.channels):
            filt[c, c * taps + centre] = 1.0
        return filt

    def _check(self, low: torch.Tensor, guide: torch.Tensor | None) -> None:
        if not isinstance(low, torch.Tensor) or low.dim() != 4 or low.shape[1] != self.channels:
            raise InputError(f"low must be (N, {self.channels}, h, w), got "
                             f"{tuple(low.shape) if isinstance(low, torch.Tensor) else type(low).__name__}")
        if not low.is_floating_point() or not torch.isfinite(low).all():
            raise InputError("low must hold finite floats")
        if (guide is None) != (self.guide_channels == 0):
            raise InputError(f"this upscaler was built with guide_channels={self.guide_channels}: "
                             f"{'pass' if self.guide_channels else 'do not pass'} a guide")
        if guide is not None and guide.shape != (low.shape[0], self.guide_channels, *low.shape[2:]):
            raise InputError(f"guide must be {(low.shape[0], self.guide_channels, *low.shape[2:])}, "
                             f"got {tuple(guide.shape)}")

    def filters(self, offsets_h: torch.Tensor, offsets_w: torch.Tensor, inv_scale: float) -> torch.Tensor:
        """Predicted filters (len(offsets_h), len(offsets_w), C_out, k*k*C_in) for each offset pair."""
        a, b = torch.meshgrid(offsets_h, offsets_w, indexing="ij")
        v = torch.stack([a, b, torch.full_like(a, inv_scale)], dim=-1)
        return self.weights(v).view(*a.shape, self.channels, -1)

    def forward(self, low: torch.Tensor, scale: "float | tuple[float, float]",
                guide: torch.Tensor | None = None) -> torch.Tensor:
        self._check(low, guide)
        r_h, r_w = _scales(scale)
        n, _, h, w = low.shape
        out_h, out_w = round(r_h * h), round(r_w * w)
        if out_h < 1 or out_w < 1:
            raise InputError(f"scale {scale} gives an empty output for input size {h}x{w}")
        parts = [low] + ([guide] if guide is not None else [])
        feats = torch.cat(parts + [self.extract(torch.cat(parts, 1))], 1)
        src_h, off_h = source_offsets(h, out_h, r_h, low.device)
        src_w, off_w = source_offsets(w, out_w, r_w, low.device)
        uniq_h, inv_h = torch.unique(off_h, return_inverse=True)
        uniq_w, inv_w = torch.unique(off_w, return_inverse=True)
        kernels = self.filters(uniq_h, uniq_w, 1.0 / (r_h * r_w) ** 0.5)  # (A, B, C_out, D)
        if len(uniq_h) * len(uniq_w) * h * w <= 4 * out_h * out_w:  # few offsets (e.g. integer r): one conv
            out = self._by_conv(feats, kernels, src_h, inv_h, src_w, inv_w)
        else:
            out = self._by_pixel(feats, kernels, src_h, inv_h, src_w, inv_w)
        if self.base == "bicubic":
            out = out + F.interpolate(low, size=(out_h, out_w), mode="bicubic", align_corners=False)
        return out

    def _by_conv(self, feats, kernels, src_h, inv_h, src_w, inv_w) -> torch.Tensor:
        """Every (row offset, column offset) filter as one conv at the input resolution, then each output
        pixel picks its filter's response at its source pixel."""
        n, c_in, k = feats.shape[0], feats.shape[1], self.kernel
        pairs_h, pairs_w = kernels.shape[:2]
        weight = kernels.reshape(pairs_h * pairs_w * self.channels, c_in, k, k)
        responses = F.conv2d(feats, weight, padding=k // 2)  # (N, A*B*C, h, w)
        responses = responses.view(n, pairs_h, pairs_w, self.channels, *feats.shape[2:]).permute(0, 3, 1, 2, 4, 5)
        return responses[:, :, inv_h[:, None], inv_w[None, :], src_h[:, None], src_w[None, :]]  # (N, C, H, W)

    def _by_pixel(self, feats, kernels, src_h, inv_h, src_w, inv_w, chunk_rows: int = 32) -> torch.Tensor:
        """Many distinct offsets (r = p/q with a large p): each output pixel's filter applied to its
        gathered k x k patch, ``chunk_rows`` output rows at a time to bound memory."""
        n, k = feats.shape[0], self.kernel
        patches = F.unfold(feats, k, padding=k // 2).view(n, -1, *feats.shape[2:])
        cols = patches[:, :, :, src_w]  # (N, D, h, W)
        per_col = kernels[:, inv_w]  # (A, W, C, D)
        chunks = []
        for start in range(0, len(src_h), chunk_rows):
            rows = slice(start, start + chunk_rows)
            block = cols[:, :, src_h[rows]]  # (N, D, r, W)
            chunks.append(torch.einsum("ndrw,rwcd->ncrw", block, per_col[inv_h[rows]]))
        return torch.cat(chunks, dim=2)
