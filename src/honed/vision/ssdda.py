"""SSDDA: two-step semi-supervised dual-domain adaptation for semantic segmentation (Chen et al. 2021,
"Semi-Supervised Domain Adaptation for Semantic Segmentation"; title from an abstract index, arXiv id and
venue not verified; honed card 05). Many labeled source images, a few labeled target images and many
unlabeled target images; two mixing modules close the cross-domain and the intra-domain gap.

* :func:`inter_domain_mix` - step 1's image-level mixing: a mask M from each source image's ground-truth
  map (ClassMix: floor(n/2) of its n present classes, :func:`honed.vision.mix_masks.classmix_mask`; or a
  CutMix box), x_mix = M x_s + (1 - M) x_t and y_mix = M y_s + (1 - M) y_t (ground truth on both sides).
* :func:`inter_domain_loss` - step 1's loss L1 = CE(f(x_s), y_s) + CE(f(x_t), y_t) + CE(f(x_mix), y_mix).
* :class:`IntraDomainMixing` - step 2: a separate student-teacher pair initialised from the step-1 model
  (teacher = EMA of the student); the teacher labels two unlabeled target images (no gradient, un-augmented),
  a ClassMix mask from the first pseudo-label map mixes images and pseudo-labels, and the student fits
  L2 = CE(S(x_tl), y_tl) + lambda_u w CE(S(aug(x_mix)), y_mix), w = fraction of mixed confidences > tau.

Reconstructed (R) steps of the card, as named options with the card's default: step 1's mask
(``mask="classmix"``; ``"cutmix"`` = a box of ``area_fraction`` 0.5); a source map with fewer than two
classes gets a CutMix box (``single_class="cutmix"``; ``"classmix"`` keeps ClassMix's own rule, which
copies the whole image or nothing); tau = 0.968 (ClassMix convention); the step-2 supervised loss uses the
labeled target only unless source images are passed to :meth:`IntraDomainMixing.step`; the mixed image is
colour-jittered and blurred (``augment="jitter_blur"``, :func:`honed.vision.cycle_self_training.strong_view`
without cutout; ``"none"`` skips it).

Shapes: images (N, C, H, W) float, finite; label maps (N, H, W) integers in [0, num_classes). The
components follow the device of the model and tensors they are given.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.data.segmentation_scenes import check_label_maps
from honed.sequence.mean_teacher import ema_update
from honed.vision.cycle_self_training import strong_view
from honed.vision.mix_masks import classmix_mask, cutmix_mask, mix, mix_unlabeled

MASKS = ("classmix", "cutmix")
SINGLE_CLASS = ("cutmix", "classmix")
AUGMENTS = ("jitter_blur", "none")


def _check_pair(x: torch.Tensor, y: torch.Tensor, num_classes: int | None, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0 or not x.dtype.is_floating_point:
        raise InputError(f"{name} images must be a non-empty float (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} images contain NaN or inf")
    check_label_maps(y, num_classes if num_classes is not None else int(y.max()) + 1, x, f"{name} labels")


def source_masks(y_s: torch.Tensor, generator: torch.Generator | None = None, mask: str = "classmix",
                 single_class: str = "cutmix", area_fraction: float = 0.5) -> torch.Tensor:
    """SSDDA (Chen et al. 2021, card 05) step-1 masks: float (N, H, W) in {0, 1}, one per source label map
    of ``y_s`` (N, H, W), drawn image by image in order: ClassMix of the ground truth (``mask="classmix"``)
    or a CutMix box; a map with fewer than two classes gets a CutMix box when ``single_class="cutmix"`` (R)."""
    if mask not in MASKS or single_class not in SINGLE_CLASS:
        raise InputError(f"mask must be one of {MASKS} and single_class one of {SINGLE_CLASS}, "
                         f"got {mask!r}, {single_class!r}")
    out = []
    for labels in y_s:
        box = mask == "cutmix" or (single_class == "cutmix" and torch.unique(labels).numel() < 2)
        out.append(cutmix_mask(*labels.shape, area_fraction, generator, labels.device) if box
                   else classmix_mask(labels, generator))
    return torch.stack(out)


def inter_domain_mix(x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor, y_t: torch.Tensor,
                     generator: torch.Generator | None = None, mask: str = "classmix", single_class: str = "cutmix",
                     area_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SSDDA (Chen et al. 2021, card 05) step-1 cross-domain mixing: source image i is pasted onto labeled
    target image i where its mask is 1 (:func:`source_masks`). ``x_s``/``x_t`` (N, C, H, W), ``y_s``/``y_t``
    (N, H, W) ground truth. Returns (x_mix (N, C, H, W), y_mix (N, H, W) long, masks (N, H, W))."""
    _check_pair(x_s, y_s, None, "source")
    _check_pair(x_t, y_t, None, "target")
    if x_s.shape != x_t.shape:
        raise InputError(f"source and target batches must have the same shape, got {tuple(x_s.shape)} and "
                         f"{tuple(x_t.shape)}")
    masks = source_masks(y_s, generator, mask, single_class, area_fraction)
    return mix(masks, x_s, x_t), mix(masks, y_s.long(), y_t.long()), masks


