"""Representation distillation losses for GNNs: LSP, GSP and G-CRD, plus logit KD
(On Representation Knowledge Distillation for Graph Neural Networks, Joshi et al., arXiv:2111.04964).

Plain PyTorch, no torch_geometric. Every loss takes node embeddings of shape (N, D) - the student's
``S`` (N, D_s) and the frozen teacher's ``T`` (N, D_t), rows aligned on the same N nodes (the card
computes all losses on the training nodes V_tr only) - and, for LSP, an ``edge_index`` (2, E) int64
over those N nodes (see :func:`induced_subgraph` to restrict a graph to V_tr and relabel it).

* :func:`kd_loss` - Hinton KD: ``(1 - alpha) CE + alpha T^2 KL(softmax(z_t/T) || softmax(z/T))``.
* :class:`LSPLoss` / :func:`lsp_loss` - Local Structure Preserving (Yang et al. 2020): kernel similarity
  on every edge, softmax over the incoming edges of each target node, KL(teacher || student) averaged
  over edges. No projection, so widths may differ.
* :class:`GSPLoss` - Global Structure Preserving: trainable heads Linear -> BN -> ReLU for the student
  AND the teacher (teacher embeddings stay fixed, its head learns), all-pairs kernel matrices, MSE.
* :class:`GCRDLoss` - Graph Contrastive Representation Distillation: heads as GSP (256-d), L2
  normalisation, InfoNCE ``CE(s_hat t_hat^T / tau, arange(n))``.

Teacher embeddings are detached inside every loss: gradients reach the student and the heads only.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count, check_number
from honed.core.seed import draw_device

KERNELS = ("cosine", "poly", "l2", "rbf")


def _check_embeddings(student: torch.Tensor, teacher: torch.Tensor) -> None:
    for name, x in (("student embeddings", student), ("teacher embeddings", teacher)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise InputError(f"{name} must be a non-empty (N, D) tensor, got shape "
                             f"{tuple(getattr(x, 'shape', ()))}")
        if not torch.isfinite(x).all():
            raise InputError(f"{name} contain NaN or inf")
    if student.shape[0] != teacher.shape[0]:
        raise InputError(f"student and teacher embeddings must hold the same N nodes, got "
                         f"{student.shape[0]} and {teacher.shape[0]}")


def check_edge_index(edge_index: torch.Tensor, num_nodes: int) -> None:
    """Joshi et al. (arXiv:2111.04964): raise InputError unless ``edge_index`` is a (2, E) int64
    tensor of node ids in [0, num_nodes)."""
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise InputError(f"edge_index must be a (2, E) tensor, got shape {tuple(getattr(edge_index, 'shape', ()))}")
    if edge_index.dtype != torch.int64:
        raise InputError(f"edge_index must be int64, got {edge_index.dtype}")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise InputError(f"edge_index holds node ids outside [0, {num_nodes})")


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float = 0.9, temperature: float = 4.0) -> torch.Tensor:
    """Logit KD as used by Joshi et al. (arXiv:2111.04964), after Hinton et al. 2015.

    ``(1 - alpha) * CE(z, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z / T))`` with the KL summed
    over classes and averaged over the N rows (``batchmean``). Logits (N, C) real, labels (N,) int64 in
    [0, C); alpha in [0, 1]; T > 0. The teacher logits are detached.
    """
    _check_embeddings(student_logits, teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise InputError(f"student and teacher logits must match, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    if labels.shape != (student_logits.shape[0],):
        raise InputError(f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    alpha = check_number(alpha, "alpha")
    if alpha > 1:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    t = check_number(temperature, "temperature", strict=True)
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


def segment_softmax(scores: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Joshi et al. (arXiv:2111.04964), LSP normalisation: softmax of ``scores`` (E,) within each
    group of equal ``index`` (E,) int64 in [0, num_segments) - e.g. over the incoming edges of each
    target node. Numerically stable (the per-segment max is subtracted); returns (E,)."""
    if scores.dim() != 1 or index.shape != scores.shape:
        raise InputError(f"scores and index must both be (E,), got {tuple(scores.shape)} and {tuple(index.shape)}")
    seg_max = torch.full((num_segments,), -math.inf, dtype=scores.dtype, device=scores.device)
    seg_max = seg_max.scatter_reduce(0, index, scores.detach(), reduce="amax", include_self=True)
    exp = (scores - seg_max[index]).exp()
    denom = torch.zeros(num_segments, dtype=scores.dtype, device=scores.device).index_add(0, index, exp)
    return exp / denom[index]


