"""AugMax: adversarial composition of random augmentations, with DuBIN normalisation (Wang, Xiao, Kossaifi,
Yu, Anandkumar, Wang, "AugMax: Adversarial Composition of Random Augmentations for Robust Training",
NeurIPS 2021, arXiv:2110.13771; method card 24), and its baseline AugMix (Hendrycks et al.,
arXiv:1912.02781), written in torch for images x (N, C, H, W) in [0, 1].

* :func:`sample_chains` - ``width`` AugMix chains per image: 1-3 ops (depth uniform) from autocontrast,
  equalize, posterize, rotate, solarize, shear_x/y, translate_x/y, each at a level ~ U[0.1, severity].
* :func:`mix` - x_mix = (1 - m) x + m sum_i w_i a_i (AugMix: w ~ Dirichlet(1), m ~ Beta(1, 1)).
* :func:`augmax_attack` - the adversary picks m in [0, 1] and w = softmax(q) per sample by FAT sign-gradient
  ascent on CE (step 0.1), model in eval mode, route 'A'; a sample misclassified ``tau`` times stops.
* :class:`DualBN2d` (main 'M' / auxiliary 'A' BatchNorm chosen by a route flag), :class:`DuBIN`
  (InstanceNorm on the first channels, dual BN on the rest), :func:`convert_to_dubin`, :func:`norm_route`.
* :class:`AugMixLoss` - loss_fn + callback for ``honed.core.loop.train``: CE(clean) + lam JSD over
  (clean, AugMix, AugMix) or, ``mode="augmax"``, (clean, AugMax with route 'A', AugMix with route 'M').

Card steps kept as named options (card defaults): ``steps`` 5 (the card's small-scale value; README 10),
``step_size`` 0.1, ``tau`` 1, ``severity`` 3, ``width`` 3, ``lam`` 10, ``instance_ratio`` 0.5, and
``dubin_stages`` "all_but_last" (stages 1-3 of 4 in the paper; which stages of a 3-stage net get IN is
our choice). Ops act per sample with zero fill for geometric ops (PIL's default) on square images.
"""
import contextlib
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import Callback, TrainState
from honed.core.seed import draw_device
from honed.data.base import check_images
from honed.robust.attacks.base import eval_mode

OPS = ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y", "translate_x",
       "translate_y")
ROUTES = ("M", "A")


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels (identity for a constant image)."""
    n, c, h, w = x.shape
    q = (x * 255).round().long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    span = (h * w - cdf_min)
    lut = torch.where(span > 0, (cdf - cdf_min).clamp_min(0) / span.clamp_min(1), torch.arange(256, device=x.device) / 255)
    return lut.gather(1, q).reshape(n, c, h, w).to(x.dtype)


def apply_op(x: torch.Tensor, op: str, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """One AugMix op on x (n, C, H, W) in [0, 1] with per-sample ``level`` in [0, 10] and ``sign`` +-1 (n,)."""
    n, _, _, w = x.shape
    lv = level.view(n, 1, 1, 1)
    if op == "autocontrast":
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-8), x)
    if op == "equalize":
        return _equalize(x)
    if op == "posterize":  # keep 4 - int(level * 4 / 10) bits
        drop = 2 ** (4 + torch.floor(lv * 4 / 10))
        return torch.floor(x * 255 / drop) * drop / 255
    if op == "solarize":  # threshold 256 - int(level * 256 / 10) on the 0..255 scale
        thr = (256 - torch.floor(lv * 256 / 10)) / 255
        return torch.where(x < thr, x, 1 - x)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    if op == "rotate":
        ang = torch.floor(level * 30 / 10) * sign * math.pi / 180
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = ang.cos(), -ang.sin(), ang.sin(), ang.cos()
    elif op in ("shear_x", "shear_y"):
        theta[:, 0 if op == "shear_x" else 1, 1 if op == "shear_x" else 0] = level * 0.3 / 10 * sign
    elif op in ("translate_x", "translate_y"):
        pixels = torch.floor(level * (w / 3) / 10) * sign
        theta[:, 0 if op == "translate_x" else 1, 2] = 2 * pixels / w
    else:
        raise InputError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    return _affine(x, theta)


def sample_chains(x: torch.Tensor, width: int = 3, severity: float = 3.0, max_depth: int = 3,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``width`` random AugMix chains per image of x (N, C, H, W) in [0, 1] -> (N, width, C, H, W) in [0, 1].
    Each chain has depth ~ U{1..max_depth}; each op is uniform over OPS with level ~ U[0.1, severity]."""
    check_images(x, "images", dims=4)
    if width < 1 or max_depth < 1 or not 0.1 <= severity <= 10:
        raise InputError(f"need width >= 1, max_depth >= 1, severity in [0.1, 10]; got {width}, {max_depth}, {severity}")
    n, draw = len(x), draw_device(generator, x.device)  # drawn on the generator's device, used on x's
    chains = []
    for _ in range(width):
        cur = x.clone()
        depth = torch.randint(1, max_depth + 1, (n,), generator=generator, device=draw).to(x.device)
        for step in range(max_depth):
            ops = torch.randint(0, len(OPS), (n,), generator=generator, device=draw).to(x.device)
            level = (0.1 + (severity - 0.1) * torch.rand(n, generator=generator, device=draw)).to(x)
            sign = torch.where(torch.rand(n, generator=generator, device=draw) < 0.5, -1.0, 1.0).to(x)
            for k, op in enumerate(OPS):
                sel = ((depth > step) & (ops == k)).nonzero().flatten()
                if len(sel):
                    cur[sel] = apply_op(cur[sel], op, level[sel], sign[sel]).clamp(0, 1)
        chains.append(cur)
    return torch.stack(chains, 1)


