"""Synthetic stochastic-block-model node classification graph for the G-CRD reproduction
(On Representation Knowledge Distillation for Graph Neural Networks, arXiv:2111.04964, scaled down).

Communities are the classes. Features are a class mean plus heavy Gaussian noise, so a node's own
features say little and neighbourhood aggregation is needed; a share of random inter-community
("noisy") edges is then injected. Built from torch only and fully determined by ``seed``.
"""
from dataclasses import dataclass

import torch

from honed.core.errors import InputError, check_count, check_number


@dataclass
class NodeGraph:
    """A node classification graph: ``x`` (N, F) float, ``y`` (N,) int64 in [0, num_classes),
    ``edge_index`` (2, E) int64 with both directions of every undirected edge, and disjoint index
    tensors ``train_idx`` / ``val_idx`` / ``test_idx`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor
    edge_index: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    test_idx: torch.Tensor
    num_classes: int

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


def _upper_pairs(mask: torch.Tensor) -> torch.Tensor:
    i, j = torch.triu(mask, diagonal=1).nonzero(as_tuple=True)
    return torch.stack([i, j])


def make_sbm_graph(communities: int = 8, nodes_per_community: int = 250, feature_dim: int = 32,
                   p_in: float = 0.01, p_out: float = 0.001, noisy_edge_fraction: float = 0.2,
                   mean_scale: float = 1.0, feature_noise: float = 3.0,
                   split: tuple[float, float, float] = (0.1, 0.1, 0.8), seed: int = 0,
                   device: torch.device | str = "cpu") -> NodeGraph:
    """SBM graph of the G-CRD card (arXiv:2111.04964): ``communities`` x ``nodes_per_community`` nodes.

    Edges: each unordered pair is linked with prob ``p_in`` inside a community and ``p_out`` across;
    then ``round(noisy_edge_fraction * E_sbm)`` extra random inter-community pairs are injected (the
    "noisy" edges: 20% by default, counted relative to the SBM edges). Features: class mean
    ``mean_scale * N(0, I_F)`` plus ``feature_noise * N(0, I_F)`` per node. Split: a random
    permutation cut by ``split`` (train/val/test fractions summing to 1).
    """
    check_count(communities, "communities", 2)
    check_count(nodes_per_community, "nodes_per_community", 1)
    check_count(feature_dim, "feature_dim", 1)
    for name, p in (("p_in", p_in), ("p_out", p_out), ("noisy_edge_fraction", noisy_edge_fraction)):
        if not 0 <= check_number(p, name) <= 1:
            raise InputError(f"{name} must lie in [0, 1], got {p}")
    if len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
        raise InputError(f"split must be 3 positive fractions summing to 1, got {split}")
    gen = torch.Generator().manual_seed(seed)
    n = communities * nodes_per_community
    y = torch.arange(communities).repeat_interleave(nodes_per_community)
    same = y[:, None] == y[None, :]
    prob = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
    sbm = _upper_pairs(torch.rand(n, n, generator=gen) < prob)
    noisy = _noisy_pairs(y, round(noisy_edge_fraction * sbm.shape[1]), gen)
    pairs = torch.unique(torch.cat([sbm, noisy], 1), dim=1)
    edge_index = torch.cat([pairs, pairs.flip(0)], 1)
    means = mean_scale * torch.randn(communities, feature_dim, generator=gen)
    x = means[y] + feature_noise * torch.randn(n, feature_dim, generator=gen)
    perm = torch.randperm(n, generator=gen)
    n_train, n_val = round(split[0] * n), round(split[1] * n)
    parts = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    return NodeGraph(x.to(device), y.to(device), edge_index.to(device),
                     *(p.sort().values.to(device) for p in parts), num_classes=communities)


def _noisy_pairs(y: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` random unordered pairs (i < j) with different labels, shape (2, count)."""
    out = torch.empty(2, 0, dtype=torch.int64)
    while out.shape[1] < count:
        cand = torch.randint(0, y.numel(), (2, 2 * count + 8), generator=gen)
        cand = cand[:, y[cand[0]] != y[cand[1]]]
        out = torch.cat([out, cand.sort(0).values], 1)
    return out[:, :count]


def drop_edges(edge_index: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Robustness check of the G-CRD card (arXiv:2111.04964): remove ``fraction`` in [0, 1] of the
    undirected edges of a symmetric ``edge_index`` (2, E) int64 (both directions together), chosen
    uniformly with ``seed``. Returns a symmetric (2, E') int64 tensor."""
    if not 0 <= check_number(fraction, "fraction") <= 1:
        raise InputError(f"fraction must lie in [0, 1], got {fraction}")
    pairs = edge_index[:, edge_index[0] < edge_index[1]]
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(pairs.shape[1], generator=gen)[:round((1 - fraction) * pairs.shape[1])]
    kept = pairs[:, keep.sort().values.to(pairs.device)]
    return torch.cat([kept, kept.flip(0)], 1)
