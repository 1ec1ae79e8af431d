"""Gradient-sign and projected-gradient attacks on cross-entropy: FGSM, I-FGSM, MI-FGSM, DI-FGSM and
PGD (L-inf and L2).

Positional hyper-parameters follow torchattacks' order, so ``PGD(model, 0.1)`` means eps = 0.1:
FGSM(model, eps); IFGSM(model, eps, alpha, steps); MIFGSM(model, eps, alpha, steps, decay);
DIFGSM(model, eps, alpha, steps, decay, resize_rate, diversity_prob); PGD / PGDL2(model, eps, alpha,
steps, random_start). The rest (``generator``, ``targeted``, ...) are keyword-only.

All take x float (N, ...) in [0, 1] and y int64 (N,) (targets when ``targeted``) and return x_adv in
[0, 1] inside the eps-ball around x. The loss is the per-example cross-entropy, summed over the batch
(so each example's gradient does not depend on the batch size); targeted attacks descend the
cross-entropy of the target instead of ascending that of the true label.
"""
import torch
import torch.nn.functional as F

from honed.core.errors import InputError
from honed.core.seed import draw_device
from honed.robust.attacks.base import Attack, check_count, check_number

TINY = 1e-12


def _per_example_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """The p-norm of each example of ``t`` (N, ...), shaped (N, 1, ..., 1) for broadcasting."""
    return t.flatten(1).norm(p=p, dim=1).clamp_min(TINY).view(-1, *([1] * (t.dim() - 1)))


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the L-inf ball of radius eps around x intersected with [0, 1]."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale x_adv - x into the L2 ball of radius eps, then clip to [0, 1] (clipping towards the
    box moves every coordinate towards x, so the result stays in the ball)."""
    delta = x_adv - x
    delta = delta * (eps / _per_example_norm(delta, 2)).clamp(max=1.0)
    return (x + delta).clamp(0, 1)


class _CrossEntropyAttack(Attack):
    """Shared pieces: hyper-parameter checks and the signed cross-entropy gradient."""

    def __init__(self, model, *, eps: float, targeted: bool = False) -> None:
        super().__init__(model, targeted=targeted)
        self.eps = check_number(eps, "eps")

    def loss_grad(self, x_adv: torch.Tensor, y: torch.Tensor, transform=None) -> torch.Tensor:
        """Gradient of the attack's ascent objective at x_adv: +CE(y) untargeted, -CE(target)."""
        x_adv = x_adv.detach().requires_grad_(True)
        logits = self.logits(x_adv if transform is None else transform(x_adv))
        loss = F.cross_entropy(logits, y, reduction="sum")
        return self.input_grad(-loss if self.targeted else loss, x_adv)


class FGSM(_CrossEntropyAttack):
    """Fast Gradient Sign Method (Explaining and Harnessing Adversarial Examples, arXiv:1412.6572).

    x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1); one forward and one backward pass.
    """

    def __init__(self, model, eps: float = 8 / 255, *, targeted: bool = False) -> None:
        super().__init__(model, eps=eps, targeted=targeted)

    def perturb(self, x, y):
        self._stats.iterations = 1
        return (x + self.eps * self.loss_grad(x, y).sign()).clamp(0, 1)


class IFGSM(_CrossEntropyAttack):
    """Iterative FGSM / BIM (Adversarial examples in the physical world, arXiv:1607.02533), with the
    momentum of MI-FGSM (arXiv:1710.06081) and the input diversity of DI-FGSM (arXiv:1803.06978)
    as options, so the three share one loop.

    Per step t: g = grad_x CE at D(x_t) (D = random resize-and-pad with probability
    ``diversity_prob``, identity when 0); m_{t+1} = decay * m_t + g / ||g||_1 (per example; with
    decay 0 the normalisation does not change the sign, so this is plain I-FGSM);
    x_{t+1} = clip_{x, eps}(x_t + alpha * sign(m_{t+1})). Default alpha = eps / steps.
    """

    def __init__(self, model, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10, *,
                 decay: float = 0.0, diversity_prob: float = 0.0, resize_rate: float = 0.9,
                 generator: torch.Generator | None = None, targeted: bool = False) -> None:
        super().__init__(model, eps=eps, targeted=targeted)
        self.steps = check_count(steps, "steps")
        self.alpha = self.eps / self.steps if alpha is None else check_number(alpha, "alpha", strict=True)
        self.decay = check_number(decay, "decay")
        self.diversity_prob = check_number(diversity_prob, "diversity_prob")
        if self.diversity_prob > 1:
            raise InputError(f"diversity_prob must lie in [0, 1], got {diversity_prob!r}")
        self.resize_rate = check_number(resize_rate, "resize_rate", strict=True)
        self.generator = generator

    def diverse(self, x: torch.Tensor) -> torch.Tensor:
        """DI-FGSM's input diversity (arXiv:1803.06978): with probability ``diversity_prob`` resize
        the (N, C, H, W) batch to a random side in [min(H, rH), max(H, rH)) and zero-pad it at a
        random offset to max(H, rH); otherwise return x unchanged."""
        draw = draw_device(self.generator, "cpu")  # scalar draws, on the generator's device
        if self.diversity_prob == 0 or \
                float(torch.rand((), generator=self.generator, device=draw)) >= self.diversity_prob:
            return x
        if x.dim() != 4:
            raise InputError(f"input diversity needs images shaped (N, C, H, W), got {tuple(x.shape)}")
        size = x.shape[-1]
        low, high = sorted((size, int(size * self.resize_rate)))
        if low == high:
            return x
        side = int(torch.randint(low, high, (), generator=self.generator, device=draw))
        resized = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        left = int(torch.randint(0, high - side + 1, (), generator=self.generator, device=draw))
        top = int(torch.randint(0, high - side + 1, (), generator=self.generator, device=draw))
        return F.pad(resized, (left, high - side - left, top, high - side - top))

    def perturb(self, x, y):
        x_adv, momentum = x.clone(), torch.zeros_like(x)
        for _ in range(self.steps):
            grad = self.loss_grad(x_adv, y, self.diverse)
            momentum = self.decay * momentum + grad / _per_example_norm(grad, 1)
            x_adv = project_linf(x_adv + self.alpha * momentum.sign(), x, self.eps)
        self._stats.iterations = self.steps
        return x_adv


