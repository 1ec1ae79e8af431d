"""SelectFormer (Ouyang, Lin, Ji, "SelectFormer in Data Markets", arXiv:2310.02373): private data
selection with MPC-friendly proxy models and multiphase entropy sieving.

* :class:`TinyTransformer` - the target (softmax attention, LayerNorm, sigmoid-GELU) or a proxy (its
  bottom ``n_blocks`` blocks with the attention row-softmax and every LayerNorm replaced by small
  MLPs ``W2 ReLU(W1 u + b1) + b2`` of hidden width ``emulator_width``). Input images (B, 64) in
  [0, 1] become 16 tokens of 2x2 patches (B, 16, 4); output logits (B, C). ``forward_with`` runs on
  torch tensors or CrypTensors alike, so the same code is evaluated in plaintext and under MPC.
* :func:`calibrate_norm_scales` - public per-LayerNorm scales that keep the target's inv_sqrt arguments
  inside CrypTen's accurate range (plaintext outputs unchanged, no extra MPC cost).
* :func:`fit_emulators` - card step 5: record the exact chains' inputs, fit a per-dimension Gaussian
  (R), sample ``synthetic_factor`` x more inputs (R), label them with the exact op, regress with MSE.
* :func:`phase_sizes`, :func:`secure_topk_standin`, :func:`multiphase_select` - card step 6.
* :func:`selection_cost` - sum over phases of |S_{i-1}| x measured per-example cost of P_i.

Reconstructed (R) knobs, card defaults: fusion boundary (row softmax, LayerNorm1, final LayerNorm and
the fused LayerNorm2 + FFN chain R^h -> R^d -> R^h are emulated: ``fuse_ffn=True``; with
``fuse_ffn=False`` LayerNorm2 is emulated and the FFN keeps its weights with a ReLU), ``gaussian_fit="per_dim"``,
``synthetic_factor=20``, KD weight in proxy finetuning ``kd_weight=0.5``.
"""
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from honed.core.errors import ConfigError, InputError
from honed.core.loop import model_device

N_TOKENS, PATCH = 16, 4
LN_EPS = 1e-5


