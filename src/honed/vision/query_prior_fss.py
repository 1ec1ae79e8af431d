"""Query-prior few-shot segmentation (reconstructed) from "Few-Shot Segmentation with Global and Local
Contrastive Learning" (Liu et al., arXiv:2108.05293; honed card 34): a PFENet-style head that segments a
query from K support images and masks, guided also by support-independent prior maps of the query
(:func:`honed.vision.prior_extractor.prior_maps`). Module internals are reconstructed from the abstract.

* :func:`masked_average_pool`, :func:`support_prototype` - support prototype v (mean over shots).
* :func:`support_query_prior` - PFENet's training-free prior: per query pixel, the max cosine to the
  support's foreground pixels, min-max normalised to [0, 1] (mean over shots).
* :class:`QueryPriorFSS` - [reduced query features (gated by the priors, R), v broadcast, support-query
  prior, conv(prior maps)] -> conv blocks -> 2-class logits at the image size; ``num_priors=0`` is the
  support-only baseline (PFENet-lite).
* :func:`class_index`, :func:`sample_episode` - episodes: a class c, a query and ``shots`` distinct
  support images that hold at least ``min_pixels`` of c.
* :func:`episode_counts`, :func:`fewshot_miou` - the standard FSS mIoU: per class, intersections and
  unions summed over the episodes of that class, IoU = sum I / sum U; mean over classes.

Reconstructed (R), as named options with the card's default: the prior maps enter through a 1x1 conv
(all K maps kept as channels); ``gate=True`` multiplies the reduced query features by sigmoid(conv(prior
features)) before they meet the prototype. Backbone features are given (frozen, precomputed or not):
query (N, C, h, w), supports (N, S, C, h, w), support masks (N, S, H, W) in {0, 1}.
"""
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count


def _check_masks(masks: torch.Tensor, name: str = "support masks") -> None:
    if not isinstance(masks, torch.Tensor) or not bool(((masks == 0) | (masks == 1)).all()):
        raise InputError(f"{name} must hold only 0 and 1")


