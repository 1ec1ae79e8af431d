"""DSEE: Dually Sparsity-Embedded Efficient tuning (Chen et al., arXiv:2111.00160).

The update of a frozen pretrained weight W (d_out x d_in) is low-rank plus sparse with a fixed support:
    h = W x + b + (alpha / r) (B (A x) + (S * Omega) x),   A ~ N(0, 0.02^2) (r x d_in), B = 0, S = 0,
|Omega| = N chosen before training (default "grebsmo": greedy low-rank + sparse split of W; "omp": N
largest |W|; "rp": random). Then the final weights are made sparse: global magnitude pruning
(unstructured) with Q/V ranked by the update magnitude ("ABS", the released scripts' mode), or
attention-head pruning scored by sum |dW_Q| + |dW_V| over each head's rows.

Works on any module tree holding ``nn.Linear`` children named ``query`` / ``value`` (BERT self-attention).
Inputs x (..., d_in) real; outputs (..., d_out).
"""
from typing import Literal

import torch
import torch.nn.functional as F

from honed.core.errors import InputError

OmegaMode = Literal["grebsmo", "omp", "rp"]
ScoreMode = Literal["ABS", "WABS", "W"]


def grebsmo_sparse(weight: torch.Tensor, outer: int = 100, inner: int = 2, tol: float = 0.01, grow: int = 5,
                   max_rank: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sparse residual S of the greedy low-rank + sparse split W ~ U V + S (DSEE "GreBsmo").

    weight (d_out, d_in). Each outer step alternates U <- Q(QR((W - S) V^T)), V <- U^T (W - S),
    S <- hard-threshold(W - U V, tol) ``inner`` times, then grows V by the first ``grow`` rows of R of
    QR(W - U V - S). (R) the rank stops growing at ``max_rank`` (the card gives no cap; without one the
    rank passes min(d_out, d_in) and S vanishes). Returns S (d_out, d_in).
    """
    w = weight.detach().float()
    v = torch.randn(1, w.shape[1], generator=generator, device=w.device)
    s = torch.zeros_like(w)
    for _ in range(outer):
        s = torch.zeros_like(w)
        for _ in range(inner):
            u = torch.linalg.qr((w - s) @ v.T).Q
            v = u.T @ (w - s)
            s = w - u @ v
            s = torch.where(s.abs() < tol, torch.zeros_like(s), s)
        if v.shape[0] < max_rank:
            r = torch.linalg.qr(w - u @ v - s).R
            v = torch.cat([v, r[:min(grow, max_rank - v.shape[0])]])
    return s


def select_support(weight: torch.Tensor, n: int, mode: OmegaMode = "grebsmo",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary mask Omega (same shape as ``weight``) with exactly ``n`` ones."""
    if not 0 <= n <= weight.numel():
        raise InputError(f"sparse_n must lie in [0, {weight.numel()}], got {n}")
    if mode == "grebsmo":
        score = grebsmo_sparse(weight, generator=generator).abs()
    elif mode == "omp":
        score = weight.detach().abs()
    elif mode == "rp":
        score = torch.rand(weight.shape, generator=generator, device=weight.device)
    else:
        raise InputError(f"omega mode must be grebsmo, omp or rp, got {mode!r}")
    mask = torch.zeros(weight.numel(), device=weight.device)
    mask[torch.argsort(score.flatten(), descending=True, stable=True)[:n]] = 1.0
    return mask.view_as(weight)


class DSEELinear(torch.nn.Module):
    """A frozen ``nn.Linear`` plus the DSEE update (alpha/r)(B A + S * Omega) (arXiv:2111.00160).

    Trainable: ``lora_a`` (r, d_in), ``lora_b`` (d_out, r), ``sparse`` (d_out, d_in; only the N entries
    on Omega get gradient). ``weight_mask`` (d_out, d_in) is all ones until pruning; once pruned the
    forward uses the merged (W + dW) * mask, so the deployed weight stays exactly sparse.
    """

    def __init__(self, base: torch.nn.Linear, rank: int = 16, alpha: float = 32.0, sparse_n: int = 16,
                 omega: OmegaMode = "grebsmo", generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1 or not alpha > 0:
            raise InputError(f"need rank >= 1 and alpha > 0, got rank={rank}, alpha={alpha}")
        w = base.weight.detach()
        self.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
        self.bias = None if base.bias is None else torch.nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        gen_device = generator.device if generator is not None else w.device
        a = torch.randn(rank, w.shape[1], generator=generator, device=gen_device) * 0.02
        self.lora_a = torch.nn.Parameter(a.to(w.device))
        self.lora_b = torch.nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device))
        self.sparse = torch.nn.Parameter(torch.zeros_like(w))
        self.register_buffer("omega", select_support(w, sparse_n, omega, generator))
        self.register_buffer("weight_mask", torch.ones_like(w))
        self.scale = alpha / rank
        self.pruned = False

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_b @ self.lora_a + self.sparse * self.omega)

    def merged_weight(self) -> torch.Tensor:
        return (self.weight + self.delta_weight()) * self.weight_mask

    def trainable_count(self) -> int:
        """r (d_in + d_out) + N: the card's formula (only Omega entries of S are free)."""
        return self.lora_a.numel() + self.lora_b.numel() + int(self.omega.sum().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pruned:
            return F.linear(x, self.merged_weight(), self.bias)
        low_rank = F.linear(F.linear(x, self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + self.scale * (low_rank + F.linear(x, self.sparse * self.omega))


def apply_dsee(model: torch.nn.Module, rank: int = 16, alpha: float = 32.0, sparse_n: int = 16,
               omega: OmegaMode = "grebsmo", targets: tuple[str, ...] = ("query", "value"),
               seed: int = 0) -> list[DSEELinear]:
    """Freeze every parameter of ``model`` and replace each ``nn.Linear`` child named in ``targets``
    by a :class:`DSEELinear`; ``sparse_n=0`` gives LoRA only. Returns the new modules in order."""
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    replaced = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, torch.nn.Linear):
                new = DSEELinear(child, rank, alpha, sparse_n, omega, generator)
                setattr(parent, name, new)
                replaced.append(new)
    if not replaced:
        raise InputError(f"no nn.Linear named {targets} found in the model")
    return replaced


def trainable_fraction(model: torch.nn.Module) -> float:
    """(adapter entries by the card's formula + other trainable params) / pretrained parameter count."""
    adapters = [m for m in model.modules() if isinstance(m, DSEELinear)]
    adapter_ids = {id(p) for m in adapters for p in (m.lora_a, m.lora_b, m.sparse)}
    others = [p for p in model.parameters() if id(p) not in adapter_ids]
    trainable = sum(m.trainable_count() for m in adapters) + sum(p.numel() for p in others if p.requires_grad)
    return trainable / sum(p.numel() for p in others)


def global_threshold_mask(scores: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """Masks zeroing exactly round(ratio * total) lowest-scoring entries across all ``scores``."""
    if not 0 <= ratio < 1:
        raise InputError(f"pruning ratio must lie in [0, 1), got {ratio}")
    flat = torch.cat([s.flatten() for s in scores])
    keep = torch.ones_like(flat)
    keep[torch.argsort(flat, stable=True)[:round(ratio * flat.numel())]] = 0.0
    return [m.view_as(s) for m, s in zip(torch.split(keep, [s.numel() for s in scores]), scores)]


@torch.no_grad()
def prune_unstructured(model: torch.nn.Module, ratio: float = 0.2, ratio_qv: float = 0.2,
                       score: ScoreMode = "ABS", other_names: tuple[str, ...] = ("key", "dense")) -> None:
    """Global L1 pruning of the frozen ``key`` / ``dense`` linears at ``ratio`` and, separately, of the
    DSEE Q/V weights at ``ratio_qv`` ranked by ``score``: "ABS" |dW| (released scripts), "WABS"
    |W + dW|, "W" |W|. Masks are fixed; re-train the adapters afterwards."""
    others = [m for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in other_names]
    if others and ratio > 0:
        for m, mask in zip(others, global_threshold_mask([m.weight.abs() for m in others], ratio)):
            m.weight.mul_(mask)
            if m.weight.requires_grad:  # DSEE freezes them; keep the mask if a user trains them
                m.weight.register_hook(lambda g, mask=mask: g * mask)
    qv = [m for m in model.modules() if isinstance(m, DSEELinear)]
    if score not in ("ABS", "WABS", "W"):
        raise InputError(f"score must be ABS, WABS or W, got {score!r}")
    pick = {"ABS": lambda m: m.delta_weight().abs(), "WABS": lambda m: (m.weight + m.delta_weight()).abs(),
            "W": lambda m: m.weight.abs()}[score]
    for m, mask in zip(qv, global_threshold_mask([pick(m) for m in qv], ratio_qv)):
        m.weight_mask.copy_(mask)
        m.pruned = True


def head_scores(attention: torch.nn.Module, num_heads: int, score: ScoreMode = "ABS") -> torch.Tensor:
    """Per-head score (num_heads,): sum over each head's output rows of |dW_Q| + |dW_V| ("ABS");
    "WABS" adds |W_Q| + |W_V|. ``attention`` has DSEE ``query`` and ``value``."""
    total = 0
    for proj in (attention.query, attention.value):
        mat = proj.delta_weight().abs()
        if score == "WABS":
            mat = mat + proj.weight.abs()
        total = total + mat.sum(1)
    return total.view(num_heads, -1).sum(1)


@torch.no_grad()
def prune_heads(self_attention: torch.nn.Module, output_dense: torch.nn.Linear, heads: list[int]) -> None:
    """Remove ``heads`` from a BERT self-attention: rows of Q, K, V (and of the Q/V adapters' B, S,
    Omega, mask) and the matching input columns of the attention output projection."""
    n, size = self_attention.num_attention_heads, self_attention.attention_head_size
    keep_heads = [h for h in range(n) if h not in set(heads)]
    rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep_heads])
    for name in ("query", "key", "value"):
        proj = getattr(self_attention, name)
        names = ("weight", "bias", "lora_b", "sparse") if isinstance(proj, DSEELinear) else ("weight", "bias")
        for attr in names:
            p = getattr(proj, attr)
            if p is not None:
                setattr(proj, attr, torch.nn.Parameter(p[rows].clone(), requires_grad=p.requires_grad))
        if isinstance(proj, DSEELinear):
            proj.omega, proj.weight_mask = proj.omega[rows].clone(), proj.weight_mask[rows].clone()
        else:
            proj.out_features = len(rows)
    output_dense.weight = torch.nn.Parameter(output_dense.weight[:, rows].clone(),
                                             requires_grad=output_dense.weight.requires_grad)
    output_dense.in_features = len(rows)
    self_attention.num_attention_heads = len(keep_heads)
    self_attention.all_head_size = len(rows)


def prune_lowest_heads(encoder: torch.nn.Module, per_layer: int = 3, score: ScoreMode = "ABS") -> int:
    """Remove the ``per_layer`` lowest-scoring heads of every BERT layer; returns heads removed."""
    removed = 0
    for layer in encoder.encoder.layer:
        attn = layer.attention.self
        if per_layer >= attn.num_attention_heads:
            raise InputError(f"cannot remove {per_layer} of {attn.num_attention_heads} heads")
        order = torch.argsort(head_scores(attn, attn.num_attention_heads, score), stable=True)
        prune_heads(attn, layer.attention.output.dense, order[:per_layer].tolist())
        removed += per_layer
    return removed


def sparse_linear_macs(model: torch.nn.Module, tokens: int) -> int:
    """MACs of all linear maps per forward of ``tokens`` tokens, counting only non-zero weights."""
    total = 0
    for m in model.modules():
        if isinstance(m, DSEELinear):
            total += int((m.merged_weight() != 0).sum()) if m.pruned else int((m.weight != 0).sum())
        elif isinstance(m, torch.nn.Linear):
            total += int((m.weight != 0).sum())
    return total * tokens