def image_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, 64) or (B, 1, 8, 8) digits in [0, 1] -> (B, 16, 4): 2x2 patches in raster order."""
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.view(-1, 1, 8, 8)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise InputError(f"expected digits shaped (B, 64) or (B, 1, 8, 8), got {tuple(x.shape)}")
    if torch.isnan(x).any():
        raise InputError("input contains NaN")
    return x.view(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, N_TOKENS, PATCH)


def _inv_sqrt(t: Any) -> Any:
    return t.inv_sqrt() if hasattr(t, "inv_sqrt") else torch.rsqrt(t)


def layer_norm(x: Any, gain: Any, bias: Any, eps: float = LN_EPS, scale: float = 1.0) -> Any:
    """LayerNorm over the last dim of a tensor or CrypTensor (SelectFormer, arXiv:2310.02373 target).

    x (..., h); gain, bias (h,). ``scale`` s > 0 is a public constant: LN is scale invariant, so
    LN(x) = c * inv_sqrt(mean(c^2) + s eps) with c = sqrt(s) (x - mean x). The value is the same for any
    s; only the argument of inv_sqrt moves to s (var + eps), into CrypTen's accurate range (see
    :func:`calibrate_norm_scales`). Multiplying by a public float costs no communication.
    """
    centred = x - x.mean(-1, keepdim=True)
    if scale != 1.0:
        centred = centred * math.sqrt(scale)
    out = centred * _inv_sqrt((centred * centred).mean(-1, keepdim=True) + eps * scale)
    return out * gain + bias


def sigmoid_gelu(x: Any) -> Any:
    """GELU approximated as x * sigmoid(1.702 x) (MPC-evaluable; used by the target in both worlds)."""
    return x * (x * 1.702).sigmoid()


def entropy_from_logits(logits: Any, logit_floor: float | None = None) -> Any:
    """Predictive entropy (nats) of softmax(logits) for logits (B, C), tensor or CrypTensor:
    H = log sum exp(z') - sum softmax(z') z' with z' = z - max z (log argument in [1, C]).
    ``logit_floor`` (< 0, optional): z' is floored there first (``floor + relu(z' - floor)``), which the
    secret-shared version needs (see :func:`honed.private.mpc.secure_logit_floor`); None = exact."""
    z = logits - logits.max(-1, keepdim=True)[0]
    if logit_floor is not None:
        z = (z - logit_floor).relu() + logit_floor
    e = z.exp()
    s = e.sum(-1, keepdim=True)
    p = e * s.reciprocal()
    return (s.log() - (p * z).sum(-1, keepdim=True)).squeeze(-1)


def _mlp(params: dict, prefix: str, u: Any) -> Any:
    h = (u.matmul(params[prefix + "w1"]) + params[prefix + "b1"]).relu()
    return h.matmul(params[prefix + "w2"]) + params[prefix + "b2"]


class TinyTransformer(nn.Module):
    """Target or proxy Transformer of SelectFormer (arXiv:2310.02373) for 8x8 digits.

    ``emulator_width`` None = exact softmax / LayerNorm / sigmoid-GELU (the target); an int d = proxy:
    each attention row-softmax (R^16 -> R^d -> R^16), each LayerNorm and (``fuse_ffn``, R) each
    LayerNorm2 + FFN chain (R^h -> R^d -> R^h) is a small MLP. forward(x): (B, 64)
    in [0, 1] -> logits (B, classes).
    """

    def __init__(self, n_blocks: int = 2, width: int = 32, heads: int = 2, ffn: int = 64,
                 classes: int = 10, emulator_width: int | None = None, fuse_ffn: bool = True) -> None:
        super().__init__()
        if width % heads or min(n_blocks, width, heads, ffn, classes) < 1:
            raise ConfigError(f"bad TinyTransformer sizes: blocks {n_blocks} width {width} heads {heads}")
        if emulator_width is not None and emulator_width < 1:
            raise ConfigError(f"emulator_width must be >= 1, got {emulator_width}")
        self.n_blocks, self.width, self.heads, self.ffn, self.classes = n_blocks, width, heads, ffn, classes
        self.emulator_width, self.fuse_ffn = emulator_width, bool(fuse_ffn and emulator_width is not None)
        self.params = nn.ParameterDict(self._init_params())
        # public per-LayerNorm scales (see calibrate_norm_scales); saved in state_dict, never trained
        self.register_buffer("norm_scales", torch.ones(len(self.norm_names())))

    def _init_params(self) -> dict[str, nn.Parameter]:
        h, f = self.width, self.ffn
        shapes = {"embed_w": (PATCH, h), "embed_b": (h,), "pos": (N_TOKENS, h), "head_w": (h, self.classes),
                  "head_b": (self.classes,)}
        for i in range(self.n_blocks):
            shapes |= {f"b{i}_{n}_w": (h, h) for n in "qkvo"} | {f"b{i}_{n}_b": (h,) for n in "qkvo"}
            if not self.fuse_ffn:
                shapes |= {f"b{i}_ff1_w": (h, f), f"b{i}_ff1_b": (f,), f"b{i}_ff2_w": (f, h), f"b{i}_ff2_b": (h,)}
        for name in self.norm_names():
            shapes |= self._emulator_shapes(name, h) if self.emulated else {name + "_g": (h,), name + "_b": (h,)}
        for name in self.emulator_names():
            if name.endswith(("softmax", "ffn")):
                shapes |= self._emulator_shapes(name, N_TOKENS if name.endswith("softmax") else h)
        params = {}
        for name, shape in shapes.items():
            fan_in = shape[0] if len(shape) == 2 else 1
            value = torch.randn(shape) / math.sqrt(fan_in) if len(shape) == 2 else torch.zeros(shape)
            if name.endswith("_g") or name == "pos":
                value = torch.ones(shape) if name.endswith("_g") else torch.randn(shape) * 0.1
            params[name] = nn.Parameter(value)
        return params

    def _emulator_shapes(self, name: str, dim: int) -> dict[str, tuple[int, ...]]:
        d = self.emulator_width
        return {name + "_w1": (dim, d), name + "_b1": (d,), name + "_w2": (d, dim), name + "_b2": (dim,)}

    @property
    def emulated(self) -> bool:
        return self.emulator_width is not None

    def norm_names(self) -> list[str]:
        """LayerNorms that exist as such (LN2 is part of the fused FFN chain when ``fuse_ffn``)."""
        lns = (1,) if self.fuse_ffn else (1, 2)
        return [f"b{i}_ln{j}" for i in range(self.n_blocks) for j in lns] + ["final_ln"]

    def emulator_names(self) -> list[str]:
        """Chains replaced by MLPs in a proxy: LayerNorms, row softmaxes and fused LN2+FFN chains."""
        if not self.emulated:
            return []
        fused = [f"b{i}_ffn" for i in range(self.n_blocks)] if self.fuse_ffn else []
        return self.norm_names() + [f"b{i}_softmax" for i in range(self.n_blocks)] + fused

    def mpc_parameters(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.params.items()}

    def norm_scale(self, name: str) -> float:
        """The public inv_sqrt range scale of LayerNorm ``name`` (1.0 until calibrated)."""
        return float(self.norm_scales[self.norm_names().index(name)])

    def _norm(self, p: dict, name: str, x: Any) -> Any:
        if self.emulated:
            return _mlp(p, name + "_", x)
        return layer_norm(x, p[name + "_g"], p[name + "_b"], scale=self.norm_scale(name))

    def _attention(self, p: dict, i: int, a: Any, record: dict | None) -> Any:
        b, n, h = a.shape
        dh = h // self.heads
        split = lambda t: t.reshape(b, n, self.heads, dh).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(a.matmul(p[f"b{i}_{c}_w"]) + p[f"b{i}_{c}_b"]) for c in "qkv")
        scores = q.matmul(k.transpose(-2, -1)) * (1.0 / math.sqrt(dh))
        if record is not None:
            record.setdefault(f"b{i}_softmax", []).append(scores.detach().reshape(-1, n))
        attn = _mlp(p, f"b{i}_softmax_", scores) if self.emulated else self.row_softmax(scores)
        out = attn.matmul(v).permute(0, 2, 1, 3).reshape(b, n, h)
        return out.matmul(p[f"b{i}_o_w"]) + p[f"b{i}_o_b"]

    def forward_with(self, p: dict, tokens: Any, record: dict | None = None) -> Any:
        """Logits (B, classes) from tokens (B, 16, 4); ``p`` maps names to tensors or CrypTensors.
        ``record`` (plaintext only) collects the inputs of every emulated chain."""
        x = tokens.matmul(p["embed_w"]) + p["embed_b"] + p["pos"]
        for i in range(self.n_blocks):
            for j in (1, 2):
                if record is not None:
                    names = (f"b{i}_ln{j}",) if j == 1 else (f"b{i}_ln2", f"b{i}_ffn")
                    for name in names:
                        record.setdefault(name, []).append(x.detach().reshape(-1, self.width))
                if j == 1:
                    x = x + self._attention(p, i, self._norm(p, f"b{i}_ln1", x), record)
                elif self.fuse_ffn:
                    x = x + _mlp(p, f"b{i}_ffn_", x)
                else:
                    x = x + self._ffn(p, i, self._norm(p, f"b{i}_ln2", x))
        if record is not None:
            record.setdefault("final_ln", []).append(x.detach().reshape(-1, self.width))
        pooled = self._norm(p, "final_ln", x).mean(1)
        return pooled.matmul(p["head_w"]) + p["head_b"]

    def _ffn(self, p: dict, i: int, a: Any) -> Any:
        hid = a.matmul(p[f"b{i}_ff1_w"]) + p[f"b{i}_ff1_b"]
        act = hid.relu() if self.emulated else self.activation(hid)
        return act.matmul(p[f"b{i}_ff2_w"]) + p[f"b{i}_ff2_b"]

    def row_softmax(self, scores: Any) -> Any:
        """The exact attention row-softmax (a subclass may swap in an MPC-friendly approximation)."""
        return scores.softmax(-1)

    def activation(self, hid: Any) -> Any:
        """The exact FFN activation, sigmoid-GELU (a subclass may swap in an approximation)."""
        return sigmoid_gelu(hid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(dict(self.params), image_tokens(x))


def exact_chain(target: TinyTransformer, name: str, u: torch.Tensor) -> torch.Tensor:
    """The exact op of ``target`` that an emulator ``name`` replaces, on inputs u (n, dim): row
    softmax (``b*_softmax``), LayerNorm with its affine (``*_ln*``) or LayerNorm2 + FFN (``b*_ffn``)."""
    p = dict(target.params)
    if name.endswith("softmax"):
        return u.softmax(-1)
    if name.endswith("ffn"):
        i = int(name[1:name.index("_")])
        return target._ffn(p, i, layer_norm(u, p[f"b{i}_ln2_g"], p[f"b{i}_ln2_b"]))
    return layer_norm(u, p[name + "_g"], p[name + "_b"])


INV_SQRT_RANGE = (0.15, 100.0)


def calibrate_norm_scales(model: TinyTransformer, x: torch.Tensor, low: float = INV_SQRT_RANGE[0],
                          high: float = INV_SQRT_RANGE[1]) -> dict[str, dict[str, float]]:
    """Set each exact LayerNorm's public scale s (SelectFormer, arXiv:2310.02373: the target under MPC).

    x: (B, 64) digits in [0, 1], the model owner's own data (D_boot); plaintext only. CrypTen 0.4.1's
    inv_sqrt (Newton from a fixed initial guess) was measured accurate only on about [0.15, 100]:
    y sqrt(v) = 0.48 at v = 0.0056, 0.87 at 0.03, 0.995 at 0.1, 1.000 on 0.18..100, 0.87 at 178,
    garbage from ~560. For every LayerNorm this records v = var + eps of its inputs on x and picks s so
    that [min v, max v] * s is centred geometrically in [low, high]: s = sqrt(low high / (min v max v)).
    Plaintext outputs are unchanged (LN is scale invariant). Emulated (proxy) LayerNorms are skipped.
    Returns {name: {var_min, var_max, scale, fits}} (fits: the scaled range lies inside [low, high]).
    """
    if not 0 < low < high:
        raise InputError(f"need 0 < low < high, got low {low}, high {high}")
    if model.emulated:
        return {}
    record: dict[str, list] = {}
    with torch.no_grad():
        model.forward_with(dict(model.params), image_tokens(x), record)
    info = {}
    for k, name in enumerate(model.norm_names()):
        v = torch.cat(record[name]).var(-1, unbiased=False) + LN_EPS
        lo, hi = float(v.min()), float(v.max())
        scale = math.sqrt(low * high / (lo * hi))
        model.norm_scales[k] = scale
        fits = bool(lo * scale >= low and hi * scale <= high)
        info[name] = {"var_min": lo, "var_max": hi, "scale": scale, "fits": fits}
    return info


def make_proxy(target: TinyTransformer, n_blocks: int, emulator_width: int,
               fuse_ffn: bool = True) -> TinyTransformer:
    """SelectFormer step 3 (arXiv:2310.02373): bottom ``n_blocks`` blocks + head of ``target`` with
    emulator MLPs (random init; fit them with :func:`fit_emulators`), on the target's device."""
    if not 1 <= n_blocks < target.n_blocks:
        raise ConfigError(f"proxy n_blocks must be in [1, {target.n_blocks - 1}] (strictly fewer than the "
                          f"target's {target.n_blocks} blocks, card step 3), got {n_blocks}")
    proxy = TinyTransformer(n_blocks, target.width, target.heads, target.ffn, target.classes,
                            emulator_width, fuse_ffn).to(model_device(target))
    with torch.no_grad():
        for name, value in target.params.items():
            if name in proxy.params:
                proxy.params[name].copy_(value)
    return proxy