def mix(x: torch.Tensor, chains: torch.Tensor, weights: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x_mix = (1 - m) x + m sum_i w_i a_i for x (N, C, H, W), chains (N, K, C, H, W), weights (N, K), m (N,)."""
    n, k = chains.shape[:2]
    if chains.shape[2:] != x.shape[1:] or weights.shape != (n, k) or m.shape != (n,) or len(x) != n:
        raise InputError(f"shape mismatch: x {tuple(x.shape)}, chains {tuple(chains.shape)}, "
                         f"weights {tuple(weights.shape)}, m {tuple(m.shape)}")
    aug = (weights.view(n, k, 1, 1, 1) * chains).sum(1)
    mm = m.view(n, 1, 1, 1)
    return (1 - mm) * x + mm * aug


def augmix_weights(n: int, width: int = 3, generator: torch.Generator | None = None,
                   device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """AugMix's random mixing: w ~ Dirichlet(1,..,1) (n, width) and m ~ Beta(1, 1) (n,) (via exponentials),
    drawn on the generator's device and returned on ``device`` (default: where they were drawn; the CPU
    when there is neither)."""
    draw = draw_device(generator, device if device is not None else "cpu")
    device = draw if device is None else torch.device(device)
    e = -torch.log(torch.rand(n, width, generator=generator, device=draw).clamp_min(1e-12))
    return (e / e.sum(1, keepdim=True)).to(device), torch.rand(n, generator=generator, device=draw).to(device)


class DualBN2d(nn.Module):
    """Dual BatchNorm (AugMax, arXiv:2110.13771): a main ('M') and an auxiliary ('A') BatchNorm2d, chosen by
    ``route``; input (N, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        self.main, self.aux = (nn.BatchNorm2d(channels, eps, momentum, affine, track_running_stats) for _ in range(2))
        self.route = "M"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main if self.route == "M" else self.aux)(x)