def edge_similarity(a: torch.Tensor, b: torch.Tensor, kernel: str) -> torch.Tensor:
    """Joshi et al. (arXiv:2111.04964): row-wise kernel k(a_i, b_i) for (E, D) inputs -> (E,).
    cosine; poly = cosine^2; l2 = ||a_i - b_i||; rbf = exp(-||a_i - b_i||^2 / 2)."""
    kernel = _check_kernel(kernel)
    if kernel in ("cosine", "poly"):
        cos = F.cosine_similarity(a, b, dim=-1)
        return cos if kernel == "cosine" else cos ** 2
    sq = (a - b).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt() if kernel == "l2" else torch.exp(-0.5 * sq)


def lsp_loss(student: torch.Tensor, teacher: torch.Tensor, edge_index: torch.Tensor,
             kernel: str = "rbf") -> torch.Tensor:
    """Local Structure Preserving loss (Yang et al. 2020) as in Joshi et al. (arXiv:2111.04964).

    ``student`` (N, D_s), ``teacher`` (N, D_t) finite; ``edge_index`` (2, E) int64 of edges j -> i
    (row 0 source, row 1 target) over the same N nodes. The similarity of each edge is normalised by a
    softmax over the incoming edges of its target; returns ``mean_e t_e * (log t_e - log s_e)`` (>= 0,
    0 when the two distributions agree; 0 for a graph without edges).
    """
    _check_embeddings(student, teacher)
    n = student.shape[0]
    check_edge_index(edge_index, n)
    if edge_index.shape[1] == 0:
        return student.sum() * 0.0
    src, dst = edge_index
    teacher = teacher.detach()
    p_s = segment_softmax(edge_similarity(student[src], student[dst], kernel), dst, n)
    p_t = segment_softmax(edge_similarity(teacher[src], teacher[dst], kernel), dst, n)
    return (p_t * (p_t.clamp_min(1e-30).log() - p_s.clamp_min(1e-30).log())).mean()


class LSPLoss(nn.Module):
    """Local Structure Preserving loss module (Joshi et al., arXiv:2111.04964); no parameters.
    ``forward(student (N, D_s), teacher (N, D_t), edge_index (2, E) int64) -> scalar``; see :func:`lsp_loss`."""

    def __init__(self, kernel: str = "rbf") -> None:
        super().__init__()
        self.kernel = _check_kernel(kernel)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return lsp_loss(student, teacher, edge_index, self.kernel)


def pairwise_similarity(x: torch.Tensor, kernel: str) -> torch.Tensor:
    """Joshi et al. (arXiv:2111.04964), GSP: all-pairs kernel matrix (n, n) of rows of x (n, D).
    cosine / poly on L2-normalised rows; l2 distances; rbf exp(-||x_i - x_j||^2 / 2)."""
    kernel = _check_kernel(kernel)
    if kernel in ("cosine", "poly"):
        unit = F.normalize(x, dim=-1)
        cos = unit @ unit.T
        return cos if kernel == "cosine" else cos ** 2
    sq = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt() if kernel == "l2" else torch.exp(-0.5 * sq)


