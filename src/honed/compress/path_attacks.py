"""Scheme 1 of lottery-ticket ownership (You are caught stealing my winning lottery ticket! Making a
lottery ticket claim its ownership, arXiv:2111.00162): an extreme ticket is its own credential, because
an adversary who edits its mask to disguise it loses accuracy even after retraining. These are the
mask-perturbation attacks used to measure that.

Masks are ``{name: 0/1 tensor (out, in, kh, kw)}`` of conv weights. ``layers`` is an ordered chain of
those names in which layer l+1 reads the output channels of layer l (its ``in`` equals layer l's
``out``). The channel graph of layer l is ``C_l[j, i] = sum_{kh,kw} |W_l * M_l|`` (output channel j,
input channel i); an *edge* is a kernel (j, i) with ``C_l[j, i] > 0``, and removing it zeroes the
whole kernel ``M_l[j, i, :, :]``.

- ``edge_weighted_path`` (the reference's "ewp"): P times, start at a random input channel i of the
  first layer; in each layer draw j with probability proportional to ``C_l[:, i]``, remove (j, i) and
  continue from i <- j (a column with no live edge re-draws i at random among the live ones).
- ``random_path``: the same walk, j uniform over the live edges of the column.
- ``betweenness``: remove the P edges of highest edge betweenness (networkx) in the layered channel
  graph (nodes (layer, channel), one directed edge per live kernel).
- ``add_back`` (default on): as many random pruned positions of the same layers as the attack removed
  are switched on, so the sparsity is unchanged; their weights restart from N(0, 0.01^2)
  (:func:`reinit_added`).
"""
from dataclasses import dataclass

import torch

from honed.compress.masks import Mask
from honed.core.errors import InputError

ATTACKS = ("edge_weighted_path", "random_path", "betweenness")
ADD_BACK_STD = 0.01  # reference: re-enabled weights ~ N(0, 0.01^2)


@dataclass(frozen=True)
class MaskPerturbation:
    """An attacked mask: ``mask`` (the new one), ``added`` (positions switched on by add-back, same
    keys as ``layers``), how many kernels (edges) and mask entries the attack removed."""

    mask: Mask
    added: Mask
    removed_kernels: int
    removed_entries: int