def fit_emulators(proxy: TinyTransformer, target: TinyTransformer, boot_x: torch.Tensor, *,
                  synthetic_factor: int = 20, gaussian_fit: str = "per_dim", steps: int = 300,
                  lr: float = 1e-2, seed: int = 0) -> dict[str, float]:
    """SelectFormer step 5 (arXiv:2310.02373): train each emulator MLP of ``proxy`` on synthetic
    inputs drawn from a Gaussian fitted to the target's recorded chain inputs on ``boot_x`` (B, 64).
    ``gaussian_fit`` "per_dim" (R; mean and variance per dimension). Returns held-out MSE per chain.
    Synthetic inputs come from a CPU generator seeded ``seed`` and move to the target's device, so a seed
    fits the same emulators on every device."""
    if gaussian_fit != "per_dim" or synthetic_factor < 1:
        raise ConfigError(f"gaussian_fit must be 'per_dim' and synthetic_factor >= 1, got {gaussian_fit!r}, {synthetic_factor}")
    record: dict[str, list] = {}
    with torch.no_grad():
        target.forward_with(dict(target.params), image_tokens(boot_x), record)
    gen = torch.Generator().manual_seed(seed)
    mses = {}
    for name in proxy.emulator_names():
        real = torch.cat(record[name])
        mean, std = real.mean(0), real.std(0) + 1e-4
        synth = mean + std * torch.randn((len(real) * synthetic_factor, real.shape[1]), generator=gen).to(mean)
        with torch.no_grad():
            labels = exact_chain(target, name, synth)
        mses[name] = _regress(proxy, name, synth, labels, steps, lr, gen)
    return mses