def inter_domain_loss(model: nn.Module, x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor, y_t: torch.Tensor,
                      num_classes: int, generator: torch.Generator | None = None, mask: str = "classmix",
                      single_class: str = "cutmix") -> torch.Tensor:
    """SSDDA (Chen et al. 2021, card 05) step-1 loss L1 = CE(f(x_s), y_s) + CE(f(x_t), y_t) + CE(f(x_mix),
    y_mix) for a segmentation ``model`` mapping (N, C, H, W) to logits (N, num_classes, H, W). Labels are
    checked against ``num_classes`` before the model runs (a refused call leaves BN statistics alone)."""
    _check_pair(x_s, y_s, num_classes, "source")
    _check_pair(x_t, y_t, num_classes, "target")
    x_mix, y_mix, _ = inter_domain_mix(x_s, y_s, x_t, y_t, generator, mask, single_class)
    logits = model(torch.cat([x_s, x_t, x_mix]))
    n = len(x_s)
    return (F.cross_entropy(logits[:n], y_s.long()) + F.cross_entropy(logits[n:2 * n], y_t.long())
            + F.cross_entropy(logits[2 * n:], y_mix))


class IntraDomainMixing:
    """SSDDA (Chen et al. 2021, card 05) step 2 around a user's segmentation ``student`` (initialised from
    the step-1 model; pass a copy to keep that model) and a FRESH ``optimizer`` over its parameters. The
    teacher is a deep copy of the student at construction, frozen (``requires_grad=False``, eval mode) and
    moved only by EMA: theta_T <- ema_decay theta_T + (1 - ema_decay) theta_S. ``tau``: confidence bar of
    the unlabeled weight; ``unsup_weight``: lambda_u; ``augment`` (R): "jitter_blur" or "none"."""

    def __init__(self, student: nn.Module, optimizer: torch.optim.Optimizer, num_classes: int, ema_decay: float = 0.99,
                 tau: float = 0.968, unsup_weight: float = 1.0, augment: str = "jitter_blur") -> None:
        if not 0 <= ema_decay <= 1 or not 0 <= tau <= 1 or unsup_weight < 0 or num_classes < 2:
            raise InputError("need 0 <= ema_decay <= 1, 0 <= tau <= 1, unsup_weight >= 0 and num_classes >= 2")
        if augment not in AUGMENTS:
            raise InputError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.student, self.optimizer, self.num_classes = student, optimizer, num_classes
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)
        self.ema_decay, self.tau, self.unsup_weight, self.augment = ema_decay, tau, unsup_weight, augment

    @torch.no_grad()
    def pseudo_probs(self, u: torch.Tensor) -> torch.Tensor:
        """Teacher softmax (N, K, H, W) on the un-augmented unlabeled images ``u``; carries no gradient."""
        self.teacher.eval()
        return self.teacher(u).softmax(1)

    def mixed_batch(self, u: torch.Tensor, generator: torch.Generator | None = None):
        """Step 2's unlabeled branch: teacher pseudo-labels of ``u`` (N >= 2), ClassMix masks from the
        pseudo-label map of image i, image i mixed with image (i + 1) mod N. Returns (x_mix, y_mix, w)."""
        probs = self.pseudo_probs(u)
        masks = torch.stack([classmix_mask(p, generator) for p in probs.argmax(1)])
        return mix_unlabeled(u, probs, masks, self.tau)

    def step(self, x_l: torch.Tensor, y_l: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None,
             x_s: torch.Tensor | None = None, y_s: torch.Tensor | None = None) -> dict[str, float]:
        """One step 2 iteration: labeled target ``x_l``/``y_l`` (and, optionally (R), source ``x_s``/``y_s``),
        unlabeled target ``u`` (N >= 2, same C, H, W); ``generator`` is a CPU torch.Generator (masks and
        augmentation draws; the student sees all parts in one forward pass). Returns {"loss", "supervised",
        "unsupervised", "weight"}."""
        _check_pair(x_l, y_l, self.num_classes, "labeled target")
        if (x_s is None) != (y_s is None):
            raise InputError("give both source images and source labels, or neither")
        if x_s is not None:
            _check_pair(x_s, y_s, self.num_classes, "source")
        if not isinstance(u, torch.Tensor) or u.dim() != 4 or u.shape[0] < 2 or u.shape[1:] != x_l.shape[1:]:
            raise InputError(f"unlabeled images must be (N >= 2, C, H, W) like the labeled ones "
                             f"{tuple(x_l.shape[1:])}, "
                             f"got {tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
        if not torch.isfinite(u).all():
            raise InputError("unlabeled images contain NaN or inf")
        x_mix, y_mix, weight = self.mixed_batch(u, generator)
        if self.augment == "jitter_blur":  # strong_view draws on the images' device: a generator there
            seed = int(torch.randint(2 ** 62, (1,), generator=generator))
            x_mix = strong_view(x_mix, torch.Generator(u.device).manual_seed(seed), cutout=0)
        parts = [(x_l, y_l.long())] + ([(x_s, y_s.long())] if x_s is not None else []) + [(x_mix, y_mix)]
        logits = self.student(torch.cat([x for x, _ in parts])).split([len(x) for x, _ in parts])
        losses = [F.cross_entropy(z, y) for z, (_, y) in zip(logits, parts)]
        sup, unsup = sum(losses[:-1]), losses[-1]
        loss = sup + self.unsup_weight * weight * unsup
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        ema_update(self.teacher, self.student, self.ema_decay)
        return {"loss": float(loss.detach()), "supervised": float(sup.detach()), "unsupervised": float(unsup.detach()),
                "weight": weight}
