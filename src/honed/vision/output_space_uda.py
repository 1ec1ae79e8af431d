"""Output-space unsupervised domain adaptation for semantic segmentation, as combined for aerial images in
"Domain Adaptation on Semantic Segmentation for Aerial Images" (Chen et al., arXiv:2012.02264): adversarial
alignment of the segmenter's softmax maps (AdaptSegNet, arXiv:1802.10349) plus target entropy minimisation
(ADVENT, arXiv:1811.12833).

Pieces (plain torch, usable with any segmenter that maps (N, 3, H, W) images to (N, C, h, w) logits):
- :class:`OutputSpaceDiscriminator`: fully-convolutional D on softmax maps (N, C, H, W) -> per-location
  "target" logits (N, 1, h', w'). The card's 64-128-256-512-1 (R) is scaled down to 16-32-64-1 here.
- :func:`normalised_entropy_map` / :func:`entropy_loss`: -(1/log C) sum_c p_c log p_c, in [0, 1].
- :func:`generator_adversarial_loss` / :func:`discriminator_loss`: BCE with the documented label
  convention ``SOURCE_LABEL = 0``, ``TARGET_LABEL = 1`` (D's logit says "this map comes from the target").
- :class:`OutputSpaceUDAStep`: one alternating iteration - G step with D frozen (seg CE on source +
  lambda_adv * adversarial + lambda_ent * entropy on target), then D step on DETACHED softmax maps.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_number

SOURCE_LABEL = 0.0  # BCE target for maps of source images (AdaptSegNet's convention)
TARGET_LABEL = 1.0  # BCE target for maps of target images


def check_probability_maps(probs: torch.Tensor, num_classes: int | None = None, atol: float = 1e-4) -> None:
    """Raise InputError unless ``probs`` is (N, C, H, W), finite, in [0, 1] and sums to 1 over C at every
    pixel (softmax maps, arXiv:2012.02264: D and the entropy act on soft labels, not on logits)."""
    if probs.dim() != 4:
        raise InputError(f"probability maps must be (N, C, H, W), got shape {tuple(probs.shape)}")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise InputError(f"probability maps must have {num_classes} channels, got {probs.shape[1]}")
    if not torch.isfinite(probs).all():
        raise InputError("probability maps contain NaN or inf")
    sums = probs.detach().sum(1)
    if probs.min() < -atol or probs.max() > 1 + atol or not torch.allclose(sums, torch.ones_like(sums), atol=atol):
        raise InputError("probability maps must lie in [0, 1] and sum to 1 over channels (pass softmax, not logits)")


def soft_label_maps(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Softmax over classes of (N, C, h, w) logits, bilinearly upsampled first to ``size`` (the input
    size) when it differs (arXiv:2012.02264, step 1). Returns (N, C, H, W) summing to 1 per pixel."""
    if logits.dim() != 4:
        raise InputError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.softmax(1)


