"""Mask-based mixing for semi-supervised semantic segmentation: CutMix boxes, ClassMix class masks and
ComplexMix grid-of-class masks (ComplexMix, Chen et al., ICIP 2021, arXiv:2101.10156; ClassMix, Olsson et
al., arXiv:2007.07936; CutMix for segmentation, French et al., arXiv:1906.01916).

* :func:`cutmix_mask` - one random axis-aligned box covering ``area_fraction`` of an (H, W) image.
* :func:`classmix_mask` - ClassMix: floor(|Q|/2) of the classes Q present in a label map, chosen
  uniformly at random; M = 1 on their pixels.
* :func:`complexmix_mask` - ComplexMix: the image is split into a k x k grid of (near-)equal cells and
  the ClassMix choice is made afresh inside every cell; k = 1 is ClassMix (same RNG draws).
* :func:`batch_masks` - one mask per image of a batch of label maps, by method name.
* :func:`mix` - M * a + (1 - M) * b for images (N, C, H, W), label maps (N, H, W) or confidences.
* :func:`confidence_weight` - ClassMix's "threshold_uniform" weight: the fraction of pixels whose
  (mixed) teacher confidence exceeds tau.
* :func:`mix_unlabeled` - teacher probabilities of a batch -> mixed input, pseudo-label and weight,
  pairing image i with image i+1 (cyclically) as ClassMix does.

Reconstructed (R) parts of the ComplexMix card, as named options with the card's default:
``single_class_prob=0.5`` - a cell (or image) holding one class is copied whole with probability 1/2
(floor(1/2) = 0 would never copy it); grid cells are ``floor(i * k / H)`` row / column bands, equal when
k divides H and W; ``k`` may be drawn per iteration with :func:`sample_grid_size` (the card's optional
random-k variant). Ignore pixels (``ignore_index``) are left out of Q and never get M = 1.
"""
from typing import Sequence

import torch

from honed.core.errors import InputError, check_count, check_number
from honed.core.seed import draw_device

METHODS = ("cutmix", "classmix", "complexmix")