def _regress(proxy: TinyTransformer, name: str, synth: torch.Tensor, labels: torch.Tensor,
             steps: int, lr: float, gen: torch.Generator) -> float:
    """MSE regression of one emulator on (synth, labels); returns the held-out MSE (last 10%)."""
    n_fit = int(0.9 * len(synth))
    keys = [name + s for s in ("_w1", "_b1", "_w2", "_b2")]
    opt = torch.optim.Adam([proxy.params[k] for k in keys], lr=lr)
    p = proxy.params
    for _ in range(steps):
        idx = torch.randint(0, n_fit, (min(512, n_fit),), generator=gen).to(synth.device)
        loss = F.mse_loss(_mlp(p, name + "_", synth[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(F.mse_loss(_mlp(p, name + "_", synth[n_fit:]), labels[n_fit:]))


def phase_sizes(pool_size: int, budget: int, selectivities: Sequence[float]) -> list[int]:
    """|S_1|, ..., |S_K| of the multiphase sieve (arXiv:2310.02373 step 6): phase i keeps
    round(N * prod_{j<=i} a_j) for the given a_1..a_{K-1} (clipped to [B, |S_{i-1}|]); the last
    phase keeps exactly B, so the product of selectivities is B / N with no rounding drift."""
    if not 1 <= budget <= pool_size:
        raise InputError(f"budget must be in [1, pool size {pool_size}], got {budget}")
    if any(not 0 < a <= 1 for a in selectivities):
        raise ConfigError(f"selectivities must be in (0, 1], got {list(selectivities)}")
    sizes, frac, prev = [], 1.0, pool_size
    for a in selectivities:
        frac *= a
        prev = min(prev, max(budget, round(pool_size * frac)))
        sizes.append(prev)
    return sizes + [budget]


def secure_topk_standin(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores (1-D), ties broken by lower index; stands in for the secure
    QuickSelect of arXiv:2310.02373: only membership leaves this function, sorted by index."""
    if scores.ndim != 1 or not 0 <= k <= len(scores):
        raise InputError(f"need 1-D scores and 0 <= k <= {len(scores)}, got shape {tuple(scores.shape)}, k {k}")
    values = scores.detach().cpu().tolist()  # one transfer, not one per element
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long, device=scores.device)


def multiphase_select(pool_x: torch.Tensor, scorers: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                      sizes: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """SelectFormer's sieve (arXiv:2310.02373): phase i scores the survivors with ``scorers[i]``
    (x (n, 64) -> entropy (n,)) and keeps the top ``sizes[i]``. Returns (selected pool indices,
    survivors after each phase)."""
    check_pool(pool_x)
    if len(scorers) != len(sizes):
        raise ConfigError(f"{len(scorers)} scorers for {len(sizes)} phase sizes")
    alive, history = torch.arange(len(pool_x), device=pool_x.device), []
    for scorer, size in zip(scorers, sizes):
        with torch.no_grad():
            scores = scorer(pool_x[alive])
        alive = alive[secure_topk_standin(scores, size)]
        history.append(alive)
    return alive, history


def check_pool(pool_x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """Clear errors for an empty pool, NaN inputs or (when labels are given) a single class."""
    if pool_x.ndim < 2 or len(pool_x) == 0:
        raise InputError(f"the pool is empty or not batched (shape {tuple(pool_x.shape)})")
    if torch.isnan(pool_x).any():
        raise InputError("the pool contains NaN")
    if labels is not None and len(torch.unique(labels)) < 2:
        raise InputError("the data has a single class; selection and training need >= 2 classes")


def selection_cost(pool_size: int, sizes: Sequence[int], per_example: Sequence[float]) -> float:
    """Total cost of the sieve: |S_0| c_1 + |S_1| c_2 + ... (c_i = measured per-example MPC cost of
    proxy i, in seconds or bytes). Direct MPC selection = selection_cost(N, [B], [c_target])."""
    if len(sizes) != len(per_example):
        raise InputError(f"{len(sizes)} phases but {len(per_example)} per-example costs")
    inputs = [pool_size] + list(sizes[:-1])
    return float(sum(n * c for n, c in zip(inputs, per_example)))
