"""The prior extractor of query-prior few-shot segmentation (Liu et al., "Few-Shot Segmentation with Global
and Local Contrastive Learning", arXiv:2108.05293; honed card 34, module internals reconstructed): a CNN
trained WITHOUT labels by a global and a local (superpixel) InfoNCE loss, whose superpixel embeddings are
clustered into K fixed priors; a query's prior maps are the cosines of its pixel features with each prior.

* :class:`PriorExtractor` - 4 3x3 conv-BN-ReLU layers (strides 2, 1, 2, 1) + 1x1 projection to ``dim``,
  per-pixel L2-normalised features (N, dim, H/4, W/4); ``global_embedding`` = normalised MLP of the pooled map.
* :func:`slic_segments` (scikit-image SLIC, extra ``data``) / :func:`grid_segments` (the grid-patch
  ablation) - segment id maps (N, H, W) computed ONCE on the original images.
* :func:`random_views` - two crop + flip + photometric views whose segment maps follow the same geometry.
* :func:`region_embeddings`, :func:`local_infonce`, :func:`global_infonce`, :func:`extractor_loss`.
* :func:`fit_priors` (k-means of superpixel embeddings, scikit-learn) and :func:`prior_maps`.

Reconstructed (R), named options with the card's default: tau_global = tau_local = 0.2, lambda_local = 1,
``n_segments`` = 48 (card: ~32-64), K priors from k-means; negatives of the local loss are every other
region of the batch in the other view (and, symmetrised, the reverse); views are nearest-sampled crops of
``scale`` (0.4, 1) of the side with a flip, then colour jitter and blur
(:func:`honed.vision.cycle_self_training.strong_view` without cutout). Inputs: images (N, 3, H, W) in
[0, 1]; the components follow the device of the model and tensors they are given.
"""
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count, require_extra
from honed.core.modes import eval_mode
from honed.vision.cycle_self_training import strong_view
from honed.vision.mix_masks import grid_cells

MODES = ("global_local", "global")


def _check_images(x: torch.Tensor, name: str = "images") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0 or not x.dtype.is_floating_point:
        raise InputError(f"{name} must be a non-empty float (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contain NaN or inf")


def _check_segments(segments: torch.Tensor, images: torch.Tensor) -> None:
    if not isinstance(segments, torch.Tensor) or segments.dtype.is_floating_point or segments.dtype == torch.bool \
            or segments.shape != images.shape[:1] + images.shape[2:] or int(segments.min()) < 0:
        got = tuple(segments.shape) if isinstance(segments, torch.Tensor) else type(segments).__name__
        raise InputError(f"segments must be non-negative integer ids (N, H, W) matching images {tuple(images.shape)}, "
                         f"got {got}")


