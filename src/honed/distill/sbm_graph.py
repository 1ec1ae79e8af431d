"""Synthetic stochastic-block-model node classification graph for the G-CRD reproduction
(On Representation Knowledge Distillation for Graph Neural Networks, arXiv:2111.04964, scaled down).

Communities are the classes. Features are a class mean plus heavy Gaussian noise, so a node's own
features say little and neighbourhood aggregation is needed; a share of random inter-community
("noisy") edges is then injected. Built from torch only and fully determined by ``seed``.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from honed.core.errors import InputError, check_count, check_number


@dataclass
class NodeGraph:
    """A node classification graph: ``x`` (N, F) float, ``y`` (N,) int64 in [0, num_classes),
    ``edge_index`` (2, E) int64 with both directions of every undirected edge, and disjoint index
    tensors ``train_idx`` / ``val_idx`` / ``test_idx`` (int64); ``hidden`` (N,) int64 is the generating
    attribute of :func:`make_multihop_graph` (None for the SBM graph)."""

    x: torch.Tensor
    y: torch.Tensor
    edge_index: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    test_idx: torch.Tensor
    num_classes: int
    hidden: torch.Tensor | None = None  # multihop graph only: the (N,) generating attribute behind y

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
                   device: torch.device | str | None = None) -> NodeGraph:
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
    _check_split(split)
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
    return NodeGraph(x.to(device), y.to(device), edge_index.to(device),
                     *(p.to(device) for p in _split(n, split, gen)), num_classes=communities)


def _check_split(split: tuple[float, float, float]) -> None:
    if len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
        raise InputError(f"split must be 3 positive fractions summing to 1, got {split}")


def _split(n: int, split: tuple[float, float, float], gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Sorted train / val / test indices from one seeded permutation of ``n`` nodes."""
    perm = torch.randperm(n, generator=gen)
    n_train, n_val = round(split[0] * n), round(split[1] * n)
    return tuple(p.sort().values for p in (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]))


def make_multihop_graph(classes: int = 8, nodes_per_class: int = 250, feature_dim: int = 32,
                        mean_degree: float = 3.0, label_hops: tuple[int, ...] = (2, 3),
                        mean_scale: float = 1.0, feature_noise: float = 1.0,
                        split: tuple[float, float, float] = (0.1, 0.1, 0.8), seed: int = 0,
                        device: torch.device | str | None = None) -> NodeGraph:
    """Multi-hop graph of the G-CRD card (arXiv:2111.04964, "a second graph where the label depends on
    2-3 hop structure"): ``classes * nodes_per_class`` nodes.

    Each node draws a hidden attribute ``h`` in [0, classes) (balanced, shuffled); features are
    ``mean_scale * mu[h] + feature_noise * N(0, I_F)``, so they reveal ``h``, not the label. Edges:
    an Erdos-Renyi graph with each unordered pair linked with prob ``mean_degree / (N - 1)``. Label:
    ``y = argmax_k sum_{r in label_hops} (A^r H)[:, k]`` (A the 0/1 adjacency without self loops, H the
    one-hot of ``h``): the most frequent hidden attribute among the endpoints of walks of length 2-3,
    ties broken by a seeded jitter < 1 walk. A 3-layer GCN reaches the hop-3 walks, a 2-layer one does
    not. Returns a :class:`NodeGraph` (split as in :func:`make_sbm_graph`).
    """
    check_count(classes, "classes", 2)
    check_count(nodes_per_class, "nodes_per_class", 1)
    check_count(feature_dim, "feature_dim", 1)
    n = classes * nodes_per_class
    if not 0 < check_number(mean_degree, "mean_degree") <= n - 1:
        raise InputError(f"mean_degree must lie in (0, {n - 1}], got {mean_degree}")
    if not label_hops or any(int(r) != r or r < 1 for r in label_hops):
        raise InputError(f"label_hops must be a non-empty tuple of ints >= 1, got {label_hops}")
    _check_split(split)
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.arange(classes).repeat_interleave(nodes_per_class)[torch.randperm(n, generator=gen)]
    pairs = _upper_pairs(torch.rand(n, n, generator=gen) < mean_degree / (n - 1))
    edge_index = torch.cat([pairs, pairs.flip(0)], 1)
    scores = hop_attribute_counts(edge_index, hidden, classes, label_hops)
    y = (scores + 0.5 * torch.rand(scores.shape, generator=gen)).argmax(1)
    means = mean_scale * torch.randn(classes, feature_dim, generator=gen)
    x = means[hidden] + feature_noise * torch.randn(n, feature_dim, generator=gen)
    return NodeGraph(x.to(device), y.to(device), edge_index.to(device),
                     *(p.to(device) for p in _split(n, split, gen)), num_classes=classes, hidden=hidden.to(device))


def hop_attribute_counts(edge_index: torch.Tensor, attribute: torch.Tensor, classes: int,
                         hops: tuple[int, ...]) -> torch.Tensor:
    """Multi-hop generating quantity of the G-CRD card's second graph (arXiv:2111.04964): for each node,
    the number of walks of length r (summed over r in ``hops``) ending at a node of each attribute value.
    ``edge_index`` (2, E) int64 symmetric, ``attribute`` (N,) int64 in [0, classes); returns (N, classes)."""
    n = attribute.numel()
    adj = torch.zeros(n, n, dtype=torch.float64)
    adj[edge_index[0].cpu(), edge_index[1].cpu()] = 1.0
    walk = F.one_hot(attribute.cpu(), classes).double()
    total = torch.zeros(n, classes, dtype=torch.float64)
    for r in range(1, max(hops) + 1):
        walk = adj @ walk
        if r in hops:
            total += walk
    return total


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
