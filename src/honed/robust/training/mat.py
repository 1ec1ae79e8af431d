"""MAT: multi-strength adversarial training, mixed and parallel (Song, Cheng, Yang, Li, Wu, Wu, Li, Chen,
"MAT: A Multi-strength Adversarial Training Method to Mitigate Adversarial Attacks", ISVLSI 2018,
arXiv:1705.09764; method card 17; no reference code was found).

Single-strength adversarial training (Goodfellow et al., arXiv:1412.6572) protects mainly near its own
strength eps. MAT trains against several strengths E = {eps_1 < ... < eps_K}:

* **mixed MAT** (one network, (K+1)x forward/backward per step): for each batch craft x_adv(eps_k)
  for every k against the current model (in eval mode, true labels) and minimise
  ``w_0 CE(f(x), y) + sum_k w_k CE(f(x_adv(eps_k)), y)`` with w_0 = 1/2, w_k = 1/(2K).
  -> :class:`MixedMAT` (``sampling="all"``); ``"per_sample"`` gives each example one strength, cycled
  so every strength is used equally, and ``"per_batch"`` draws one strength per batch (2x cost).
* **parallel MAT** (K networks): member k is trained with single-strength adversarial training at eps_k
  (:class:`AdversarialTraining`, independent, so they can run concurrently); the deployed model
  averages their softmax outputs -> :class:`ParallelMAT`.

The paper's exact strength set, loss weights and attack set were not retrieved; the card's suggested
defaults are named options here (reconstructed, R): ``strengths`` (0.05, 0.1, 0.2, 0.3) for [0, 1]
images, ``clean_weight`` 1/2 with the adversarial half split uniformly, ``sampling`` "all", ``attack``
"fgsm" (any ``(model, eps) -> honed Attack`` factory, e.g. :func:`pgd_attack`, may replace it, one per
strength to mix attack types), ensemble = mean of softmax (the card's learned combiner is not built).

The clean and adversarial blocks go through the model as one concatenated batch, so a BatchNorm layer
in train mode normalises them together (as in Kurakin et al.'s mixed batches, arXiv:1611.01236).
Every tensor MAT creates lives on the device of the batch it is given.
"""
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import Callback, TrainState
from honed.core.seed import draw_device
from honed.robust.attacks import FGSM, PGD, Attack
from honed.robust.attacks.base import check_attack_inputs, check_count, check_number, eval_mode

DEFAULT_STRENGTHS = (0.05, 0.1, 0.2, 0.3)
SAMPLINGS = ("all", "per_sample", "per_batch")
AttackFactory = Callable[[nn.Module, float], Attack]


def fgsm_attack(model: nn.Module, eps: float) -> Attack:
    """FGSM (arXiv:1412.6572) at ``eps`` against ``model``, without the verification forward (training
    does not need it): x_adv = clip(x + eps sign(grad_x CE), 0, 1) for x (N, ...) in [0, 1]."""
    attack = FGSM(model, eps=eps)
    attack.verify = False
    return attack


def pgd_attack(model: nn.Module, eps: float, steps: int = 10, step_ratio: float = 0.25,
               random_start: bool = True, generator: torch.Generator | None = None) -> Attack:
    """L-inf PGD (Madry et al., arXiv:1706.06083) at ``eps`` with ``steps`` steps of size
    ``step_ratio * eps`` (the card's PGD-10, step eps/4); x (N, ...) in [0, 1]. eps = 0 returns x."""
    eps = check_number(eps, "eps")
    check_number(step_ratio, "step_ratio", strict=True)
    attack = PGD(model, eps=eps, alpha=max(step_ratio * eps, 1e-12), steps=steps, random_start=random_start,
                 generator=generator)
    attack.verify = False
    return attack


ATTACKS: dict[str, AttackFactory] = {"fgsm": fgsm_attack, "pgd": pgd_attack}


def resolve_attack(spec: str | AttackFactory) -> AttackFactory:
    """An attack name of :data:`ATTACKS` or a ``(model, eps) -> Attack`` callable -> the callable."""
    if isinstance(spec, str):
        if spec not in ATTACKS:
            raise InputError(f"attack must be one of {', '.join(ATTACKS)} or a (model, eps) -> Attack callable, "
                             f"got {spec!r}")
        return ATTACKS[spec]
    if not callable(spec):
        raise InputError(f"attack must be a name or a (model, eps) -> Attack callable, got {type(spec).__name__}")
    return spec