class PriorExtractor(nn.Module):
    """Prior extractor E (arXiv:2108.05293, reconstructed): (N, C, H, W) -> per-pixel L2-normalised features
    (N, dim, H/4, W/4); H and W divisible by 4. ``global_embedding(x)`` -> (N, dim) normalised."""

    stride = 4

    def __init__(self, in_channels: int = 3, width: int = 16, dim: int = 32) -> None:
        super().__init__()
        layers, c_in = [], in_channels
        for c_out, stride in ((width, 2), (width, 1), (2 * width, 2), (2 * width, 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.trunk, self.project = nn.Sequential(*layers), nn.Conv2d(c_in, dim, 1)
        self.global_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise InputError(f"PriorExtractor input must be (N, C, H, W) with H, W divisible by 4, "
                             f"got {tuple(x.shape)}")
        return self.project(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw(x), dim=1)

    def global_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.global_head(self.raw(x).mean((2, 3))), dim=1)


def slic_segments(images: torch.Tensor, n_segments: int = 48, compactness: float = 10.0) -> torch.Tensor:
    """SLIC superpixels (scikit-image; card 34, arXiv:2108.05293) of RGB ``images`` (N, 3, H, W) in [0, 1]:
    long (N, H, W) ids, 0-based per image, on the images' device. Needs the ``data`` extra."""
    _check_images(images)
    if images.shape[1] != 3:
        raise InputError(f"SLIC needs RGB images (N, 3, H, W), got {tuple(images.shape)}")
    segmentation = require_extra("skimage.segmentation", "data")
    check_count(n_segments, "n_segments")
    arrays = images.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    ids = [segmentation.slic(a, n_segments=n_segments, compactness=compactness, start_label=0) for a in arrays]
    return torch.stack([torch.from_numpy(s).long() for s in ids]).to(images.device)


def grid_segments(n: int, height: int, width: int, cells: int,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The grid-patch ablation of card 34 (arXiv:2108.05293): long (n, height, width) ids of a cells x cells
    grid (:func:`honed.vision.mix_masks.grid_cells`), the same for every image, on ``device`` (None: torch's
    default device)."""
    check_count(n, "n")
    return grid_cells(height, width, cells, device).expand(n, height, width).clone()


def random_views(images: torch.Tensor, segments: torch.Tensor, generator: torch.Generator,
                 scale: tuple[float, float] = (0.4, 1.0), photometric: bool = True) -> tuple[torch.Tensor, ...]:
    """Two random views (arXiv:2108.05293 local contrast, card 34): per image and view a square crop of side
    U(scale) x min(H, W), flipped left-right with probability 1/2, nearest-resampled back to (H, W); the
    SAME pixel map moves the segment ids, so region s of view a and of view b come from the same pixels.
    ``generator``: a CPU torch.Generator. Returns (view_a, seg_a, view_b, seg_b)."""
    _check_images(images)
    _check_segments(segments, images)
    if not 0 < scale[0] <= scale[1] <= 1:
        raise InputError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    n, _, h, w = images.shape
    out = []
    for _ in range(2):
        rows, cols = zip(*(view_indices(h, w, scale, generator) for _ in range(n)))
        rows, cols = torch.stack(rows).to(images.device), torch.stack(cols).to(images.device)
        gather = lambda t: t.gather(-2, rows[:, None, :, None].expand(n, t.shape[1], h, t.shape[-1])) \
            .gather(-1, cols[:, None, None, :].expand(n, t.shape[1], h, w))  # noqa: E731
        view, seg = gather(images), gather(segments[:, None])[:, 0]
        if photometric:
            seed = int(torch.randint(2 ** 62, (1,), generator=generator))
            view = strong_view(view, torch.Generator(images.device).manual_seed(seed), cutout=0)
        out += [view, seg]
    return tuple(out)


def view_indices(height: int, width: int, scale: tuple[float, float],
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Source row (height,) and column (width,) indices of one crop + flip view (nearest, pixel centres)."""
    side = min(height, width) * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=generator)))
    top = float(torch.rand((), generator=generator)) * (height - side)
    left = float(torch.rand((), generator=generator)) * (width - side)
    rows = (top + (torch.arange(height) + 0.5) * side / height).long().clamp(0, height - 1)
    cols = (left + (torch.arange(width) + 0.5) * side / width).long().clamp(0, width - 1)
    return rows, (cols.flip(0) if float(torch.rand((), generator=generator)) < 0.5 else cols)