class MIFGSM(IFGSM):
    """Momentum I-FGSM (Boosting Adversarial Attacks with Momentum, arXiv:1710.06081): IFGSM with
    ``decay`` (mu) = 1.0 by default; see :class:`IFGSM` for the update and shapes."""

    def __init__(self, model, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10,
                 decay: float = 1.0, *, targeted: bool = False) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, decay=decay, targeted=targeted)


class DIFGSM(IFGSM):
    """Diverse-input I-FGSM (Improving Transferability ... with Input Diversity, arXiv:1803.06978):
    IFGSM with ``diversity_prob`` = 0.5 and ``resize_rate`` = 0.9 by default (DI2-FGSM; set
    ``decay`` = 1.0 for M-DI2-FGSM). Images (N, C, H, W); the model must accept the padded size when
    ``resize_rate`` > 1."""

    def __init__(self, model, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10,
                 decay: float = 0.0, resize_rate: float = 0.9, diversity_prob: float = 0.5, *,
                 generator: torch.Generator | None = None, targeted: bool = False) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, decay=decay, diversity_prob=diversity_prob,
                         resize_rate=resize_rate, generator=generator, targeted=targeted)


class PGD(_CrossEntropyAttack):
    """Projected gradient descent, L-inf (Towards Deep Learning Models Resistant to Adversarial
    Attacks, arXiv:1706.06083).

    Start at x + U(-eps, eps) (``random_start``) clipped to [0, 1]; per step
    x_{t+1} = Proj_{B_inf(x, eps) and [0,1]}(x_t + alpha * sign(grad)). Shapes as :class:`Attack`.
    """

    norm = "linf"

    def __init__(self, model, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, *, generator: torch.Generator | None = None,
                 targeted: bool = False) -> None:
        super().__init__(model, eps=eps, targeted=targeted)
        self.alpha = check_number(alpha, "alpha", strict=True)
        self.steps = check_count(steps, "steps")
        self.random_start, self.generator = bool(random_start), generator

    def start(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=self.generator, dtype=x.dtype,
                           device=draw_device(self.generator, x.device)).to(x.device)
        return project_linf(x + (2 * noise - 1) * self.eps, x, self.eps)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return project_linf(x_adv + self.alpha * grad.sign(), x, self.eps)

    def perturb(self, x, y):
        x_adv = self.start(x) if self.random_start else x.clone()
        for _ in range(self.steps):
            x_adv = self.step(x_adv, self.loss_grad(x_adv, y), x)
        self._stats.iterations = self.steps
        return x_adv


class PGDL2(PGD):
    """Projected gradient descent, L2 (arXiv:1706.06083).

    Start uniformly in the L2 ball of radius eps (direction ~ N(0, I), radius eps * U^(1/d)), clipped
    to [0, 1]; per step x_{t+1} = Proj_{B_2(x, eps) and [0,1]}(x_t + alpha * g / ||g||_2).
    """

    norm = "l2"

    def __init__(self, model, eps: float = 1.0, alpha: float = 0.2, steps: int = 10,
                 random_start: bool = True, *, generator: torch.Generator | None = None,
                 targeted: bool = False) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         generator=generator, targeted=targeted)

    def start(self, x: torch.Tensor) -> torch.Tensor:
        draw = draw_device(self.generator, x.device)
        direction = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=draw).to(x.device)
        dim = x[0].numel()
        radius = torch.rand(len(x), generator=self.generator, dtype=x.dtype, device=draw).to(x.device) ** (1 / dim)
        delta = direction / _per_example_norm(direction, 2) * (self.eps * radius).view(-1, *([1] * (x.dim() - 1)))
        return project_l2(x + delta, x, self.eps)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return project_l2(x_adv + self.alpha * grad / _per_example_norm(grad, 2), x, self.eps)


__all__ = ["FGSM", "IFGSM", "MIFGSM", "DIFGSM", "PGD", "PGDL2", "project_linf", "project_l2"]