def normalised_entropy_map(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy of softmax maps divided by log C (ADVENT, arXiv:1811.12833, as used by
    arXiv:2012.02264): (N, C, H, W) probabilities -> (N, H, W) in [0, 1]; 0 for one-hot, 1 for uniform."""
    check_probability_maps(probs)
    num_classes = probs.shape[1]
    if num_classes < 2:
        raise InputError(f"entropy needs >= 2 classes, got {num_classes}")
    return -torch.special.xlogy(probs, probs).sum(1) / math.log(num_classes)


def entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """Mean normalised entropy over pixels (arXiv:2012.02264 step 3, L_ent); probs (N, C, H, W) -> scalar."""
    return normalised_entropy_map(probs).mean()


class OutputSpaceDiscriminator(nn.Module):
    """Fully-convolutional output-space discriminator (AdaptSegNet arXiv:1802.10349, used by arXiv:2012.02264).

    Input: softmax maps (N, num_classes, H, W) in [0, 1] summing to 1 per pixel (checked). Output: raw
    "target" logits (N, 1, H', W'), one per location. 4x4 convs with stride 2 and padding 1 at ``widths``
    then a last 4x4 stride-2 conv to 1 channel; LeakyReLU(``negative_slope``) between. Card default (R):
    widths 64-128-256-512; the scaled-down reproduction uses (16, 32, 64). Inputs need H, W >= 2 ** (len(widths) + 1).
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (64, 128, 256, 512),
                 negative_slope: float = 0.2, check_inputs: bool = True) -> None:
        super().__init__()
        if num_classes < 2 or not widths or min(widths) < 1:
            raise InputError(f"need num_classes >= 2 and positive widths, got {num_classes}, {widths}")
        check_number(negative_slope, "negative_slope")
        self.num_classes, self.check_inputs = num_classes, check_inputs
        layers: list[nn.Module] = []
        c_in = num_classes
        for width in widths:
            layers += [nn.Conv2d(c_in, width, 4, stride=2, padding=1), nn.LeakyReLU(negative_slope)]
            c_in = width
        layers.append(nn.Conv2d(c_in, 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        self.min_size = 2 ** (len(widths) + 1)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        if self.check_inputs:
            check_probability_maps(probs, self.num_classes)
        if min(probs.shape[-2:]) < self.min_size:
            raise InputError(f"discriminator input must be at least {self.min_size}x{self.min_size}, "
                             f"got {tuple(probs.shape[-2:])}")
        return self.net(probs)


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def generator_adversarial_loss(d_logits_target: torch.Tensor) -> torch.Tensor:
    """L_adv = BCE(D(P_t), SOURCE_LABEL): the segmenter fools D on target maps (arXiv:2012.02264 step 3).
    d_logits_target: D's raw logits (any shape) -> scalar."""
    return _bce(d_logits_target, SOURCE_LABEL)


def discriminator_loss(d_logits_source: torch.Tensor, d_logits_target: torch.Tensor) -> torch.Tensor:
    """L_D = (BCE(D(P_s), SOURCE_LABEL) + BCE(D(P_t), TARGET_LABEL)) / 2 (arXiv:2012.02264 step 4; the
    halving is (R)). Raw logits of any shape -> scalar. Feed D maps computed from DETACHED outputs."""
    return 0.5 * (_bce(d_logits_source, SOURCE_LABEL) + _bce(d_logits_target, TARGET_LABEL))


def confident_pseudo_label_loss(logits_target: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """Baseline the paper argues against (arXiv:2012.02264): CE on target pixels whose max softmax
    exceeds ``threshold``, labelled with their own argmax (no gradient through the labels).
    logits (N, C, H, W) -> scalar, averaged over ALL pixels (0 when none is confident)."""
    if logits_target.dim() != 4:
        raise InputError(f"logits must be (N, C, H, W), got shape {tuple(logits_target.shape)}")
    if not 0 <= threshold < 1:
        raise InputError(f"threshold must lie in [0, 1), got {threshold}")
    with torch.no_grad():
        confidence, pseudo = logits_target.softmax(1).max(1)
        keep = (confidence > threshold).float()
    return (F.cross_entropy(logits_target, pseudo, reduction="none") * keep).mean()


def poly_learning_rate(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """Poly decay base_lr * (1 - it / max_it) ** power (arXiv:2012.02264 step 6, (R) DeepLab schedule)."""
    return base_lr * (1 - min(iteration, max_iterations) / max(1, max_iterations)) ** power


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze (False) or unfreeze (True) every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(flag)


class OutputSpaceUDAStep:
    """One alternating iteration of output-space UDA (arXiv:2012.02264 steps 3-5).

    ``segmenter``: (N, 3, H, W) -> logits (N, C, h, w); ``discriminator``: e.g. OutputSpaceDiscriminator
    (only needed when ``lambda_adv > 0``). G step (D frozen: requires_grad off, so D gets no gradient):
    L_G = CE(G(x_s), y_s) + lambda_adv * BCE(D(P_t), SOURCE_LABEL) + lambda_ent * mean normalised entropy
    of P_t [+ lambda_pseudo * confident pseudo-label CE, the self-training baseline]. D step: L_D on
    P_s.detach() and P_t.detach(), so no gradient reaches G. ``joint_forward`` (default) sends source and
    target through G as ONE batch: with BatchNorm trained from scratch, separate passes make the eval-time
    running statistics a source/target mixture no training batch ever had (measured: source mIoU fell
    from 79 to ~10). Set False for frozen-BN / pretrained segmenters. Card defaults (R): lambdas 1e-3.
    """

    def __init__(self, segmenter: nn.Module, g_optimizer: torch.optim.Optimizer,
                 discriminator: nn.Module | None = None, d_optimizer: torch.optim.Optimizer | None = None,
                 lambda_adv: float = 1e-3, lambda_ent: float = 1e-3, lambda_pseudo: float = 0.0,
                 pseudo_threshold: float = 0.9, ignore_index: int = -100, joint_forward: bool = True) -> None:
        for name, value in (("lambda_adv", lambda_adv), ("lambda_ent", lambda_ent), ("lambda_pseudo", lambda_pseudo)):
            check_number(value, name)
        if lambda_adv > 0 and (discriminator is None or d_optimizer is None):
            raise InputError("lambda_adv > 0 needs a discriminator and its own optimizer")
        self.segmenter, self.g_optimizer = segmenter, g_optimizer
        self.discriminator, self.d_optimizer = discriminator, d_optimizer
        self.lambda_adv, self.lambda_ent, self.lambda_pseudo = lambda_adv, lambda_ent, lambda_pseudo
        self.pseudo_threshold, self.ignore_index = pseudo_threshold, ignore_index
        self.joint_forward = joint_forward

    def generator_step(self, x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor | None
                       ) -> tuple[dict[str, float], torch.Tensor | None, torch.Tensor | None]:
        """Update G with D frozen; returns the loss terms and the (attached) soft maps P_s, P_t."""
        if x_s.dim() != 4 or y_s.shape != (x_s.shape[0], *x_s.shape[-2:]):
            raise InputError(f"need x_s (N, 3, H, W) and y_s (N, H, W), got {tuple(x_s.shape)}, {tuple(y_s.shape)}")
        if self.discriminator is not None:
            set_requires_grad(self.discriminator, False)
        size = tuple(x_s.shape[-2:])
        use_target = x_t is not None and bool(self.lambda_adv or self.lambda_ent or self.lambda_pseudo)
        if use_target and self.joint_forward:
            logits_s, logits_t = self.segmenter(torch.cat([x_s, x_t])).split([len(x_s), len(x_t)])
        else:
            logits_s = self.segmenter(x_s)
            logits_t = self.segmenter(x_t) if use_target else None
        if tuple(logits_s.shape[-2:]) != size:
            logits_s = F.interpolate(logits_s, size=size, mode="bilinear", align_corners=False)
        seg = F.cross_entropy(logits_s, y_s, ignore_index=self.ignore_index)
        terms = {"seg": seg}
        probs_s = logits_s.softmax(1)
        probs_t = None
        if use_target:
            if tuple(logits_t.shape[-2:]) != tuple(x_t.shape[-2:]):
                logits_t = F.interpolate(logits_t, size=x_t.shape[-2:], mode="bilinear", align_corners=False)
            probs_t = logits_t.softmax(1)
            if self.lambda_adv:
                terms["adv"] = self.lambda_adv * generator_adversarial_loss(self.discriminator(probs_t))
            if self.lambda_ent:
                terms["ent"] = self.lambda_ent * entropy_loss(probs_t)
            if self.lambda_pseudo:
                terms["pseudo"] = self.lambda_pseudo * confident_pseudo_label_loss(logits_t, self.pseudo_threshold)
        total = sum(terms.values())
        self.g_optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.g_optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}, probs_s, probs_t

    def discriminator_step(self, probs_s: torch.Tensor, probs_t: torch.Tensor) -> float:
        """Update D on detached soft maps (no gradient into G); returns L_D."""
        set_requires_grad(self.discriminator, True)
        loss = discriminator_loss(self.discriminator(probs_s.detach()), self.discriminator(probs_t.detach()))
        self.d_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.d_optimizer.step()
        return float(loss.detach())

    def __call__(self, x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor | None = None) -> dict[str, float]:
        """G step then (when adversarial) D step; x_s (N, 3, H, W), y_s (N, H, W) int64, x_t (M, 3, H, W)."""
        terms, probs_s, probs_t = self.generator_step(x_s, y_s, x_t)
        if self.lambda_adv and probs_t is not None:
            terms["disc"] = self.discriminator_step(probs_s, probs_t)
        return terms