def masked_average_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masked average pooling (PFENet / arXiv:2108.05293 support prototype): ``features`` (N, C, h, w),
    binary ``masks`` (N, H, W) area-resized to (h, w) as soft weights. Returns (N, C). A mask without
    foreground is refused (its prototype is undefined)."""
    if features.dim() != 4 or masks.dim() != 3 or masks.shape[0] != features.shape[0]:
        raise InputError(f"need features (N, C, h, w) and masks (N, H, W), got {tuple(features.shape)}, "
                         f"{tuple(masks.shape)}")
    _check_masks(masks)
    weights = F.adaptive_avg_pool2d(masks[:, None].to(features.dtype), features.shape[-2:])
    total = weights.sum((1, 2, 3))
    if bool((total <= 0).any()):
        raise InputError(f"support mask(s) {torch.nonzero(total <= 0).flatten().tolist()} have no foreground pixels")
    return (features * weights).sum((2, 3)) / total[:, None]


def _check_support(s_feat: torch.Tensor, s_mask: torch.Tensor) -> None:
    if s_feat.dim() != 5 or s_mask.dim() != 4 or s_feat.shape[:2] != s_mask.shape[:2]:
        raise InputError(f"need support features (N, S, C, h, w) and masks (N, S, H, W), got "
                         f"{tuple(s_feat.shape)}, {tuple(s_mask.shape)}")


def support_prototype(s_feat: torch.Tensor, s_mask: torch.Tensor) -> torch.Tensor:
    """Prototype v (arXiv:2108.05293, PFENet-style): masked average pooling of each of S shots, averaged
    over shots. ``s_feat`` (N, S, C, h, w), ``s_mask`` (N, S, H, W) binary. Returns (N, C)."""
    _check_support(s_feat, s_mask)
    n, shots = s_feat.shape[:2]
    return masked_average_pool(s_feat.flatten(0, 1), s_mask.flatten(0, 1)).view(n, shots, -1).mean(1)


def support_query_prior(q_feat: torch.Tensor, s_feat: torch.Tensor, s_mask: torch.Tensor) -> torch.Tensor:
    """PFENet's prior (baseline guidance of arXiv:2108.05293): for each query pixel, the max cosine
    similarity to the mask-weighted support features, min-max normalised over the query to [0, 1], mean
    over shots. ``q_feat`` (N, C, h, w), ``s_feat`` (N, S, C, h, w), ``s_mask`` (N, S, H, W). Returns (N, 1, h, w)."""
    _check_support(s_feat, s_mask)
    n, shots, c, h, w = s_feat.shape
    weights = F.adaptive_avg_pool2d(s_mask.flatten(0, 1)[:, None].to(s_feat.dtype), (h, w)).view(n, shots, 1, h * w)
    support = F.normalize(s_feat.flatten(3) * weights, dim=2)  # (N, S, C, hw)
    query = F.normalize(q_feat.flatten(2), dim=1)  # (N, C, hw)
    best = torch.einsum("ncq,nscp->nsqp", query, support).amax(-1)  # (N, S, hw)
    low, high = best.amin(-1, keepdim=True), best.amax(-1, keepdim=True)
    return ((best - low) / (high - low).clamp_min(1e-7)).mean(1).view(n, 1, h, w)


class QueryPriorFSS(nn.Module):
    """Query-prior FSS head (arXiv:2108.05293, reconstructed; ``num_priors=0``: PFENet-lite support-only).
    ``forward(q_feat, s_feat, s_mask, priors=None, out_size=None)`` -> logits (N, 2, H, W) (background,
    foreground), H, W = ``out_size`` or the mask size. ``priors`` (N, K, h', w') are resized to (h, w)."""

    def __init__(self, feat_channels: int, num_priors: int = 0, hidden: int = 32, gate: bool = True) -> None:
        super().__init__()
        check_count(feat_channels, "feat_channels")
        check_count(num_priors, "num_priors", minimum=0)
        check_count(hidden, "hidden")
        self.num_priors, self.gate = num_priors, gate and num_priors > 0
        self.reduce = nn.Sequential(nn.Conv2d(feat_channels, hidden, 1), nn.ReLU())
        self.prior_embed = nn.Sequential(nn.Conv2d(num_priors, hidden, 1), nn.ReLU()) if num_priors else None
        self.prior_gate = nn.Conv2d(hidden, hidden, 1) if self.gate else None
        merged = 2 * hidden + 1 + (hidden if num_priors else 0)
        self.merge = nn.Sequential(nn.Conv2d(merged, hidden, 1), nn.ReLU())
        self.blocks = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.classify = nn.Conv2d(hidden, 2, 1)

    def check(self, q_feat: torch.Tensor, s_feat: torch.Tensor, s_mask: torch.Tensor,
              priors: torch.Tensor | None) -> None:
        """One InputError for inputs of the wrong shape, range or prior count (nothing is computed)."""
        _check_support(s_feat, s_mask)
        if q_feat.dim() != 4 or q_feat.shape[0] != s_feat.shape[0] or q_feat.shape[1:] != s_feat.shape[2:]:
            raise InputError(f"query features {tuple(q_feat.shape)} must be (N, C, h, w) like the supports "
                             f"{tuple(s_feat.shape)}")
        _check_masks(s_mask)
        if (priors is None) != (self.num_priors == 0) or (priors is not None and (
                priors.dim() != 4 or priors.shape[:2] != (q_feat.shape[0], self.num_priors))):
            raise InputError(f"this head takes {self.num_priors} prior maps (N, K, h, w); got "
                             f"{None if priors is None else tuple(priors.shape)}")

    def forward(self, q_feat: torch.Tensor, s_feat: torch.Tensor, s_mask: torch.Tensor,
                priors: torch.Tensor | None = None, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        self.check(q_feat, s_feat, s_mask, priors)
        n, shots, c, h, w = s_feat.shape
        query = self.reduce(q_feat)
        support = self.reduce(s_feat.flatten(0, 1)).view(n, shots, -1, h, w)
        proto = support_prototype(support, s_mask)[:, :, None, None].expand(-1, -1, h, w)
        parts = [support_query_prior(q_feat, s_feat, s_mask)]
        if self.prior_embed is not None:
            prior_feat = self.prior_embed(F.interpolate(priors, size=(h, w), mode="bilinear", align_corners=False))
            if self.prior_gate is not None:
                query = query * torch.sigmoid(self.prior_gate(prior_feat))
            parts.append(prior_feat)
        x = self.merge(torch.cat([query, proto] + parts, dim=1))
        logits = self.classify(x + self.blocks(x))
        return F.interpolate(logits, size=out_size or tuple(s_mask.shape[-2:]), mode="bilinear", align_corners=False)


def class_index(labels: torch.Tensor, classes: tuple[int, ...] | list[int],
                min_pixels: int = 16) -> dict[int, torch.Tensor]:
    """For each class c of ``classes``: the (sorted) indices of the label maps (N, H, W) holding at least
    ``min_pixels`` pixels of c - the images an episode of c may use (arXiv:2108.05293 episodes)."""
    if labels.dim() != 3 or labels.dtype.is_floating_point or labels.shape[0] == 0:
        raise InputError(f"labels must be a non-empty integer (N, H, W) map, got {tuple(labels.shape)}")
    counts = {c: (labels == c).flatten(1).sum(1) for c in classes}
    return {c: torch.nonzero(count >= min_pixels).flatten().cpu() for c, count in counts.items()}


def sample_episode(index: dict[int, torch.Tensor], shots: int,
                   generator: torch.Generator) -> tuple[int, int, list[int]]:
    """One episode (arXiv:2108.05293 protocol): a class drawn uniformly among the classes of ``index``
    with at least shots + 1 images, a query image and ``shots`` distinct support images of it (all distinct).
    ``generator``: a CPU torch.Generator. Returns (class, query index, support indices)."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise InputError(f"shots must be an integer >= 1, got {shots!r}")
    usable = [c for c, images in index.items() if len(images) >= shots + 1]
    if not usable:
        raise InputError(f"no class has {shots + 1} images for a {shots}-shot episode")
    c = usable[int(torch.randint(len(usable), (1,), generator=generator))]
    order = index[c][torch.randperm(len(index[c]), generator=generator)[:shots + 1]]
    return c, int(order[0]), [int(i) for i in order[1:]]


def episode_counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode foreground intersection and union (pixel counts, float) of binary (N, H, W) maps."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise InputError(f"pred and target must be (N, H, W) of one shape, got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)}")
    pred, target = pred.bool(), target.bool()
    return (pred & target).flatten(1).sum(1).float(), (pred | target).flatten(1).sum(1).float()


def fewshot_miou(classes: torch.Tensor, intersection: torch.Tensor, union: torch.Tensor) -> float:
    """Standard FSS mIoU (arXiv:2108.05293 evaluation): for each class, IoU = (sum of its episodes'
    intersections) / (sum of their unions); the mean over the classes present in ``classes`` (E,)."""
    if not classes.shape == intersection.shape == union.shape or classes.dim() != 1 or len(classes) == 0:
        raise InputError("classes, intersection and union must be non-empty 1-D tensors of one length")
    ious = [float(intersection[classes == c].sum() / union[classes == c].sum().clamp_min(1e-12))
            for c in torch.unique(classes)]
    return sum(ious) / len(ious)
