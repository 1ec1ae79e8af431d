"""Small GCN / GAT-like node classifiers in plain torch for the G-CRD reproduction
(On Representation Knowledge Distillation for Graph Neural Networks, arXiv:2111.04964).

``forward(x (N, F), graph) -> (embedding (N, hidden), logits (N, C))`` where ``embedding`` is the
penultimate representation the distillation losses use: the output of the last hidden block
(conv -> BatchNorm -> ReLU -> dropout). ``graph`` is a :class:`GraphInput` built once per edge set.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count


@dataclass
class GraphInput:
    """Joshi et al. (arXiv:2111.04964) reproduction: ``adjacency`` the sparse (N, N) matrix
    D^-1/2 (A + I) D^-1/2 (GCN) and ``edge_index`` (2, E') int64 with self loops (GAT)."""

    adjacency: torch.Tensor
    edge_index: torch.Tensor


def graph_input(edge_index: torch.Tensor, num_nodes: int) -> GraphInput:
    """Joshi et al. (arXiv:2111.04964) reproduction: add self loops to ``edge_index`` (2, E) int64
    and build the symmetric-normalised sparse adjacency of GCN (Kipf & Welling)."""
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.int64:
        raise InputError(f"edge_index must be a (2, E) int64 tensor, got {tuple(edge_index.shape)} {edge_index.dtype}")
    loops = torch.arange(num_nodes, device=edge_index.device).expand(2, -1)
    full = torch.cat([edge_index[:, edge_index[0] != edge_index[1]], loops], 1)
    deg = torch.zeros(num_nodes, device=edge_index.device).index_add_(
        0, full[1], torch.ones(full.shape[1], device=edge_index.device))
    norm = deg[full[0]].rsqrt() * deg[full[1]].rsqrt()
    adj = torch.sparse_coo_tensor(full.flip(0), norm, (num_nodes, num_nodes), check_invariants=False).coalesce()
    return GraphInput(adj, full)


class GCNConv(nn.Module):
    """GCN layer (Kipf & Welling) used in the G-CRD reproduction (arXiv:2111.04964): A_hat (X W) + b."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor, graph: GraphInput) -> torch.Tensor:
        return torch.sparse.mm(graph.adjacency, self.linear(x)) + self.bias


class GATConv(nn.Module):
    """Multi-head graph attention layer (Velickovic et al.) in plain torch, for the G-CRD teacher
    (arXiv:2111.04964): per target i, softmax_j LeakyReLU(a_l.Wx_j + a_r.Wx_i) over incoming edges j -> i
    (self loops included); heads are concatenated, so the output is (N, heads * head_dim)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int = 4) -> None:
        super().__init__()
        if out_dim % heads:
            raise InputError(f"out_dim {out_dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, out_dim // heads
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.att_src = nn.Parameter(torch.randn(heads, self.head_dim) * self.head_dim ** -0.5)
        self.att_dst = nn.Parameter(torch.randn(heads, self.head_dim) * self.head_dim ** -0.5)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor, graph: GraphInput) -> torch.Tensor:
        from honed.distill.gnn_kd import segment_softmax

        n = x.shape[0]
        h = self.linear(x).view(n, self.heads, self.head_dim)
        src, dst = graph.edge_index
        score = F.leaky_relu((h * self.att_src).sum(-1)[src] + (h * self.att_dst).sum(-1)[dst], 0.2)
        alpha = torch.stack([segment_softmax(score[:, k], dst, n) for k in range(self.heads)], 1)
        out = torch.zeros_like(h).index_add_(0, dst, h[src] * alpha.unsqueeze(-1))
        return out.reshape(n, -1) + self.bias


class NodeClassifier(nn.Module):
    """G-CRD reproduction (arXiv:2111.04964): ``layers`` graph convolutions (``gcn`` or ``gat``),
    BatchNorm + ReLU + dropout between them. Input x (N, in_dim) real; returns (embedding of the last
    hidden block (N, hidden), logits (N, num_classes))."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, layers: int = 2, dropout: float = 0.5,
                 conv: str = "gcn", heads: int = 4, device: torch.device | str | None = None) -> None:
        super().__init__()
        check_count(layers, "layers", 2)
        if conv not in ("gcn", "gat"):
            raise InputError(f"conv must be 'gcn' or 'gat', got {conv!r}")
        if not 0 <= dropout < 1:
            raise InputError(f"dropout must lie in [0, 1), got {dropout}")
        make = (lambda i, o: GCNConv(i, o)) if conv == "gcn" else (lambda i, o: GATConv(i, o, heads))
        dims = [in_dim] + [hidden] * (layers - 1)
        self.convs = nn.ModuleList(make(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in dims[1:])
        self.head = GCNConv(hidden, num_classes)
        self.dropout = dropout
        self.to(device)

    def forward(self, x: torch.Tensor, graph: GraphInput) -> tuple[torch.Tensor, torch.Tensor]:
        for conv, norm in zip(self.convs, self.norms):
            x = F.dropout(F.relu(norm(conv(x, graph))), self.dropout, self.training)
        return x, self.head(x, graph)