def _check_label_map(labels: torch.Tensor, dims: int = 2) -> None:
    if labels.dim() != dims or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InputError(f"labels must be an integer tensor with {dims} dims, got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise InputError("labels must not be empty")


def cutmix_mask(height: int, width: int, area_fraction: float = 0.5, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """CutMix box mask (French et al. arXiv:1906.01916, baseline of ComplexMix arXiv:2101.10156):
    float (height, width) tensor, 1 inside one box of area ~``area_fraction`` * H * W with the image's
    aspect ratio, placed uniformly inside the image, 0 elsewhere. ``area_fraction`` in (0, 1]."""
    check_count(height, "height")
    check_count(width, "width")
    if not 0 < check_number(area_fraction, "area_fraction") <= 1:
        raise InputError(f"area_fraction must lie in (0, 1], got {area_fraction}")
    box_h = max(1, min(height, round(height * area_fraction ** 0.5)))
    box_w = max(1, min(width, round(width * area_fraction ** 0.5)))
    draw = draw_device(generator, "cpu")  # scalar draws on the generator's device
    top = int(torch.randint(0, height - box_h + 1, (1,), generator=generator, device=draw))
    left = int(torch.randint(0, width - box_w + 1, (1,), generator=generator, device=draw))
    mask = torch.zeros(height, width, device=device)
    mask[top:top + box_h, left:left + box_w] = 1.0
    return mask


def choose_classes(present: torch.Tensor, generator: torch.Generator | None = None,
                   single_class_prob: float = 0.5) -> torch.Tensor:
    """ClassMix / ComplexMix (arXiv:2101.10156) class choice: from the 1-D tensor ``present`` of distinct
    classes return floor(|Q|/2) of them uniformly at random (one ``randperm`` draw); a single class is
    returned with probability ``single_class_prob`` (one ``rand`` draw, (R)); an empty Q returns empty."""
    n = present.numel()
    if n == 0:
        return present
    if n == 1:
        keep = float(torch.rand((), generator=generator, device=draw_device(generator, "cpu"))) < single_class_prob
        return present if keep else present[:0]
    order = torch.randperm(n, generator=generator, device=draw_device(generator, "cpu")).to(present.device)
    return present[order[: n // 2]]


def _region_mask(labels: torch.Tensor, generator: torch.Generator | None, single_class_prob: float,
                 ignore_index: int | None) -> torch.Tensor:
    valid = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    chosen = choose_classes(torch.unique(labels[valid]), generator, single_class_prob)
    return (torch.isin(labels, chosen) & valid).float()


def classmix_mask(labels: torch.Tensor, generator: torch.Generator | None = None, single_class_prob: float = 0.5,
                  ignore_index: int | None = None) -> torch.Tensor:
    """ClassMix mask (arXiv:2007.07936; ComplexMix arXiv:2101.10156 with k = 1): ``labels`` is an integer
    (H, W) (pseudo-)label map of image a; returns a float (H, W) mask equal to 1 on the pixels of
    floor(|Q|/2) randomly chosen present classes (see :func:`choose_classes`), 0 elsewhere."""
    _check_label_map(labels)
    check_number(single_class_prob, "single_class_prob")
    return _region_mask(labels, generator, single_class_prob, ignore_index)


def grid_cells(height: int, width: int, k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """ComplexMix (arXiv:2101.10156) k x k grid: long (height, width) tensor of cell ids row * k + col,
    with row = floor(i * k / height) and col = floor(j * k / width) (equal cells when k divides H, W)."""
    check_count(k, "k")
    if k > min(height, width):
        raise InputError(f"grid size k={k} exceeds the image size {height}x{width}")
    rows = torch.arange(height, device=device) * k // height
    cols = torch.arange(width, device=device) * k // width
    return rows[:, None] * k + cols[None, :]


def complexmix_mask(labels: torch.Tensor, k: int = 2, generator: torch.Generator | None = None,
                    single_class_prob: float = 0.5, ignore_index: int | None = None) -> torch.Tensor:
    """ComplexMix mask (arXiv:2101.10156): ``labels`` is an integer (H, W) (pseudo-)label map of image a;
    the image is cut into a k x k grid (:func:`grid_cells`) and in every cell g, scanned row-major, a fresh
    :func:`choose_classes` picks floor(|Q_g|/2) of the classes present in g; M = 1 on the pixels of g
    holding a chosen class. Returns a float (H, W) mask in {0, 1}. k = 1 equals :func:`classmix_mask`."""
    _check_label_map(labels)
    check_number(single_class_prob, "single_class_prob")
    cells = grid_cells(labels.shape[0], labels.shape[1], k, labels.device)
    mask = torch.zeros(labels.shape, device=labels.device)
    for cell in range(k * k):
        inside = cells == cell
        cell_labels = labels[inside]
        mask[inside] = _region_mask(cell_labels, generator, single_class_prob, ignore_index)
    return mask


def sample_grid_size(choices: Sequence[int] = (1, 2, 4, 8), generator: torch.Generator | None = None) -> int:
    """ComplexMix (arXiv:2101.10156) random-complexity variant (R): one grid size k drawn uniformly from
    ``choices`` (positive integers)."""
    if not choices or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in choices):
        raise InputError(f"choices must be a non-empty sequence of positive integers, got {choices!r}")
    return int(choices[int(torch.randint(0, len(choices), (1,), generator=generator,
                                         device=draw_device(generator, "cpu")))])


def batch_masks(labels: torch.Tensor, method: str = "complexmix", k: int = 2, generator: torch.Generator | None = None,
                single_class_prob: float = 0.5, area_fraction: float = 0.5,
                ignore_index: int | None = None) -> torch.Tensor:
    """Mixing masks (ComplexMix, arXiv:2101.10156, and its baselines) for a batch: ``labels`` is an
    integer (N, H, W) pseudo-label batch of the images to paste from; ``method`` in ("cutmix", "classmix",
    "complexmix"). Returns a float (N, H, W) tensor in {0, 1}, masks drawn image by image in order."""
    _check_label_map(labels, dims=3)
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    masks = []
    for image in labels:
        if method == "cutmix":
            masks.append(cutmix_mask(*image.shape, area_fraction, generator, labels.device))
        elif method == "classmix":
            masks.append(classmix_mask(image, generator, single_class_prob, ignore_index))
        else:
            masks.append(complexmix_mask(image, k, generator, single_class_prob, ignore_index))
    return torch.stack(masks)


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ComplexMix / ClassMix (arXiv:2101.10156) mixing: M * a + (1 - M) * b. ``mask`` is (N, H, W) or
    (H, W) with values in {0, 1}; ``a`` and ``b`` have the same shape, either the mask's shape (label maps,
    confidences; integer labels stay integer) or (N, C, H, W) images (mask broadcast over channels)."""
    if a.shape != b.shape:
        raise InputError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError("mask must be binary (values 0 and 1)")
    keep = mask.bool()
    if a.dim() < mask.dim() or a.shape[a.dim() - mask.dim():] != mask.shape:
        if a.dim() != 4 or mask.dim() != 3 or a.shape[:1] + a.shape[2:] != mask.shape:
            raise InputError(f"mask {tuple(mask.shape)} does not match the spatial shape of {tuple(a.shape)}")
        keep = keep.unsqueeze(1)
    return torch.where(keep, a, b)


def confidence_weight(confidence: torch.Tensor, tau: float = 0.968) -> float:
    """ClassMix "threshold_uniform" weight used by ComplexMix (arXiv:2101.10156): the fraction of pixels
    of ``confidence`` (any shape, values in [0, 1], e.g. max softmax probability) strictly above ``tau``."""
    if confidence.numel() == 0 or not bool(torch.isfinite(confidence).all()):
        raise InputError("confidence must be a non-empty finite tensor")
    if not 0 <= check_number(tau, "tau") <= 1:
        raise InputError(f"tau must lie in [0, 1], got {tau}")
    return float((confidence > tau).double().mean())


def mix_unlabeled(images: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor,
                  tau: float = 0.968) -> tuple[torch.Tensor, torch.Tensor, float]:
    """ComplexMix (arXiv:2101.10156) unlabeled branch: ``images`` (N, C, H, W) unaugmented unlabeled
    images, ``teacher_probs`` (N, K, H, W) teacher softmax on them, ``masks`` (N, H, W) built from the
    teacher's argmax of image i. Image i is mixed with image (i + 1) mod N: returns the mixed images
    (N, C, H, W), mixed hard pseudo-labels (N, H, W) long and the confidence weight of the mixed
    confidences (:func:`confidence_weight`)."""
    if images.dim() != 4 or teacher_probs.dim() != 4 or images.shape[0] != teacher_probs.shape[0] \
            or images.shape[2:] != teacher_probs.shape[2:] or masks.shape != teacher_probs.shape[:1] + teacher_probs.shape[2:]:
        raise InputError(f"need images (N, C, H, W), probs (N, K, H, W), masks (N, H, W); got "
                         f"{tuple(images.shape)}, {tuple(teacher_probs.shape)}, {tuple(masks.shape)}")
    confidence, pseudo = teacher_probs.max(dim=1)
    roll = lambda t: torch.roll(t, shifts=-1, dims=0)  # noqa: E731 - partner image (i + 1) mod N
    mixed_images = mix(masks, images, roll(images))
    mixed_labels = mix(masks, pseudo, roll(pseudo))
    weight = confidence_weight(mix(masks, confidence, roll(confidence)), tau)
    return mixed_images, mixed_labels, weight