def channel_graph(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scheme 1 channel graph (arXiv:2111.00162): ``C[j, i] = sum_{kh,kw} |weight * mask|`` of a conv
    weight and mask (out, in, kh, kw) -> (out, in) float, 0 where the kernel is pruned."""
    if weight.dim() != 4 or weight.shape != mask.shape:
        raise InputError(f"channel_graph needs a conv weight and a mask of one shape (out, in, kh, kw), got "
                         f"{tuple(weight.shape)} and {tuple(mask.shape)}")
    return (weight.detach().abs() * mask.to(weight.dtype)).sum((2, 3))


def _check_chain(mask: Mask, weights: dict[str, torch.Tensor], layers: list[str]) -> None:
    if not layers:
        raise InputError("layers must name at least one conv layer of the mask")
    for name in layers:
        if name not in mask or name not in weights:
            raise InputError(f"layer '{name}' is not in both the mask and the weights")
        if mask[name].dim() != 4:
            raise InputError(f"layer '{name}' is not a conv mask (out, in, kh, kw): shape {tuple(mask[name].shape)}")
    for prev, nxt in zip(layers, layers[1:]):
        if mask[nxt].shape[1] != mask[prev].shape[0]:
            raise InputError(f"layers must form a chain: '{nxt}' reads {mask[nxt].shape[1]} channels but "
                             f"'{prev}' writes {mask[prev].shape[0]}")


def _pick(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(weights.double(), 1, generator=generator))


def _walk_paths(graphs: list[torch.Tensor], paths: int, weighted: bool,
                generator: torch.Generator | None) -> list[tuple[int, int, int]]:
    """The removed edges (layer index, j, i) of ``paths`` walks; ``graphs`` are updated in place."""
    removed = []
    for _ in range(paths):
        i = int(torch.randint(graphs[0].shape[1], (1,), generator=generator))
        for li, graph in enumerate(graphs):
            if not bool(graph[:, i].gt(0).any()):
                live = graph.gt(0).any(0)
                if not bool(live.any()):
                    break
                i = _pick(live.float(), generator)
            column = graph[:, i] if weighted else graph[:, i].gt(0).float()
            j = _pick(column, generator)
            graph[j, i] = 0
            removed.append((li, j, i))
            i = j
    return removed


def _betweenness_edges(graphs: list[torch.Tensor], count: int) -> list[tuple[int, int, int]]:
    """The ``count`` live edges (layer index, j, i) of highest edge betweenness (ties: first in order)."""
    import networkx as nx

    g = nx.DiGraph()
    for li, graph in enumerate(graphs):
        for j, i in graph.gt(0).nonzero().tolist():
            g.add_edge((li, i), (li + 1, j))
    scores = nx.edge_betweenness_centrality(g)
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(u[0], v[1], u[1]) for (u, v), _ in ranked[:count]]


def _add_back(mask: Mask, attacked: Mask, layers: list[str], count: int,
              generator: torch.Generator | None) -> tuple[Mask, Mask]:
    """Switch on ``count`` random positions that are pruned in both ``mask`` and ``attacked``."""
    free = torch.cat([((mask[n] == 0) & (attacked[n] == 0)).flatten() for n in layers]).nonzero().flatten()
    if count > len(free):
        raise InputError(f"add-back needs {count} free pruned positions, the layers have {len(free)}")
    chosen = free[torch.randperm(len(free), generator=generator)[:count]]
    flat = torch.zeros(sum(mask[n].numel() for n in layers), dtype=torch.bool)
    flat[chosen] = True
    added, out, start = {}, dict(attacked), 0
    for n in layers:
        size = mask[n].numel()
        added[n] = flat[start:start + size].view(mask[n].shape).to(mask[n].device)
        out[n] = attacked[n].clone()
        out[n][added[n]] = 1
        start += size
    return out, added


def perturb_mask(mask: Mask, weights: dict[str, torch.Tensor], layers: list[str], attack: str, amount: int,
                 add_back: bool = True, generator: torch.Generator | None = None) -> MaskPerturbation:
    """Scheme 1 attack (arXiv:2111.00162) on ``mask`` given the (stolen, trained) ``weights``:
    ``attack`` one of :data:`ATTACKS`; ``amount`` = P paths (path attacks) or P edges (betweenness);
    ``add_back`` restores the count of kept entries. ``mask`` is not changed."""
    if attack not in ATTACKS:
        raise InputError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    if not isinstance(amount, int) or amount < 0:
        raise InputError(f"amount must be an integer >= 0, got {amount!r}")
    _check_chain(mask, weights, layers)
    graphs = [channel_graph(weights[n].to(mask[n].device), mask[n]) for n in layers]
    if attack == "betweenness":
        removed = _betweenness_edges(graphs, amount)
    else:
        removed = _walk_paths(graphs, amount, attack == "edge_weighted_path", generator)
    attacked = {n: v.clone() if n in layers else v for n, v in mask.items()}
    for li, j, i in removed:
        attacked[layers[li]][j, i] = 0
    entries = sum(int(mask[n].sum() - attacked[n].sum()) for n in layers)
    added = {n: torch.zeros_like(mask[n], dtype=torch.bool) for n in layers}
    if add_back and entries:
        attacked, added = _add_back(mask, attacked, layers, entries, generator)
    return MaskPerturbation(attacked, added, len(set(removed)), entries)


def reinit_added(state: dict[str, torch.Tensor], added: Mask, std: float = ADD_BACK_STD,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose entries at the add-back positions ``added`` (same keys) are drawn from
    N(0, std^2): the re-enabled weights of scheme 1's add-back (arXiv:2111.00162)."""
    out = dict(state)
    for name, positions in added.items():
        if name not in state or state[name].shape != positions.shape:
            raise InputError(f"add-back positions of '{name}' do not match the state")
        fresh = state[name].clone()
        noise = torch.randn(fresh.shape, generator=generator, dtype=fresh.dtype) * std
        fresh[positions] = noise.to(fresh.device)[positions]
        out[name] = fresh
    return out