def subsample_rows(n: int, max_samples: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor | None:
    """Joshi et al. (arXiv:2111.04964): ``max_samples`` distinct row ids of n drawn without
    replacement (int64), or None when n <= max_samples (use every row). Drawn on the generator's device
    (the CPU without one), returned on ``device`` (default: there)."""
    if n <= max_samples:
        return None
    draw = draw_device(generator, "cpu" if device is None else device)
    return torch.randperm(n, generator=generator, device=draw)[:max_samples].to(draw if device is None else device)


class ProjectionHead(nn.Sequential):
    """Joshi et al. (arXiv:2111.04964): Linear(in_dim, out_dim) -> BatchNorm1d -> ReLU, mapping
    (N, in_dim) embeddings into the shared space of GSP / G-CRD. Discarded at test time."""

    def __init__(self, in_dim: int, out_dim: int, device: torch.device | str | None = None) -> None:
        check_count(in_dim, "in_dim")
        check_count(out_dim, "out_dim")
        super().__init__(nn.Linear(in_dim, out_dim, device=device), nn.BatchNorm1d(out_dim, device=device),
                         nn.ReLU())


class _ProjectedLoss(nn.Module):
    """Shared part of GSP and G-CRD: two trainable heads (student and teacher), subsampling."""

    def __init__(self, student_dim: int, teacher_dim: int, proj_dim: int, max_samples: int,
                 project: bool, device: torch.device | str | None) -> None:
        super().__init__()
        self.max_samples = check_count(max_samples, "max_samples", minimum=2)
        if project:
            self.student_head = ProjectionHead(student_dim, proj_dim, device)
            self.teacher_head = ProjectionHead(teacher_dim, proj_dim, device)
        else:
            if student_dim != teacher_dim:
                raise InputError(f"project=False needs equal widths, got {student_dim} and {teacher_dim}")
            self.student_head, self.teacher_head = nn.Identity(), nn.Identity()
        self.dims = (student_dim, teacher_dim)

    def project(self, student: torch.Tensor, teacher: torch.Tensor,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_embeddings(student, teacher)
        if (student.shape[1], teacher.shape[1]) != self.dims:
            raise InputError(f"expected widths {self.dims}, got {(student.shape[1], teacher.shape[1])}")
        if student.shape[0] < 2:
            raise InputError("need at least 2 nodes")
        rows = subsample_rows(student.shape[0], self.max_samples, generator, student.device)
        if rows is not None:
            student, teacher = student[rows], teacher[rows]
        return self.student_head(student), self.teacher_head(teacher.detach())


class GSPLoss(_ProjectedLoss):
    """Global Structure Preserving loss (Joshi et al., arXiv:2111.04964).

    ``forward(student (N, D_s), teacher (N, D_t)) -> MSE(K(h_s(S)), K(h_t(T)))`` over all pairs of the
    (at most ``max_samples``) rows. Both heads are trainable parameters of this module - put them in the
    optimiser; the teacher embeddings are detached. ``project=False`` uses identity heads (equal widths).
    Card betas per kernel: rbf 1e5, l2 1, poly / cosine 100.
    """

    def __init__(self, student_dim: int, teacher_dim: int, kernel: str = "cosine", proj_dim: int = 128,
                 max_samples: int = 4096, project: bool = True, device: torch.device | str | None = None) -> None:
        super().__init__(student_dim, teacher_dim, proj_dim, max_samples, project, device)
        self.kernel = _check_kernel(kernel)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        s, t = self.project(student, teacher, generator)
        return F.mse_loss(pairwise_similarity(s, self.kernel), pairwise_similarity(t, self.kernel))


def contrastive_alignment_loss(student: torch.Tensor, teacher: torch.Tensor,
                               temperature: float = 0.075) -> torch.Tensor:
    """G-CRD's InfoNCE (Joshi et al., arXiv:2111.04964) on already projected (n, d) embeddings:
    rows are L2-normalised, logits = s_hat t_hat^T / tau (n, n), loss = CE(logits, arange(n)) - student
    node i must pick its own teacher node among all n. Random unit vectors at tau = 1 give ~log n."""
    _check_embeddings(student, teacher)
    if student.shape[1] != teacher.shape[1]:
        raise InputError(f"projected widths must match, got {student.shape[1]} and {teacher.shape[1]}")
    tau = check_number(temperature, "temperature", strict=True)
    logits = F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(student.shape[0], device=student.device))


class GCRDLoss(_ProjectedLoss):
    """Graph Contrastive Representation Distillation loss (Joshi et al., arXiv:2111.04964).

    ``forward(student (N, D_s), teacher (N, D_t)) -> scalar``: both embeddings pass their trainable
    head (Linear -> BN -> ReLU to ``proj_dim``; the teacher head learns too, the teacher embeddings are
    detached), are L2-normalised and scored by :func:`contrastive_alignment_loss` at ``temperature``
    (card 0.075) over at most ``max_samples`` rows. Card weight beta = 0.1 alone, 0.01-0.05 with KD.
    """

    def __init__(self, student_dim: int, teacher_dim: int, proj_dim: int = 256, temperature: float = 0.075,
                 max_samples: int = 16384, project: bool = True, device: torch.device | str | None = None) -> None:
        super().__init__(student_dim, teacher_dim, proj_dim, max_samples, project, device)
        self.temperature = check_number(temperature, "temperature", strict=True)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        s, t = self.project(student, teacher, generator)
        return contrastive_alignment_loss(s, t, self.temperature)


def induced_subgraph(edge_index: torch.Tensor, nodes: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Joshi et al. (arXiv:2111.04964), LSP on V_tr: the edges of ``edge_index`` (2, E) int64 whose
    two ends are both in ``nodes`` (K,) int64 (distinct ids in [0, num_nodes)), relabelled so node
    ``nodes[k]`` becomes k. Returns (2, E') int64."""
    check_edge_index(edge_index, num_nodes)
    check_edge_index(nodes.reshape(1, -1).expand(2, -1), num_nodes)
    new_id = torch.full((num_nodes,), -1, dtype=torch.int64, device=edge_index.device)
    new_id[nodes] = torch.arange(nodes.numel(), device=edge_index.device)
    if (new_id >= 0).sum() != nodes.numel():
        raise InputError("nodes must be distinct")
    mapped = new_id[edge_index]
    keep = (mapped >= 0).all(0)
    return mapped[:, keep]
