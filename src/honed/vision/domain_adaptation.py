"""Drop-in unsupervised domain-adaptation losses and the unified objective of "A Compact DNN: Approaching
GoogLeNet-Level Accuracy of Classification and Domain Adaptation" (Wu et al., CVPR 2017, arXiv:1703.04071).

The paper aligns source and target three ways at once; the card's standard instantiations (R: not
verified against the paper's equations) are:

* domain invariance - a domain classifier ``d`` on features through a gradient-reversal layer (DANN):
  ``L_adv = BCE(d(GRL(f_s)), 1) + BCE(d(GRL(f_t)), 0)``, GRL coefficient ``2 / (1 + exp(-10 p)) - 1``;
* divergence reduction - multi-kernel MMD^2 (DAN) with Gaussian kernels at {1/4, 1/2, 1, 2, 4} x the
  median pairwise distance;
* label-prediction adaptation - the mean prediction entropy on target, switched on after a warm-up.

``L = L_cls + lambda_d L_adv + lambda_m L_mmd + lambda_e L_ent`` (defaults 1, 1, 0.1). Setting a weight to
0 drops that term, so source-only, DANN, DAN and entropy-only are the same module with other weights.
:func:`domain_classifier_accuracy` is the A-distance proxy on frozen features.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count, check_number

MMD_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def check_features(x: torch.Tensor, name: str) -> None:
    """Raise InputError unless ``x`` is a finite float tensor (N, D) with N >= 1."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a (N, D) tensor with N >= 1, got {shape}")
    if not torch.is_floating_point(x) or not torch.isfinite(x).all():
        raise InputError(f"{name} must be finite floats")


def check_progress(progress: float) -> float:
    """Return training progress p as a float or raise InputError unless 0 <= p <= 1."""
    p = check_number(progress, "progress")
    if p > 1:
        raise InputError(f"progress must lie in [0, 1], got {progress!r}")
    return p


def grl_coefficient(progress: float, gamma: float = 10.0) -> float:
    """DANN schedule used by the Compact DNN DA loss (arXiv:1703.04071): ``2 / (1 + exp(-gamma p)) - 1``
    for training progress p in [0, 1] (0 at p = 0, -> 1 as p -> 1)."""
    return 2.0 / (1.0 + math.exp(-gamma * check_progress(progress))) - 1.0