def check_strengths(strengths: Sequence[float]) -> tuple[float, ...]:
    """A non-empty tuple of finite eps >= 0 (an L-inf radius on the [0, 1] pixel scale)."""
    if isinstance(strengths, (int, float)) or not len(strengths):
        raise InputError(f"strengths must be a non-empty sequence of eps >= 0, got {strengths!r}")
    return tuple(check_number(e, "eps") for e in strengths)


class MixedMAT(Callback):
    """Mixed MAT (arXiv:1705.09764): one network trained on clean and multi-strength adversarial batches.

    As a :class:`honed.core.loop.Callback` and loss together::

        mat = MixedMAT(strengths=(0.05, 0.1, 0.2, 0.3))
        train(model, batches, opt, epochs, loss_fn=mat, callbacks=[mat])

    ``on_batch_start`` replaces the batch x (N, ...) in [0, 1] by ``[x; x_adv blocks]`` ((1 + B) N, ...),
    crafted against the live model in eval mode (its train/eval flags are restored); calling
    ``mat(logits, y)`` with logits ((1 + B) N, C) and y (N,) returns ``sum_b weights[b] CE(block b, y)``.
    In a plain loop use ``mat.loss_on(model, x, y)``. B = K with ``sampling="all"``, else 1.

    Options (R, the card's defaults): ``strengths`` E; ``attack`` a name ("fgsm", "pgd") or a
    ``(model, eps) -> Attack`` factory, or one such per strength; ``sampling`` "all" | "per_sample" |
    "per_batch"; ``clean_weight`` w_0 = 0.5 (0 drops the clean block, as in Madry's PGD training);
    ``generator`` seeds the per-sample / per-batch draws. ``counts`` (K,) tallies the examples crafted
    per strength; ``last_losses`` holds the last CE of each block.
    """

    def __init__(self, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                 attack: str | AttackFactory | Sequence[str | AttackFactory] = "fgsm", sampling: str = "all",
                 clean_weight: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.strengths = check_strengths(strengths)
        specs = list(attack) if isinstance(attack, (list, tuple)) else [attack] * len(self.strengths)
        if len(specs) != len(self.strengths):
            raise InputError(f"give one attack or one per strength ({len(self.strengths)}), got {len(specs)}")
        self.attacks = [resolve_attack(s) for s in specs]
        if sampling not in SAMPLINGS:
            raise InputError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        self.sampling = sampling
        self.clean_weight = check_number(clean_weight, "clean_weight")
        if self.clean_weight > 1:
            raise InputError(f"clean_weight must lie in [0, 1], got {clean_weight!r}")
        self.generator = generator
        self.counts = torch.zeros(len(self.strengths), dtype=torch.long)
        self.last_losses: dict[str, float] = {}

    @property
    def weights(self) -> tuple[float, ...]:
        """Loss weight of each block, clean block first (absent when clean_weight = 0); sums to 1."""
        blocks = len(self.strengths) if self.sampling == "all" else 1
        adversarial = ((1 - self.clean_weight) / blocks,) * blocks
        return ((self.clean_weight,) if self.clean_weight > 0 else ()) + adversarial

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
        """x_adv of strength ``strengths[k]`` for x (n, ...) in [0, 1], y int64 (n,), in [0, 1]."""
        self.counts[k] += len(x)
        return self.attacks[k](model, self.strengths[k])(x, y)

    def assign_strengths(self, n: int) -> torch.Tensor:
        """(n,) strength index per example: per_sample cycles 0..K-1 from a random offset and shuffles
        (counts differ by at most one per batch); per_batch draws one index for the whole batch."""
        k, device = len(self.strengths), draw_device(self.generator, "cpu")  # on the generator's device
        if self.sampling == "per_batch":
            return torch.randint(k, (1,), generator=self.generator, device=device).expand(n)
        offset = int(torch.randint(k, (1,), generator=self.generator, device=device))
        cycle = (torch.arange(n, device=device) + offset) % k
        return cycle[torch.randperm(n, generator=self.generator, device=device)]

    def adversarial_blocks(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """The adversarial blocks for x (N, ...), each (N, ...): one per strength ("all"), else one."""
        if self.sampling == "all":
            return [self.craft(model, x, y, k) for k in range(len(self.strengths))]
        assigned = self.assign_strengths(len(x))
        block = torch.empty_like(x)
        for k in assigned.unique().tolist():
            rows = (assigned == k).nonzero().flatten().to(x.device)
            block[rows] = self.craft(model, x[rows], y[rows], k)
        return [block]

    def expand(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[x; adversarial blocks] ((1 + B) N, ...), or the blocks alone when clean_weight = 0."""
        blocks = self.adversarial_blocks(model, x.detach(), y)
        return torch.cat(([x] if self.clean_weight > 0 else []) + blocks)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weights = self.weights
        if logits.dim() != 2 or logits.shape[0] != len(weights) * len(y):
            raise InputError(f"logits must have shape ({len(weights)} * N = {len(weights) * len(y)}, C) for "
                             f"{len(weights)} blocks of N = {len(y)}, got {tuple(logits.shape)}")
        losses = [F.cross_entropy(block, y) for block in logits.split(len(y))]
        names = (["clean"] if self.clean_weight > 0 else []) + self.block_names()
        self.last_losses = {name: float(loss.detach()) for name, loss in zip(names, losses)}
        return sum(w * loss for w, loss in zip(weights, losses))

    def block_names(self) -> list[str]:
        return [f"eps{e:g}" for e in self.strengths] if self.sampling == "all" else [self.sampling]

    def loss_on(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The MAT loss of ``model`` on the batch x (N, ...) in [0, 1], y int64 (N,), in a plain loop."""
        return self(model(self.expand(model, x, y)), y)

    def on_batch_start(self, state: TrainState) -> None:
        state.x = self.expand(state.model, state.x, state.y)


class AdversarialTraining(MixedMAT):
    """Single-strength adversarial training (Goodfellow et al., arXiv:1412.6572), the baseline of MAT
    (arXiv:1705.09764) and the trainer of each parallel-MAT member: ``L = w_0 CE(f(x), y) +
    (1 - w_0) CE(f(x_adv(eps)), y)``, w_0 = ``clean_weight`` (1/2; 0 with ``attack="pgd"`` is Madry's
    PGD training). Same call shapes as :class:`MixedMAT` with one strength."""

    def __init__(self, eps: float, attack: str | AttackFactory = "fgsm", clean_weight: float = 0.5) -> None:
        super().__init__((eps,), attack=attack, sampling="all", clean_weight=clean_weight)


class ParallelMAT(nn.Module):
    """Parallel MAT (arXiv:1705.09764): K separately trained members, deployed as one classifier that
    averages their softmax outputs, p(y|x) = (1/K) sum_k softmax(f_k(x)).

    ``members``: modules mapping x (N, ...) to logits (N, C). ``forward`` returns log p (N, C) (log of
    the mean softmax, computed by logsumexp), so cross-entropy on it is -log p_y and white-box attacks
    differentiate through every member; :meth:`probabilities` returns p itself (rows sum to 1).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not len(members) or not all(isinstance(m, nn.Module) for m in members):
            raise InputError("members must be a non-empty sequence of torch.nn.Module")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(member(x), dim=1) for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) mean of the members' softmax outputs."""
        return self.forward(x).exp()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackFactory, eps: float,
                    batch_size: int = 1024) -> float:
    """White-box accuracy of ``model`` (evaluated in eval mode, flags restored) on ``attack(model,
    eps)(x, y)``: x (N, ...) in [0, 1], y int64 (N,). eps = 0 gives the clean accuracy."""
    check_number(eps, "eps")
    check_count(batch_size, "batch_size")
    check_attack_inputs(x, y)
    correct = 0.0
    with eval_mode(model), torch.enable_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            x_adv = xb if eps == 0 else attack(model, eps)(xb, yb)
            correct += _accuracy(model, x_adv, yb) * len(xb)
    return correct / len(x)


def fgsm_accuracy_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, grid: Sequence[float]) -> list[float]:
    """White-box FGSM (arXiv:1412.6572) accuracy at every eps of ``grid`` from one gradient: the FGSM
    direction sign(grad_x CE(f(x), y)) does not depend on eps, so x_adv(eps) = clip(x + eps * sign, 0, 1)
    equals ``FGSM(model, eps=eps)(x, y)``. x (N, ...) in [0, 1], y int64 (N,); model run in eval mode
    (flags restored); returns one accuracy per eps."""
    grid = check_strengths(grid)
    check_attack_inputs(x, y)
    with eval_mode(model), torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), [x_in])
        return [_accuracy(model, (x + eps * grad.sign()).clamp(0, 1), y) for eps in grid]


__all__ = ["ATTACKS", "DEFAULT_STRENGTHS", "SAMPLINGS", "AdversarialTraining", "MixedMAT", "ParallelMAT",
           "fgsm_accuracy_curve", "fgsm_attack", "pgd_attack", "resolve_attack", "robust_accuracy"]
