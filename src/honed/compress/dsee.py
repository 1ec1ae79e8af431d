"""DSEE: Dually Sparsity-Embedded Efficient tuning (Chen et al., arXiv:2111.00160).

The update of a frozen pretrained weight W (d_out x d_in) is low-rank plus sparse with a fixed support:
    h = W x + b + (alpha / r) (B (A x) + (S * Omega) x),   A ~ N(0, 0.02^2) (r x d_in), B = 0, S = 0,
|Omega| = N chosen before training (default "grebsmo": greedy low-rank + sparse split of W; "omp": N
largest |W|; "rp": random). Then the final weights are made sparse: global magnitude pruning
(unstructured) with Q/V ranked by the update magnitude ("ABS", the released scripts' mode), or
attention-head pruning scored by sum |dW_Q| + |dW_V| over each head's rows.

Works on any module tree holding ``nn.Linear`` children named ``query`` / ``value`` (BERT self-attention).
Inputs x (..., d_in) real; outputs (..., d_out). :func:`merge_dsee` folds the adapters back into plain
``nn.Linear`` layers for deployment (what LoRA users know as merge-and-unload).
"""
from typing import Literal

import torch
import torch.nn.functional as F

from honed.core.errors import InputError
from honed.core.seed import draw_device

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
    v = torch.randn(1, w.shape[1], generator=generator, device=draw_device(generator, w.device)).to(w.device)
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
        score = torch.rand(weight.shape, generator=generator, device=draw_device(generator, weight.device))
        score = score.to(weight.device)
    else:
        raise InputError(f"omega mode must be grebsmo, omp or rp, got {mode!r}")
    mask = torch.zeros(weight.numel(), device=weight.device)
    mask[torch.argsort(score.flatten(), descending=True, stable=True)[:n]] = 1.0
    return mask.view_as(weight)