def annealed_learning_rate(lr0: float, progress: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """DANN learning-rate schedule of the Compact DNN card (arXiv:1703.04071): ``lr0 / (1 + alpha p)^beta``."""
    return check_number(lr0, "lr0", strict=True) / (1.0 + alpha * check_progress(progress)) ** beta


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coefficient * grad, None


def reverse_gradient(x: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """Gradient reversal (DANN; Compact DNN DA, arXiv:1703.04071): identity forward, gradient times
    ``-coefficient`` backward. Any shape; ``coefficient >= 0``."""
    return _ReverseGradient.apply(x, check_number(coefficient, "coefficient"))


class GradientReversal(nn.Module):
    """Gradient-reversal layer (Compact DNN DA, arXiv:1703.04071): :func:`reverse_gradient` with a
    settable ``coefficient`` (update it each step from :func:`grl_coefficient`)."""

    def __init__(self, coefficient: float = 1.0) -> None:
        super().__init__()
        self.coefficient = check_number(coefficient, "coefficient")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.coefficient)


class DomainClassifier(nn.Module):
    """Domain discriminator d (Compact DNN DA, arXiv:1703.04071): MLP ``D -> hidden -> hidden -> 1``
    with ReLU; (N, D) features -> (N,) logits of "source"."""

    def __init__(self, feature_dim: int, hidden: int = 64) -> None:
        super().__init__()
        check_count(feature_dim, "feature_dim")
        check_count(hidden, "hidden")
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_features(features, "features")
        return self.net(features).squeeze(1)


def adversarial_domain_loss(discriminator: nn.Module, source: torch.Tensor, target: torch.Tensor,
                            coefficient: float) -> torch.Tensor:
    """DANN loss (Compact DNN DA, arXiv:1703.04071): ``BCE(d(GRL(f_s)), 1) + BCE(d(GRL(f_t)), 0)`` (each a
    batch mean). Features (N_s, D), (N_t, D); the feature extractor receives ``-coefficient`` times the
    discriminator's gradient."""
    check_features(source, "source features")
    check_features(target, "target features")
    logit_s = discriminator(reverse_gradient(source, coefficient))
    logit_t = discriminator(reverse_gradient(target, coefficient))
    return (F.binary_cross_entropy_with_logits(logit_s, torch.ones_like(logit_s))
            + F.binary_cross_entropy_with_logits(logit_t, torch.zeros_like(logit_t)))


def multi_kernel_mmd(source: torch.Tensor, target: torch.Tensor,
                     multipliers: tuple[float, ...] = MMD_MULTIPLIERS) -> torch.Tensor:
    """Multi-kernel MMD^2 (DAN; Compact DNN DA, arXiv:1703.04071), biased V-statistic, >= 0.

    ``k(a, b) = sum_m exp(-||a - b||^2 / (2 (m * sigma)^2))`` with sigma the median pairwise distance of
    the pooled sample (detached; the median heuristic). Features (N_s, D), (N_t, D); returns a scalar
    ``mean K_ss + mean K_tt - 2 mean K_st``, exactly 0 for identical batches.
    """
    check_features(source, "source features")
    check_features(target, "target features")
    if source.shape[1] != target.shape[1]:
        raise InputError(f"feature dims differ: {source.shape[1]} vs {target.shape[1]}")
    if not multipliers or any(not m > 0 for m in multipliers):
        raise InputError(f"multipliers must be positive, got {multipliers!r}")
    pooled = torch.cat([source, target])
    sq = torch.cdist(pooled, pooled).pow(2)
    off_diagonal = sq.detach()[~torch.eye(len(pooled), dtype=torch.bool, device=pooled.device)]
    sigma2 = off_diagonal.sqrt().median().pow(2).clamp_min(1e-12) if off_diagonal.numel() else sq.new_tensor(1.0)
    kernel = sum(torch.exp(-sq / (2 * m * m * sigma2)) for m in multipliers)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of ``softmax(logits)`` over the batch (Compact DNN label-prediction
    adaptation, arXiv:1703.04071). Logits (N, C) -> scalar in [0, log C]."""
    check_features(logits, "logits")
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def _check_batch(source_features: torch.Tensor, target_features: torch.Tensor, source_logits: torch.Tensor,
                 target_logits: torch.Tensor, source_labels: torch.Tensor) -> None:
    """InputError unless features and logits are finite (N, D) / (N, C) tensors with matching N and C
    and the labels (N_s,) ints in [0, C)."""
    for name, value in (("source features", source_features), ("target features", target_features),
                        ("source logits", source_logits), ("target logits", target_logits)):
        check_features(value, name)
    if len(source_logits) != len(source_features) or len(target_logits) != len(target_features) \
            or source_logits.shape[1] != target_logits.shape[1]:
        raise InputError(f"logits must match their features in rows and each other in classes, got source "
                         f"{tuple(source_logits.shape)} for {len(source_features)} rows, target "
                         f"{tuple(target_logits.shape)} for {len(target_features)} rows")
    classes = source_logits.shape[1]
    if not isinstance(source_labels, torch.Tensor) or source_labels.shape != (len(source_logits),) or \
            torch.is_floating_point(source_labels) or ((source_labels < 0) | (source_labels >= classes)).any():
        raise InputError(f"source_labels must be {len(source_logits)} integer labels in [0, {classes})")


class UnifiedDALoss(nn.Module):
    """Unified DA objective of Compact DNN (arXiv:1703.04071), card step 5 (instantiation R):
    ``CE + lambda_d L_adv + lambda_m MK-MMD^2 + lambda_e H_target`` on a half-source, half-target batch.

    Call with source features (N_s, D) and logits (N_s, C), target features (N_t, D) and logits (N_t, C),
    source labels (N_s,) and training progress p in [0, 1]. The entropy term is off while
    ``p < entropy_warmup``; the GRL coefficient follows :func:`grl_coefficient`. ``mmd_on_logits`` adds
    the MK-MMD of the logits (the card's optional second layer). Returns a dict of the scalar terms
    ``total, cls, adv, mmd, ent`` (unused terms are 0). The discriminator lives here: put this module's
    parameters in the optimizer.
    """

    def __init__(self, feature_dim: int, adversarial: float = 1.0, mmd: float = 1.0, entropy: float = 0.1,
                 entropy_warmup: float = 0.2, mmd_multipliers: tuple[float, ...] = MMD_MULTIPLIERS,
                 mmd_on_logits: bool = False, discriminator_hidden: int = 64) -> None:
        super().__init__()
        self.weights = {"adv": check_number(adversarial, "adversarial"), "mmd": check_number(mmd, "mmd"),
                        "ent": check_number(entropy, "entropy")}
        self.entropy_warmup = check_progress(entropy_warmup)
        self.mmd_multipliers, self.mmd_on_logits = tuple(mmd_multipliers), mmd_on_logits
        self.discriminator = DomainClassifier(feature_dim, discriminator_hidden) if adversarial > 0 else None

    def forward(self, source_features: torch.Tensor, target_features: torch.Tensor,
                source_logits: torch.Tensor, target_logits: torch.Tensor, source_labels: torch.Tensor,
                progress: float) -> dict[str, torch.Tensor]:
        p = check_progress(progress)
        _check_batch(source_features, target_features, source_logits, target_logits, source_labels)
        zero = source_logits.new_zeros(())
        terms = {"cls": F.cross_entropy(source_logits, source_labels), "adv": zero, "mmd": zero, "ent": zero}
        if self.discriminator is not None:
            terms["adv"] = adversarial_domain_loss(self.discriminator, source_features, target_features,
                                                   grl_coefficient(p))
        if self.weights["mmd"] > 0:
            terms["mmd"] = multi_kernel_mmd(source_features, target_features, self.mmd_multipliers)
            if self.mmd_on_logits:
                terms["mmd"] = terms["mmd"] + multi_kernel_mmd(source_logits, target_logits, self.mmd_multipliers)
        if self.weights["ent"] > 0 and p >= self.entropy_warmup:
            terms["ent"] = prediction_entropy(target_logits)
        terms["total"] = terms["cls"] + sum(self.weights[k] * terms[k] for k in self.weights)
        return terms


@torch.enable_grad()
def domain_classifier_accuracy(source: torch.Tensor, target: torch.Tensor, steps: int = 300,
                               lr: float = 0.05, seed: int = 0) -> dict[str, float]:
    """A-distance proxy (Compact DNN DA evaluation, arXiv:1703.04071; Ben-David et al.): a logistic
    regression on frozen, standardised features tells source from target; trained on a random half of
    each domain (balanced) with Adam for ``steps`` full-batch steps, scored on the other half.

    Features (N_s, D), (N_t, D), N >= 4 each. Returns ``{"accuracy": acc, "a_distance": 2 (1 - 2 err)}``
    with err = 1 - acc (0.5 accuracy = indistinguishable, a_distance 0; 1.0 = separable, a_distance 2).
    """
    check_features(source, "source features")
    check_features(target, "target features")
    n = min(len(source), len(target))
    if n < 4:
        raise InputError(f"need >= 4 samples per domain, got {n}")
    gen = torch.Generator().manual_seed(seed)
    s = source.detach().cpu()[torch.randperm(len(source), generator=gen)[:n]]
    t = target.detach().cpu()[torch.randperm(len(target), generator=gen)[:n]]
    half = n // 2
    x_fit, x_eval = torch.cat([s[:half], t[:half]]), torch.cat([s[half:], t[half:]])
    y_fit = torch.cat([torch.ones(half), torch.zeros(half)])
    y_eval = torch.cat([torch.ones(n - half), torch.zeros(n - half)])
    mean, std = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    x_fit, x_eval = (x_fit - mean) / std, (x_eval - mean) / std
    probe = nn.Linear(x_fit.shape[1], 1)
    with torch.no_grad():
        probe.weight.zero_(), probe.bias.zero_()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(check_count(steps, "steps")):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(probe(x_fit).squeeze(1), y_fit).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float(((probe(x_eval).squeeze(1) > 0).float() == y_eval).float().mean())
    return {"accuracy": accuracy, "a_distance": 2.0 * (1.0 - 2.0 * (1.0 - accuracy))}
