"""Scheme 1 mask-perturbation attacks of lottery verification (arXiv:2111.00162): oracle and invariants."""
import pytest
import torch

from honed.compress.path_attacks import channel_graph, perturb_mask, reinit_added
from honed.core.errors import InputError


def chain(seed: int = 0, density: float = 1.0):
    """Three conv layers 2 -> 3 -> 4 -> 3 channels, 2x2 kernels, random weights and mask."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"a": (3, 2, 2, 2), "b": (4, 3, 2, 2), "c": (3, 4, 2, 2)}
    weights = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    mask = {n: torch.rand(s, generator=gen) < density for n, s in shapes.items()}
    return weights, mask, list(shapes)


def test_channel_graph_sums_masked_magnitudes_per_kernel():
    w = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # (1 out, 2 in, 1, 2)
    m = torch.tensor([[[[True, True]], [[False, True]]]])
    assert torch.equal(channel_graph(w, m), torch.tensor([[3.0, 0.5]]))


@pytest.mark.parametrize("attack", ["edge_weighted_path", "random_path"])
def test_one_path_removes_whole_kernels_along_a_connected_path(attack):
    weights, mask, layers = chain()
    out = perturb_mask(mask, weights, layers, attack, 1, add_back=False, generator=torch.Generator().manual_seed(3))
    removed = {}
    for n in layers:
        kernels = (mask[n].any((2, 3)) & ~out.mask[n].any((2, 3))).nonzero().tolist()
        assert len(kernels) == 1, n  # one edge per layer on a dense chain
        j, i = kernels[0]
        assert not out.mask[n][j, i].any() and mask[n][j, i].all()  # the whole kernel
        removed[n] = (j, i)
    assert removed["a"][0] == removed["b"][1] and removed["b"][0] == removed["c"][1]  # connected
    assert out.removed_kernels == 3 and out.removed_entries == 3 * 4
    assert all(m.all() for m in mask.values())  # the input mask is untouched


def test_weighted_walk_follows_the_only_weighted_edge():
    weights, mask, layers = chain()
    for n in layers:
        weights[n] = torch.zeros_like(weights[n])
    weights["a"][2] = 1.0          # every input of layer a leads to output 2
    weights["b"][1, 2] = 1.0       # channel 2 leads to output 1 of layer b
    weights["c"][0, 1] = 1.0
    out = perturb_mask(mask, weights, layers, "edge_weighted_path", 1, add_back=False,
                       generator=torch.Generator().manual_seed(0))
    assert not out.mask["b"][1, 2].any() and not out.mask["c"][0, 1].any()
    assert out.removed_kernels == 3


def test_walk_skips_dead_columns_and_removes_only_live_kernels():
    weights, mask, layers = chain(seed=1, density=0.5)
    out = perturb_mask(mask, weights, layers, "random_path", 20, add_back=False,
                       generator=torch.Generator().manual_seed(1))
    for n in layers:
        assert not (out.mask[n] & ~mask[n]).any()  # never switches anything on
        live_before = mask[n].any((2, 3)).sum()
        assert out.mask[n].any((2, 3)).sum() <= live_before


def test_betweenness_removes_the_edge_on_most_shortest_paths():
    weights, mask, layers = chain()
    for n in layers:
        mask[n] = torch.zeros_like(mask[n])
    mask["a"][:, :, 0, 0] = True  # 2 -> 3 fully connected
    mask["b"][0, 0, 0, 0] = mask["b"][1, 1, 0, 0] = True
    mask["c"][:, 0, 0, 0] = True  # b's output 0 fans out to all of c
    # b[0, 0] carries 12 shortest paths ({in0, in1, a0} x {b0, c0, c1, c2}); the next best, a[0, i], 5
    out = perturb_mask(mask, weights, layers, "betweenness", 1, add_back=False)
    assert not out.mask["b"][0, 0].any()
    assert out.removed_kernels == 1 and all(torch.equal(out.mask[n], mask[n]) for n in ("a", "c"))


def test_add_back_keeps_the_count_and_uses_pruned_positions_only():
    weights, mask, layers = chain(seed=2, density=0.6)
    out = perturb_mask(mask, weights, layers, "edge_weighted_path", 3, generator=torch.Generator().manual_seed(5))
    assert sum(int(out.mask[n].sum()) for n in layers) == sum(int(mask[n].sum()) for n in layers)
    added = sum(int(out.added[n].sum()) for n in layers)
    assert added == out.removed_entries > 0
    for n in layers:
        assert not (out.added[n] & mask[n]).any()  # re-enabled positions were pruned before


def test_reinit_added_changes_only_added_positions():
    state = {"a": torch.ones(2, 2)}
    added = {"a": torch.tensor([[True, False], [False, False]])}
    out = reinit_added(state, added, std=0.01, generator=torch.Generator().manual_seed(0))
    assert out["a"][0, 0] != 1.0 and abs(float(out["a"][0, 0])) < 0.1
    assert torch.equal(out["a"][~added["a"]], torch.ones(3)) and torch.equal(state["a"], torch.ones(2, 2))


def test_bad_input_is_one_clear_error():
    weights, mask, layers = chain()
    with pytest.raises(InputError, match="attack"):
        perturb_mask(mask, weights, layers, "saliency", 1)
    with pytest.raises(InputError, match="chain"):
        perturb_mask(mask, weights, ["a", "c"], "random_path", 1)
    with pytest.raises(InputError, match="amount"):
        perturb_mask(mask, weights, layers, "random_path", -1)