class DuBIN(nn.Module):
    """DuBIN (AugMax, arXiv:2110.13771; IBN-a style): the first round(C * instance_ratio) channels go through
    InstanceNorm2d(affine), the rest through a DualBN2d; output = concat. instance_ratio = 0 is DualBN2d.

    Loading the state_dict of the plain ``BatchNorm2d`` it replaced (keys ``weight``, ``bias``,
    ``running_mean``, ...) also works: both BN branches take the channels after the split and the
    InstanceNorm the affine parameters of the channels before it, as :func:`convert_to_dubin` does."""

    def __init__(self, channels: int, instance_ratio: float = 0.5, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        if not 0 <= instance_ratio < 1:
            raise InputError(f"instance_ratio must be in [0, 1), got {instance_ratio}")
        self.split = int(round(channels * instance_ratio))
        self.inorm = nn.InstanceNorm2d(self.split, eps=eps, affine=True) if self.split else None
        self.bn = DualBN2d(channels - self.split, eps, momentum, affine, track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inorm is None:
            return self.bn(x)
        return torch.cat((self.inorm(x[:, :self.split].contiguous()), self.bn(x[:, self.split:].contiguous())), 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        plain = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict)
                 if k.startswith(prefix) and "." not in k[len(prefix):]}
        for key, value in _bn_to_dubin(plain, self.split, self.inorm is not None).items():
            state_dict[prefix + key] = value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _bn_to_dubin(plain: dict, split: int, has_inorm: bool) -> dict:
    """State of a plain BatchNorm2d (keys weight, bias, running_mean, running_var, num_batches_tracked)
    as DuBIN keys: both BN branches get the entries after ``split``, the InstanceNorm the affine ones
    before it."""
    out = {}
    for key, value in plain.items():
        for branch in ("main", "aux"):
            out[f"bn.{branch}.{key}"] = value[split:] if value.dim() else value
        if has_inorm and key in ("weight", "bias"):
            out[f"inorm.{key}"] = value[:split]
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _plain_batchnorms(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(name, module) of every BatchNorm2d of ``model`` that is not already a branch of a DualBN2d."""
    inside = {id(m) for d in model.modules() if isinstance(d, DualBN2d) for m in (d.main, d.aux)}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in inside]


def dubin_layer_names(model: nn.Module, dubin_stages: str = "all_but_last") -> list[str]:
    """Which BatchNorm2d layers get DuBIN's InstanceNorm: with honed's resnet_s naming, the first norm of
    every residual block (``stages.<i>.<j>.bn1``) in all stages but the last ("all_but_last", the card's
    stages 1-3 of 4) or in "all" stages. Any other model is read by type: its BatchNorm2d layers in
    module order, all but the last one ("all_but_last": IN only in the earlier layers) or "all"."""
    if dubin_stages not in ("all_but_last", "all"):
        raise InputError(f"dubin_stages must be 'all_but_last' or 'all', got {dubin_stages!r}")
    norms = [n for n, _ in _plain_batchnorms(model)]
    names = [n for n in norms if n.startswith("stages.") and n.endswith(".bn1")]
    if not names:
        return norms if dubin_stages == "all" else norms[:-1]
    if dubin_stages == "all":
        return names
    last = max(int(n.split(".")[1]) for n in names)
    return [n for n in names if int(n.split(".")[1]) < last]


def convert_to_dubin(model: nn.Module, dubin_layers: Iterable[str] | None = None,
                     instance_ratio: float = 0.5) -> nn.Module:
    """In place: every BatchNorm2d (found by type) becomes a :class:`DuBIN`; those named in
    ``dubin_layers`` (default :func:`dubin_layer_names`) get ``instance_ratio`` of their channels in an
    InstanceNorm, the others none (a DuBIN holding only its DualBN2d). Both BN branches start from the
    old BN's parameters and statistics, the InstanceNorm from its affine parameters, so a checkpoint
    of the unconverted model loads into the converted one. A model without any BatchNorm2d is refused;
    a second call leaves an already converted model as it is. Returns ``model``."""
    norms = _plain_batchnorms(model)
    converted = {n for n, m in model.named_modules() if isinstance(m, DuBIN)}
    if not norms and not converted:
        raise InputError(f"{type(model).__name__} has no BatchNorm2d layer to convert to DuBIN")
    names = set(dubin_layer_names(model) if dubin_layers is None else dubin_layers)
    missing = names - {n for n, _ in norms} - converted
    if missing:
        raise InputError(f"no BatchNorm2d named {sorted(missing)} (BatchNorm2d layers: {[n for n, _ in norms]})")
    if not 0 <= instance_ratio < 1:
        raise InputError(f"instance_ratio must be in [0, 1), got {instance_ratio}")
    for name, bn in norms:
        new = DuBIN(bn.num_features, instance_ratio if name in names else 0.0, bn.eps, bn.momentum or 0.1,
                    bn.affine, bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        device = next(iter(bn.state_dict().values()), torch.empty(0)).device
        _replace(model, name, new.to(device).train(bn.training))
    return model


def set_route(model: nn.Module, route: str) -> None:
    """Route every DualBN2d of ``model`` to 'M' (main) or 'A' (auxiliary); a model without any is unchanged."""
    if route not in ROUTES:
        raise InputError(f"route must be 'M' or 'A', got {route!r}")
    for m in model.modules():
        if isinstance(m, DualBN2d):
            m.route = route


@contextlib.contextmanager
def norm_route(model: nn.Module, route: str):
    """Context manager: route to ``route`` inside, back to 'M' afterwards (test time uses 'M')."""
    set_route(model, route)
    try:
        yield model
    finally:
        set_route(model, "M")


def _check_attack_args(x, y, chains, steps, step_size, tau):
    check_images(x, "images", dims=4)
    if y.shape != (len(x),) or chains.dim() != 5 or chains.shape[0] != len(x):
        raise InputError(f"need y (N,) and chains (N, K, C, H, W); got {tuple(y.shape)}, {tuple(chains.shape)}")
    check_images(chains.flatten(0, 1), "augmentation chains", dims=4)
    if steps < 0 or step_size <= 0 or tau < 1:
        raise InputError(f"need steps >= 0, step_size > 0, tau >= 1; got {steps}, {step_size}, {tau}")


def augmax_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chains: torch.Tensor, steps: int = 5,
                  step_size: float = 0.1, tau: int = 1, route: str = "A", generator: torch.Generator | None = None,
                  m: torch.Tensor | None = None, q: torch.Tensor | None = None):
    """AugMax's adversarial mixing (arXiv:2110.13771) by FAT sign-gradient ascent on CE(sum): m <- clip(m + a
    sign(dL/dm), 0, 1), q <- q + a sign(dL/dq), w = softmax(q); x (N, C, H, W) in [0, 1], y (N,), chains
    (N, K, C, H, W). Init m ~ U[0,1), q ~ U[0,1)^K unless given. A sample misclassified ``tau`` times stops
    moving; the loop ends when none moves. Runs in eval mode on route ``route`` (every submodule's mode is
    restored); no parameter grads. NaN or out-of-range chains are refused.
    Returns (x_adv (N, C, H, W), m (N,), w (N, K))."""
    _check_attack_args(x, y, chains, steps, step_size, tau)
    n, k = chains.shape[:2]
    draw = draw_device(generator, x.device)
    m = (torch.rand(n, generator=generator, device=draw) if m is None else m.detach()).to(x).clone()
    q = (torch.rand(n, k, generator=generator, device=draw) if q is None else q.detach()).to(x).clone()
    count = torch.zeros(n, dtype=torch.long, device=x.device)
    with eval_mode(model), norm_route(model, route), torch.enable_grad():
        for _ in range(steps):
            m.requires_grad_(True)
            q.requires_grad_(True)
            logits = model(mix(x, chains, q.softmax(1), m))
            gm, gq = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), (m, q))
            count += (logits.argmax(1) != y).long() * (count < tau).long()
            move = (count < tau).to(x.dtype)
            with torch.no_grad():
                m = (m + step_size * gm.sign() * move).clamp(0, 1)
                q = q + step_size * gq.sign() * move[:, None]
            if not bool(move.any()):
                break
    m, w = m.detach(), q.detach().softmax(1)
    return mix(x, chains, w, m).detach(), m, w


def jsd_loss(*logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon consistency (AugMix, arXiv:1912.02781): (1/J) sum_j KL(p_j || M), M = mean softmax
    clamped to [1e-7, 1], averaged over the batch; each logits (N, classes). >= 0, 0 iff all equal."""
    if len(logits) < 2 or any(t.shape != logits[0].shape for t in logits):
        raise InputError("jsd_loss needs >= 2 logits tensors of one shape")
    probs = [t.softmax(1) for t in logits]
    log_m = torch.stack(probs).mean(0).clamp(1e-7, 1).log()
    return sum(F.kl_div(log_m, p, reduction="batchmean") for p in probs) / len(probs)


class AugMixLoss(Callback):
    """Loss for ``honed.core.loop.train`` (pass it as ``loss_fn`` AND in ``callbacks``): CE(f(x), y) + lam JSD.
    ``mode="augmix"``: JSD over (clean, AugMix, AugMix) (AugMix, arXiv:1912.02781). ``mode="augmax"``: JSD
    over (clean, AugMax on route 'A', AugMix on route 'M') with two independent chain tuples
    (AugMax, arXiv:2110.13771). Batch x (N, C, H, W) in [0, 1]."""

    def __init__(self, mode: str = "augmax", lam: float = 10.0, width: int = 3, severity: float = 3.0,
                 steps: int = 5, step_size: float = 0.1, tau: int = 1, seed: int = 0) -> None:
        if mode not in ("augmix", "augmax") or lam < 0:
            raise InputError(f"mode must be 'augmix' or 'augmax' and lam >= 0; got {mode!r}, {lam}")
        self.mode, self.lam, self.width, self.severity = mode, lam, width, severity
        self.steps, self.step_size, self.tau = steps, step_size, tau
        self.generator = torch.Generator().manual_seed(seed)
        self.state: TrainState | None = None

    def on_batch_start(self, state: TrainState) -> None:
        self.state = state

    def _augmix(self, x: torch.Tensor) -> torch.Tensor:
        w, m = augmix_weights(len(x), self.width, self.generator, x.device)
        return mix(x, sample_chains(x, self.width, self.severity, generator=self.generator), w, m)

    def __call__(self, clean_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model, x = self.state.model, self.state.x
        with norm_route(model, "M"):
            mix_logits = model(self._augmix(x))
        if self.mode == "augmix":
            other = model(self._augmix(x))
        else:
            chains = sample_chains(x, self.width, self.severity, generator=self.generator)
            x_adv, _, _ = augmax_attack(model, x, y, chains, self.steps, self.step_size, self.tau,
                                        generator=self.generator)
            with norm_route(model, "A"):
                other = model(x_adv)
        return F.cross_entropy(clean_logits, y) + self.lam * jsd_loss(clean_logits, other, mix_logits)
