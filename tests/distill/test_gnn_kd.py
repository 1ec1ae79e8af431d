"""G-CRD / LSP / GSP / KD losses (arXiv:2111.04964): hand-computed oracles and the card's invariants."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.distill.gnn_kd import (GCRDLoss, GSPLoss, LSPLoss, contrastive_alignment_loss, edge_similarity,
                                  induced_subgraph, kd_loss, lsp_loss, pairwise_similarity, segment_softmax)
from honed.distill.graph_models import NodeClassifier, graph_input
from honed.distill.sbm_graph import drop_edges, hop_attribute_counts, make_multihop_graph, make_sbm_graph


def test_segment_softmax_matches_hand_values():
    scores = torch.tensor([0.0, math.log(3.0), 5.0, 1.0])
    index = torch.tensor([0, 0, 1, 2])
    out = segment_softmax(scores, index, 3)
    assert torch.allclose(out, torch.tensor([0.25, 0.75, 1.0, 1.0]))


@settings(max_examples=25)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 40))
def test_edge_softmax_sums_to_one_per_target_node(seed, nodes, edges):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, nodes, (edges,), generator=gen)
    out = segment_softmax(100 * torch.randn(edges, generator=gen), index, nodes)
    sums = torch.zeros(nodes).index_add(0, index, out)
    present = torch.bincount(index, minlength=nodes) > 0
    assert torch.allclose(sums[present], torch.ones(int(present.sum())), atol=1e-5)
    assert (out >= 0).all()


def test_edge_kernels_oracle():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert edge_similarity(a, b, "cosine").item() == pytest.approx(0.0, abs=1e-7)
    assert edge_similarity(a, a, "poly").item() == pytest.approx(1.0)
    assert edge_similarity(a, b, "l2").item() == pytest.approx(math.sqrt(5))
    assert edge_similarity(a, b, "rbf").item() == pytest.approx(math.exp(-2.5))
    with pytest.raises(InputError, match="kernel"):
        edge_similarity(a, b, "dot")


def test_lsp_oracle_on_a_star():
    # edges 1 -> 0 and 2 -> 0: student rbf sims e^-0.5, e^-2 ; teacher sims equal -> uniform
    student = torch.tensor([[0.0], [1.0], [2.0]])
    teacher = torch.tensor([[0.0], [1.0], [-1.0]])
    edges = torch.tensor([[1, 2], [0, 0]])
    k = torch.tensor([math.exp(-0.5), math.exp(-2.0)])
    p_s = k.exp() / k.exp().sum()
    expected = (0.5 * (math.log(0.5) - p_s.log())).sum() / 2
    assert lsp_loss(student, teacher, edges, "rbf").item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kernel", ["cosine", "poly", "l2", "rbf"])
def test_lsp_is_zero_for_equal_embeddings_and_kl_nonnegative(kernel):
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(12, 5, generator=gen), torch.randn(12, 7, generator=gen)
    edges = torch.randint(0, 12, (2, 40), generator=gen)
    assert LSPLoss(kernel)(s, s, edges).item() == pytest.approx(0.0, abs=1e-6)
    assert LSPLoss(kernel)(s, t, edges).item() >= 0.0


@pytest.mark.parametrize("kernel", ["cosine", "poly", "l2", "rbf"])
def test_gsp_is_zero_with_identity_heads_and_equal_embeddings(kernel):
    x = torch.randn(9, 4)
    loss = GSPLoss(4, 4, kernel, project=False)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-10)
    assert loss(x, torch.randn(9, 4)).item() > 0


def test_pairwise_cosine_oracle():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    assert torch.allclose(pairwise_similarity(x, "cosine"), torch.tensor([[1.0, c], [c, 1.0]]))
    assert torch.allclose(pairwise_similarity(x, "l2"), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=1e-5)


def test_gcrd_random_unit_vectors_at_tau_one_is_log_n():
    gen = torch.Generator().manual_seed(0)
    n = 64
    s, t = torch.randn(n, 4096, generator=gen), torch.randn(n, 4096, generator=gen)
    assert contrastive_alignment_loss(s, t, 1.0).item() == pytest.approx(math.log(n), abs=0.05)


def test_gcrd_is_minimal_when_student_equals_teacher():
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(32, 8, generator=gen)
    loss = GCRDLoss(8, 8, project=False)
    same = loss(t, t).item()
    for _ in range(5):
        assert same < loss(torch.randn(32, 8, generator=gen), t).item()
        assert same < loss(t[torch.randperm(32, generator=gen)], t).item()


def test_gcrd_decreases_when_heads_train_on_a_rotation_of_the_teacher():
    torch.manual_seed(0)
    t = torch.randn(64, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    s = t @ rotation
    loss = GCRDLoss(16, 16, proj_dim=32)
    opt = torch.optim.Adam(loss.parameters(), lr=0.01)
    first = loss(s, t).item()
    for _ in range(100):
        opt.zero_grad()
        value = loss(s, t)
        value.backward()
        opt.step()
    assert loss(s, t).item() < 0.5 * first


def test_teacher_gets_no_gradient_but_both_heads_do():
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(6, 10), torch.nn.Linear(6, 5)
    x = torch.randn(20, 6)
    for loss in (GCRDLoss(5, 10, proj_dim=8), GSPLoss(5, 10, proj_dim=8)):
        teacher.zero_grad(), student.zero_grad(), loss.zero_grad()
        loss(student(x), teacher(x)).backward()
        assert teacher.weight.grad is None
        assert student.weight.grad.abs().sum() > 0
        assert loss.teacher_head[0].weight.grad.abs().sum() > 0
        assert loss.student_head[0].weight.grad.abs().sum() > 0


def test_gcrd_subsamples_to_max_samples():
    loss = GCRDLoss(4, 4, project=False, temperature=1.0, max_samples=8)
    x = torch.randn(100, 4)
    # with 8 sampled rows, the loss is bounded by the 8-way worst case
    assert loss(x, x, torch.Generator().manual_seed(0)).item() < math.log(8) + 2


def test_kd_loss_oracle_and_alpha_zero_is_ce():
    z, zt, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    assert kd_loss(z, zt, y, alpha=0.0).item() == pytest.approx(F.cross_entropy(z, y).item())
    p_t, p_s = torch.softmax(zt / 2, 1), torch.softmax(z / 2, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum().item()
    assert kd_loss(z, zt, y, alpha=1.0, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-5)
    assert kd_loss(zt, zt, torch.tensor([1]), alpha=1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_induced_subgraph_relabels():
    edges = torch.tensor([[0, 1, 2, 3, 3], [1, 2, 3, 0, 1]])
    out = induced_subgraph(edges, torch.tensor([1, 3]), 4)
    assert out.tolist() == [[1], [0]]  # only 3 -> 1 survives, relabelled to 1 -> 0


def test_bad_inputs_raise_one_line_errors():
    s = torch.randn(4, 3)
    with pytest.raises(InputError, match="same N"):
        lsp_loss(s, torch.randn(5, 3), torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(InputError, match="int64"):
        lsp_loss(s, s, torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(InputError, match="outside"):
        lsp_loss(s, s, torch.tensor([[0], [9]]))
    with pytest.raises(InputError, match="NaN"):
        GCRDLoss(3, 3)(torch.full((4, 3), float("nan")), s)
    with pytest.raises(InputError, match="temperature"):
        GCRDLoss(3, 3, temperature=0.0)
    with pytest.raises(InputError, match="alpha"):
        kd_loss(s, s, torch.zeros(4, dtype=torch.int64), alpha=1.5)


def test_sbm_graph_is_seeded_symmetric_and_split():
    g = make_sbm_graph(communities=4, nodes_per_community=30, feature_dim=5, p_in=0.2, p_out=0.01, seed=3)
    g2 = make_sbm_graph(communities=4, nodes_per_community=30, feature_dim=5, p_in=0.2, p_out=0.01, seed=3)
    assert torch.equal(g.edge_index, g2.edge_index) and torch.equal(g.x, g2.x)
    pairs = set(map(tuple, g.edge_index.T.tolist()))
    assert all((j, i) in pairs for i, j in pairs)
    assert sorted(torch.cat([g.train_idx, g.val_idx, g.test_idx]).tolist()) == list(range(120))
    assert (g.train_idx.numel(), g.val_idx.numel()) == (12, 12)
    kept = drop_edges(g.edge_index, 0.4, seed=0)
    assert kept.shape[1] == 2 * round(0.6 * g.edge_index.shape[1] / 2)


def test_multihop_graph_is_seeded_symmetric_and_split():
    kwargs = dict(classes=4, nodes_per_class=30, feature_dim=5, mean_degree=3.0, seed=3)
    g, g2 = make_multihop_graph(**kwargs), make_multihop_graph(**kwargs)
    assert all(torch.equal(getattr(g, k), getattr(g2, k)) for k in ("x", "y", "edge_index", "hidden", "test_idx"))
    assert not torch.equal(g.edge_index, make_multihop_graph(**{**kwargs, "seed": 4}).edge_index)
    assert g.x.shape == (120, 5) and g.y.shape == g.hidden.shape == (120,) and g.edge_index.shape[0] == 2
    assert g.y.dtype == torch.int64 and 0 <= g.y.min() and g.y.max() < 4
    pairs = set(map(tuple, g.edge_index.T.tolist()))
    assert all((j, i) in pairs for i, j in pairs) and all(i != j for i, j in pairs)
    assert sorted(torch.cat([g.train_idx, g.val_idx, g.test_idx]).tolist()) == list(range(120))
    assert torch.bincount(g.hidden).tolist() == [30] * 4
    assert abs(g.edge_index.shape[1] / 120 - 3.0) < 1.0  # mean degree near the requested 3


def test_hop_attribute_counts_oracle_on_a_path():
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])  # path 0-1-2-3
    attribute = torch.tensor([0, 1, 0, 1])
    one = hop_attribute_counts(edge_index, attribute, 2, (1,))
    assert one.tolist() == [[0, 1], [2, 0], [0, 2], [1, 0]]
    three = hop_attribute_counts(edge_index, attribute, 2, (3,))  # node 0: walks 0-1-0-1, 0-1-2-1, 0-1-2-3
    assert three[0].tolist() == [0, 3]


def test_multihop_labels_need_two_to_three_hops():
    """A classifier reading the true 1-hop attribute counts (or the node's own attribute) is much worse
    than the one reading 2-3 hop counts: the label really depends on multi-hop structure."""
    for seed in (0, 1):
        g = make_multihop_graph(classes=4, nodes_per_class=60, feature_dim=4, mean_degree=3.0, seed=seed)
        acc = lambda hops: (hop_attribute_counts(g.edge_index, g.hidden, 4, hops).argmax(1)  # noqa: E731
                            == g.y).float().mean().item()
        assert acc((2, 3)) >= 0.85  # only ties (broken by seeded jitter) disagree
        assert acc((1,)) <= acc((2, 3)) - 0.15
        assert (g.hidden == g.y).float().mean().item() <= 0.5


def test_multihop_bad_inputs_raise():
    with pytest.raises(InputError, match="mean_degree"):
        make_multihop_graph(classes=2, nodes_per_class=5, mean_degree=0.0)
    with pytest.raises(InputError, match="label_hops"):
        make_multihop_graph(classes=2, nodes_per_class=5, label_hops=())
    with pytest.raises(InputError, match="split"):
        make_multihop_graph(classes=2, nodes_per_class=5, split=(0.5, 0.5, 0.0))


def test_student_embedding_and_normalised_adjacency():
    g = make_sbm_graph(communities=2, nodes_per_community=5, feature_dim=3, p_in=0.5, p_out=0.1, seed=0)
    inputs = graph_input(g.edge_index, g.num_nodes)
    dense = inputs.adjacency.to_dense()
    assert torch.allclose(dense, dense.T)
    emb, logits = NodeClassifier(3, 16, 2, layers=2)(g.x, inputs)
    assert emb.shape == (10, 16) and logits.shape == (10, 2)
    emb, logits = NodeClassifier(3, 8, 2, layers=3, conv="gat", heads=2)(g.x, inputs)
    assert emb.shape == (10, 8)


def test_subsampling_with_a_cpu_generator_follows_the_embeddings_device(device):
    """Issue 18: rows are drawn on the generator's device and moved to the embeddings' device, so one
    seed picks the same rows everywhere; models and heads have no CPU default."""
    from honed.distill.gnn_kd import subsample_rows
    from tests.device_checks import META, assert_on, cpu_generator
    assert_on(META, subsample_rows(9, 5, cpu_generator(), META))
    assert torch.equal(subsample_rows(9, 5, cpu_generator()), torch.randperm(9, generator=cpu_generator())[:5])
    loss = GSPLoss(4, 6, proj_dim=3, max_samples=5, device=device)
    assert_on(device, loss.project(torch.rand(9, 4, device=device), torch.rand(9, 6, device=device), cpu_generator()))
    with torch.device("meta"):
        assert_on(META, *NodeClassifier(4, 8, 3).state_dict().values(), *GCRDLoss(4, 6, proj_dim=3).state_dict().values())