class DSEELinear(torch.nn.Module):
    """A frozen ``nn.Linear`` plus the DSEE update (alpha/r)(B A + S_Omega) (arXiv:2111.00160).

    Trainable: ``lora_a`` (r, d_in), ``lora_b`` (d_out, r) and ``sparse_values`` (N,), the entries of S
    on the fixed support Omega, whose flat positions in the (d_out, d_in) weight are the buffer
    ``sparse_index`` (N,) (so the parameters that require grad are exactly the r (d_in + d_out) + N
    trained numbers). ``weight_mask`` (d_out, d_in) is all ones until pruning; once pruned the forward
    uses the merged (W + dW) * mask, so the deployed weight stays exactly sparse.
    """

    def __init__(self, base: torch.nn.Linear, rank: int = 16, alpha: float = 32.0, sparse_n: int = 16,
                 omega: OmegaMode = "grebsmo", generator: torch.Generator | None = None):
        super().__init__()
        _check_adapter(base, rank, alpha, sparse_n, omega)
        w = base.weight.detach()
        self.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
        self.bias = None if base.bias is None else torch.nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        a = torch.randn(rank, w.shape[1], generator=generator, device=draw_device(generator, w.device)) * 0.02
        self.lora_a = torch.nn.Parameter(a.to(w.device))
        self.lora_b = torch.nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device))
        support = select_support(w, sparse_n, omega, generator)
        self.register_buffer("sparse_index", support.flatten().nonzero().flatten())
        self.sparse_values = torch.nn.Parameter(torch.zeros(len(self.sparse_index), device=w.device))
        self.register_buffer("weight_mask", torch.ones_like(w))
        self.scale = alpha / rank
        self.pruned = False

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]

    @property
    def omega(self) -> torch.Tensor:
        """The support Omega as a (d_out, d_in) 0/1 float mask."""
        mask = torch.zeros(self.weight.numel(), device=self.weight.device)
        mask[self.sparse_index] = 1.0
        return mask.view_as(self.weight)

    def sparse_update(self) -> torch.Tensor:
        """S_Omega as a dense (d_out, d_in) tensor: ``sparse_values`` on Omega, 0 elsewhere."""
        flat = self.sparse_values.new_zeros(self.weight.numel())
        return flat.scatter(0, self.sparse_index, self.sparse_values).view_as(self.weight)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_b @ self.lora_a + self.sparse_update())

    def merged_weight(self) -> torch.Tensor:
        return (self.weight + self.delta_weight()) * self.weight_mask

    def trainable_count(self) -> int:
        """r (d_in + d_out) + N: the card's formula, equal to the adapter's parameter count."""
        return self.lora_a.numel() + self.lora_b.numel() + self.sparse_values.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pruned:
            return F.linear(x, self.merged_weight(), self.bias)
        low_rank = F.linear(F.linear(x, self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + self.scale * (low_rank + F.linear(x, self.sparse_update()))


def _check_adapter(base: torch.nn.Linear, rank: int, alpha: float, sparse_n: int, omega: str, name: str = "") -> None:
    where = f" ('{name}')" if name else ""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 or not alpha > 0:
        raise InputError(f"need an integer rank >= 1 and alpha > 0, got rank={rank!r}, alpha={alpha!r}")
    if omega not in ("grebsmo", "omp", "rp"):
        raise InputError(f"omega mode must be grebsmo, omp or rp, got {omega!r}")
    if isinstance(sparse_n, bool) or not isinstance(sparse_n, int) or not 0 <= sparse_n <= base.weight.numel():
        raise InputError(f"sparse_n must be an integer in [0, {base.weight.numel()}]{where}, got {sparse_n!r}")
    if not torch.isfinite(base.weight).all() or (base.bias is not None and not torch.isfinite(base.bias).all()):
        raise InputError(f"the pretrained linear{where} holds NaN or infinite weights")


def apply_dsee(model: torch.nn.Module, rank: int = 16, alpha: float = 32.0, sparse_n: int = 16,
               omega: OmegaMode = "grebsmo", targets: tuple[str, ...] = ("query", "value"),
               seed: int = 0, keep_trainable: tuple[str, ...] = ()) -> list[DSEELinear]:
    """Freeze every parameter of ``model`` except those whose name starts with one of
    ``keep_trainable`` (e.g. ``("classifier",)``, the task head the card trains) and replace each
    ``nn.Linear`` child named in ``targets`` by a :class:`DSEELinear`; ``sparse_n=0`` gives LoRA only.
    Everything is validated first: a refused call leaves the model as it was. Returns the new modules."""
    found = [(f"{pname}.{name}".lstrip("."), parent, name, child) for pname, parent in model.named_modules()
             for name, child in parent.named_children() if name in targets and isinstance(child, torch.nn.Linear)]
    if not found:
        raise InputError(f"no nn.Linear named {targets} found in the model")
    for qualified, _, _, child in found:
        _check_adapter(child, rank, alpha, sparse_n, omega, qualified)
    names = [n for n, _ in model.named_parameters()]
    unmatched = [k for k in keep_trainable if not any(n == k or n.startswith(k + ".") for n in names)]
    if unmatched:
        raise InputError(f"keep_trainable names no parameters: {unmatched}")
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        p.requires_grad_(any(name == k or name.startswith(k + ".") for k in keep_trainable))
    replaced = []
    for _, parent, name, child in found:
        new = DSEELinear(child, rank, alpha, sparse_n, omega, generator)
        setattr(parent, name, new)
        replaced.append(new)
    return replaced


def trainable_fraction(model: torch.nn.Module) -> float:
    """Parameters that require grad (adapters: r (d_in + d_out) + N each, plus e.g. a task head) over
    the pretrained parameter count (every parameter outside the adapters)."""
    adapters = [m for m in model.modules() if isinstance(m, DSEELinear)]
    adapter_ids = {id(p) for m in adapters for p in (m.lora_a, m.lora_b, m.sparse_values)}
    pretrained = sum(p.numel() for p in model.parameters() if id(p) not in adapter_ids)
    if pretrained == 0:
        raise InputError("the model has no pretrained parameters to compare with")
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / pretrained


@torch.no_grad()
def merge_dsee(model: torch.nn.Module) -> torch.nn.Module:
    """DSEE deployment (arXiv:2111.00160): in place, every :class:`DSEELinear` becomes a plain
    ``nn.Linear`` holding (W + dW) * mask and the bias, so the model is again the architecture it was
    built from (a transformers model can then ``save_pretrained`` / ``from_pretrained``; a head-pruned
    one has fewer heads than its config says and only works in memory). Returns ``model``."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, DSEELinear)]
    if not layers:
        raise InputError("the model holds no DSEE adapter to merge (apply_dsee first)")
    for name, layer in layers:
        d_out, d_in = layer.weight.shape
        plain = torch.nn.Linear(d_in, d_out, bias=layer.bias is not None, device=layer.weight.device,
                                dtype=layer.weight.dtype)
        plain.weight.copy_(layer.merged_weight())
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
        plain.requires_grad_(layer.weight.requires_grad)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


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
    |W + dW|, "W" |W|. Masks are fixed; re-train the adapters afterwards. Inputs are checked before
    any weight changes."""
    for name, value in (("ratio", ratio), ("ratio_qv", ratio_qv)):
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise InputError(f"pruning {name} must lie in [0, 1), got {value!r}")
    if score not in ("ABS", "WABS", "W"):
        raise InputError(f"score must be ABS, WABS or W, got {score!r}")
    others = [m for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in other_names]
    qv = [m for m in model.modules() if isinstance(m, DSEELinear)]
    if not qv:
        raise InputError("the model holds no DSEE adapter (apply_dsee first)")
    if others and ratio > 0:
        for m, mask in zip(others, global_threshold_mask([m.weight.abs() for m in others], ratio)):
            m.weight.mul_(mask)
            if m.weight.requires_grad:  # DSEE freezes them; keep the mask if a user trains them
                m.weight.register_hook(lambda g, mask=mask: g * mask)
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
    """Remove ``heads`` from a BERT self-attention: rows of Q, K, V (and of the Q/V adapters' B, S_Omega
    and mask) and the matching input columns of the attention output projection."""
    n, size = self_attention.num_attention_heads, self_attention.attention_head_size
    keep_heads = [h for h in range(n) if h not in set(heads)]
    device = self_attention.query.weight.device
    rows = torch.cat([torch.arange(h * size, (h + 1) * size, device=device) for h in keep_heads])
    for name in ("query", "key", "value"):
        proj = getattr(self_attention, name)
        if isinstance(proj, DSEELinear):
            _drop_sparse_rows(proj, rows)
        names = ("weight", "bias", "lora_b") if isinstance(proj, DSEELinear) else ("weight", "bias")
        for attr in names:
            p = getattr(proj, attr)
            if p is not None:
                setattr(proj, attr, torch.nn.Parameter(p[rows].clone(), requires_grad=p.requires_grad))
        if isinstance(proj, DSEELinear):
            proj.weight_mask = proj.weight_mask[rows].clone()
        else:
            proj.out_features = len(rows)
    output_dense.weight = torch.nn.Parameter(output_dense.weight[:, rows].clone(),
                                             requires_grad=output_dense.weight.requires_grad)
    output_dense.in_features = len(rows)
    self_attention.num_attention_heads = len(keep_heads)
    self_attention.all_head_size = len(rows)


def _drop_sparse_rows(proj: DSEELinear, rows: torch.Tensor) -> None:
    """Keep the S_Omega entries of ``rows`` (sorted output rows) and renumber their flat positions."""
    d_out, d_in = proj.weight.shape
    new_row = torch.full((d_out,), -1, dtype=torch.long, device=proj.sparse_index.device)
    new_row[rows.to(new_row.device)] = torch.arange(len(rows), device=new_row.device)
    mapped = new_row[proj.sparse_index // d_in]
    kept = mapped >= 0
    proj.sparse_index = mapped[kept] * d_in + proj.sparse_index[kept] % d_in
    values = proj.sparse_values
    proj.sparse_values = torch.nn.Parameter(values[kept].clone(), requires_grad=values.requires_grad)


def attention_blocks(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Linear]]:
    """(self-attention, output projection) of every BERT-style attention block of ``model`` (a module
    with ``.self`` holding query/key/value and ``num_attention_heads``, and ``.output.dense``), e.g.
    BertModel, BertForSequenceClassification or RobertaModel, in module order."""
    blocks = []
    for module in model.modules():
        attn, out = getattr(module, "self", None), getattr(getattr(module, "output", None), "dense", None)
        if isinstance(attn, torch.nn.Module) and isinstance(out, torch.nn.Linear) and \
                all(hasattr(attn, a) for a in ("query", "key", "value", "num_attention_heads", "attention_head_size")):
            blocks.append((attn, out))
    return blocks


def prune_lowest_heads(encoder: torch.nn.Module, per_layer: int = 3, score: ScoreMode = "ABS") -> int:
    """Remove the ``per_layer`` (0 <= per_layer < heads) lowest-scoring heads of every BERT-style
    attention block of ``encoder`` (see :func:`attention_blocks`; Q and V must carry DSEE adapters);
    every layer is checked before any is pruned. Returns the number of heads removed."""
    if score not in ("ABS", "WABS", "W"):
        raise InputError(f"score must be ABS, WABS or W, got {score!r}")
    blocks = attention_blocks(encoder)
    if not blocks:
        raise InputError(f"{type(encoder).__name__} has no BERT-style attention block (.self.query/key/value "
                         "and .output.dense) whose heads could be pruned")
    for attn, _ in blocks:
        heads = attn.num_attention_heads
        if isinstance(per_layer, bool) or not isinstance(per_layer, int) or not 0 <= per_layer < heads:
            raise InputError(f"per_layer must be an integer in [0, {heads}) for {heads} heads, got {per_layer!r}")
        if not (isinstance(attn.query, DSEELinear) and isinstance(attn.value, DSEELinear)):
            raise InputError("head scores need DSEE adapters on query and value (apply_dsee first)")
    for attn, out in blocks:
        order = torch.argsort(head_scores(attn, attn.num_attention_heads, score), stable=True)
        prune_heads(attn, out, order[:per_layer].tolist())
    return per_layer * len(blocks)


def sparse_linear_macs(model: torch.nn.Module, tokens: int) -> int:
    """MACs of all linear maps per forward of ``tokens`` tokens, counting only non-zero weights."""
    total = 0
    for m in model.modules():
        if isinstance(m, DSEELinear):
            total += int((m.merged_weight() != 0).sum()) if m.pruned else int((m.weight != 0).sum())
        elif isinstance(m, torch.nn.Linear):
            total += int((m.weight != 0).sum())
    return total * tokens