def region_embeddings(features: torch.Tensor, segments: torch.Tensor,
                      num_regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average of ``features`` (N, D, h, w) over each region of ``segments`` (N, H, W) ids in
    [0, num_regions), H and W multiples of h and w: each feature cell is weighted by the share of its
    pixels in the region. Returns (embeddings (N, R, D), coverage (N, R) in feature cells)."""
    n, _, h, w = features.shape
    if segments.shape[0] != n or segments.shape[-2] % h or segments.shape[-1] % w:
        raise InputError(f"segments {tuple(segments.shape)} must tile the feature map {tuple(features.shape)}")
    one_hot = F.one_hot(segments.long(), num_regions).permute(0, 3, 1, 2).to(features.dtype)
    weights = F.adaptive_avg_pool2d(one_hot, (h, w)).flatten(2)  # (N, R, h*w)
    coverage = weights.sum(-1)
    pooled = torch.einsum("nrp,ndp->nrd", weights, features.flatten(2)) / coverage.clamp_min(1e-6)[..., None]
    return pooled, coverage


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE of matched rows (arXiv:2108.05293 global / local loss): ``a``, ``b`` (M, D)
    L2-normalised, row i of a and row i of b are the positive pair (the diagonal of a b^T / tau), every
    other row the negatives; mean of the a->b and b->a cross-entropies."""
    if a.shape != b.shape or a.dim() != 2 or a.shape[0] < 2:
        raise InputError(f"need two (M >= 2, D) embedding sets of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = a @ b.T / tau
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def global_infonce(g_a: torch.Tensor, g_b: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """Global loss (arXiv:2108.05293): :func:`info_nce` of the two views' image embeddings (N, D)."""
    return info_nce(g_a, g_b, tau)


def local_infonce(feat_a: torch.Tensor, seg_a: torch.Tensor, feat_b: torch.Tensor, seg_b: torch.Tensor,
                  tau: float = 0.2, min_cells: float = 0.5) -> torch.Tensor:
    """Local loss (arXiv:2108.05293, SLIC patches): regions present in both views with at least ``min_cells``
    feature cells in each; positive = the same region in the other view, negatives = every other kept
    region of the batch. Features (N, D, h, w) normalised; segments (N, H, W) ids."""
    regions = int(max(seg_a.max(), seg_b.max())) + 1
    emb_a, cov_a = region_embeddings(feat_a, seg_a, regions)
    emb_b, cov_b = region_embeddings(feat_b, seg_b, regions)
    keep = (cov_a >= min_cells) & (cov_b >= min_cells)
    if int(keep.sum()) < 2:
        raise InputError("fewer than two regions are visible in both views: use larger crops or fewer segments")
    return info_nce(F.normalize(emb_a[keep], dim=1), F.normalize(emb_b[keep], dim=1), tau)


def extractor_loss(extractor: nn.Module, images: torch.Tensor, segments: torch.Tensor, generator: torch.Generator,
                   mode: str = "global_local", lambda_local: float = 1.0, tau_global: float = 0.2,
                   tau_local: float = 0.2, scale: tuple[float, float] = (0.4, 1.0)) -> dict[str, torch.Tensor]:
    """L_E = L_global + lambda_local L_local (arXiv:2108.05293; ``mode="global"`` drops the local term) for
    ``extractor`` with ``forward`` -> normalised pixel features and ``global_embedding`` -> (N, D). ``segments``
    (N, H, W) from :func:`slic_segments` or :func:`grid_segments`. Returns {"loss", "global", "local"}."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    view_a, seg_a, view_b, seg_b = random_views(images, segments, generator, scale)
    both = torch.cat([view_a, view_b])
    glob = global_infonce(*extractor.global_embedding(both).chunk(2), tau_global)
    if mode == "global":
        return {"loss": glob, "global": glob.detach(), "local": torch.zeros(())}
    feat_a, feat_b = extractor(both).chunk(2)
    local = local_infonce(feat_a, seg_a, feat_b, seg_b, tau_local)
    return {"loss": glob + lambda_local * local, "global": glob.detach(), "local": local.detach()}


@torch.no_grad()
def fit_priors(extractor: nn.Module, images: torch.Tensor, segments: torch.Tensor, k: int = 16, seed: int = 0,
               max_regions: int = 20000, batch: int = 200) -> torch.Tensor:
    """Predetermined priors (arXiv:2108.05293, reconstructed): k-means (scikit-learn, ``seed``) of the
    normalised region embeddings of ``extractor`` on un-augmented ``images`` over ``segments`` (at most
    ``max_regions``, a seeded subsample). Returns (k, D) L2-normalised centres, on the images' device."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    _check_images(images)
    _check_segments(segments, images)
    check_count(k, "k")
    regions = int(segments.max()) + 1
    with eval_mode(extractor):
        parts = []
        for i in range(0, len(images), batch):
            emb, cov = region_embeddings(extractor(images[i:i + batch]), segments[i:i + batch], regions)
            parts.append(F.normalize(emb[cov > 0], dim=1))
    points = torch.cat(parts).cpu()
    if len(points) < k:
        raise InputError(f"only {len(points)} regions for k={k} priors")
    pick = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:max_regions]
    with threadpool_limits(1):  # OpenMP threads on a busy machine made k-means ~20x slower
        centres = KMeans(k, n_init=1, random_state=seed).fit(points[pick].double().numpy()).cluster_centers_
    return F.normalize(torch.from_numpy(centres).float(), dim=1).to(images.device)


@torch.no_grad()
def prior_maps(extractor: nn.Module, images: torch.Tensor, priors: torch.Tensor, batch: int = 200) -> torch.Tensor:
    """Prior region maps (arXiv:2108.05293): R_k(x) = cos(E(I)(x), p_k), (N, K, H/4, W/4) in [-1, 1], from
    the frozen ``extractor`` (eval mode, no gradient; every submodule's mode restored) and ``priors`` (K, D)."""
    _check_images(images)
    if priors.dim() != 2:
        raise InputError(f"priors must be (K, D), got {tuple(priors.shape)}")
    priors = F.normalize(priors, dim=1)
    with eval_mode(extractor):
        return torch.cat([torch.einsum("ndhw,kd->nkhw", extractor(images[i:i + batch]), priors).clamp(-1, 1)
                          for i in range(0, len(images), batch)])
