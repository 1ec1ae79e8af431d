"""Skeleton-Graph (arXiv:2109.10257): the card's honest unit tests plus hand-computed oracles."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.sequence.skeleton_baselines import LiftConstantVelocity, PoseGRUSeq2Seq, PoseMLP
from honed.sequence.skeleton_data import make_skeleton_windows, skeleton_adjacency
from honed.sequence.skeleton_graph import (SkeletonGraph, consistency_terms, forecast_metrics, graph_aggregate,
                                           horizon_frames, mpjpe, mpjpe_per_step, skeleton_graph_loss, stability)


def aggregate_by_loops(x, A, mode):
    B, F, J, Y = x.shape
    S = A.shape[1]
    out = torch.zeros(B, F, J, S, dtype=torch.float64)
    for b in range(B):
        a = A[b if A.shape[0] > 1 else 0]
        for f in range(F):
            for j in range(J):
                for s in range(S):
                    if mode == "official":  # einsum 'bfjy,bsjv->bfjs'
                        out[b, f, j, s] = sum(x[b, f, j, y] for y in range(Y)) * sum(a[s, j, v] for v in range(J))
                    else:
                        out[b, f, j, s] = sum(a[s, j, v] * x[b, f, v, s] for v in range(J))
    return out


@settings(max_examples=8, deadline=None)
@given(B=st.integers(1, 2), F=st.integers(1, 3), J=st.integers(1, 4), S=st.integers(1, 4), Y=st.integers(1, 4),
       shared=st.booleans(), seed=st.integers(0, 1000))
def test_official_aggregation_equals_the_reference_einsum_and_a_loop(B, F, J, S, Y, shared, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, F, J, Y, generator=gen, dtype=torch.float64)
    A = torch.randn(1 if shared else B, S, J, J, generator=gen, dtype=torch.float64)
    out = graph_aggregate(x, A, "official")
    torch.testing.assert_close(out, torch.einsum("bfjy,bsjv->bfjs", x, A.expand(B, S, J, J)))
    torch.testing.assert_close(out, aggregate_by_loops(x, A, "official"))


def test_conventional_aggregation_equals_a_loop_and_mixes_joints():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    A = torch.randn(2, 5, 4, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(graph_aggregate(x, A, "conventional"), aggregate_by_loops(x, A, "conventional"))
    # hand example: a path 0-1-2 at one frame; joint 1 receives x0 + x2, the ends receive x1
    x = torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 3, 1)
    A = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    assert graph_aggregate(x, A, "conventional").flatten().tolist() == [10.0, 101.0, 10.0]
    assert graph_aggregate(x, A, "official").flatten().tolist() == [1.0, 20.0, 100.0]  # x_j * degree_j
    with pytest.raises(InputError):
        graph_aggregate(x, A, "mean")


@pytest.mark.parametrize("learn_A", [True, False])
@pytest.mark.parametrize("aggregation", ["official", "conventional"])
def test_output_shape_is_b_tout_j_3_and_gradients_flow(learn_A, aggregation):
    torch.manual_seed(0)
    model = SkeletonGraph(skeleton_adjacency(), t_in=5, t_out=10, n_stgcnn=3, n_txpcnn=5, learn_A=learn_A,
                          aggregation=aggregation, input_mean=800.0, input_std=200.0)
    x = 800 + 200 * torch.randn(4, 5, 21, 2)
    y = model(x)
    assert y.shape == (4, 10, 21, 3)
    skeleton_graph_loss(y, torch.randn_like(y), 0.1, 0.1).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_shared_adjacency_equals_per_sample_copies():
    torch.manual_seed(1)
    A = skeleton_adjacency()
    model = SkeletonGraph(A, 5, 10, n_stgcnn=2, n_txpcnn=3).train()
    x = torch.randn(6, 5, 21, 2)
    torch.testing.assert_close(model(x), model(x, A.expand(6, 5, 21, 21).clone()), atol=1e-5, rtol=1e-5)


def test_skeleton_graph_rejects_bad_input():
    model = SkeletonGraph(skeleton_adjacency(), 5, 10, n_stgcnn=1, n_txpcnn=2)
    with pytest.raises(InputError):
        model(torch.randn(2, 4, 21, 2))
    with pytest.raises(InputError):
        model(torch.full((2, 5, 21, 2), float("nan")))
    with pytest.raises(InputError):
        model(torch.randn(2, 5, 21, 2), torch.ones(3, 5, 21, 21))
    with pytest.raises(InputError):
        SkeletonGraph(skeleton_adjacency(), 5, 10, n_txpcnn=1)


def test_constant_offset_gives_mpjpe_d_everywhere_and_zero_stb():
    target = torch.randn(3, 10, 21, 3, generator=torch.Generator().manual_seed(2))
    d = 0.05
    direction = torch.tensor([3.0, 4.0, 0.0]) / 5.0
    m = forecast_metrics(target + d * direction, target, torso_joint=13)
    for q in ("0.25", "0.5", "0.75", "1"):
        assert m[f"mpjpe_{q}"] == pytest.approx(50.0, abs=1e-3)
        assert m[f"path_{q}"] == pytest.approx(50.0, abs=1e-3)
    assert m["stb"] == pytest.approx(0.0, abs=1e-3)
    assert m["fde"] == pytest.approx(50.0, abs=1e-3) and m["ade"] == pytest.approx(50.0, abs=1e-3)


def test_linearly_growing_error_gives_closed_form_cumulative_means():
    T, c = 10, 0.01  # error c * t (metres) at step t = 1..10, on every joint
    target = torch.zeros(2, T, 21, 3)
    pred = target.clone()
    pred[..., 0] = c * torch.arange(1, T + 1, dtype=torch.float32).view(1, T, 1)
    m = forecast_metrics(pred, target)
    # first n = max(int(10 q), 1) = 2, 5, 7, 10 frames -> mean of c * (1..n) = c (n + 1) / 2, in mm
    expected = [1000 * c * (n + 1) / 2 for n in (2, 5, 7, 10)]
    got = [m[f"mpjpe_{q}"] for q in ("0.25", "0.5", "0.75", "1")]
    assert got == pytest.approx(expected, rel=1e-5)
    assert [m[f"path_{q}"] for q in ("0.25", "0.5", "0.75", "1")] == pytest.approx(expected, rel=1e-5)
    mean = sum(expected) / 4
    assert m["stb"] == pytest.approx(math.sqrt(sum((e - mean) ** 2 for e in expected) / 4), rel=1e-5)
    assert m["fde"] == pytest.approx(55.0, rel=1e-5) and m["fde_last"] == pytest.approx(100.0, rel=1e-5)
    assert mpjpe_per_step(pred, target) == pytest.approx([c * t for t in range(1, T + 1)], rel=1e-5)
    assert [horizon_frames(T, q) for q in (0.25, 0.5, 0.75, 1.0)] == [2, 5, 7, 10]
    assert horizon_frames(3, 0.25) == 1


def test_path_metric_only_sees_the_torso_joint():
    target = torch.zeros(1, 4, 21, 3)
    pred = target.clone()
    pred[:, :, 13, 2] = 0.2
    assert mpjpe(pred, target, joint=13) == pytest.approx(0.2)
    assert mpjpe(pred, target, joint=0) == 0.0
    assert mpjpe(pred, target) == pytest.approx(0.2 / 21)
    assert stability([1.0, 1.0], [3.0, 5.0]) == pytest.approx(math.sqrt(0.5 * 1.0))


def test_consistency_terms_vanish_on_the_target_and_are_hand_checkable():
    y = torch.randn(2, 3, 21, 3, generator=torch.Generator().manual_seed(4))
    cosine, length = consistency_terms(y, y)
    assert float(cosine) < 1e-5 and float(length) == 0.0
    # scaling by 2 keeps every cosine and doubles every pairwise distance
    cosine, length = consistency_terms(2 * y, y)
    i, k = torch.triu_indices(21, 21, 1)
    assert float(cosine) < 1e-5
    assert float(length) == pytest.approx(float((y[:, :, i] - y[:, :, k]).norm(dim=-1).mean()), rel=1e-5)
    assert float(skeleton_graph_loss(y + 1, y)) == pytest.approx(1.0)


def test_metrics_reject_mismatched_or_nan_tensors():
    with pytest.raises(InputError):
        forecast_metrics(torch.zeros(1, 10, 21, 3), torch.zeros(1, 9, 21, 3))
    with pytest.raises(InputError):
        mpjpe(torch.full((1, 2, 3, 3), float("nan")), torch.zeros(1, 2, 3, 3))
    with pytest.raises(InputError):
        horizon_frames(10, 0.0)


def test_baselines_shapes_and_lift_cv_on_a_static_upright_person():
    x = torch.randn(3, 5, 21, 2)
    assert PoseMLP()(x).shape == (3, 10, 21, 3) and PoseGRUSeq2Seq()(x).shape == (3, 10, 21, 3)
    data = make_skeleton_windows(64, seed=0, pixel_noise=0.0)
    lift = LiftConstantVelocity(10).fit(data.x2d, data.x3d)
    static = data.x2d[:, -1:].expand(-1, 5, -1, -1)  # no motion -> zero velocity -> repeated last lift
    pred = lift.predict(static)
    torch.testing.assert_close(pred, lift.lift(static)[:, -1:].expand(-1, 10, -1, -1))
    depth_err = (lift.lift(data.x2d)[..., 2] - data.x3d[..., 2]).abs().mean() / data.x3d[..., 2].mean()
    assert float(depth_err) < 0.2  # the size-based depth is within 20% on average


def test_models_have_no_cpu_default():
    """Issue 18: built under a default device (``with torch.device(...)``), the models live there; the
    graph model follows its adjacency unless ``device`` says otherwise."""
    from tests.device_checks import META, assert_on
    adjacency = skeleton_adjacency()
    with torch.device("meta"):
        assert_on(META, *PoseMLP().state_dict().values(), *PoseGRUSeq2Seq().state_dict().values())
    assert_on(META, *SkeletonGraph(adjacency.to(META), n_stgcnn=1, n_txpcnn=2).state_dict().values())
    assert_on(META, *SkeletonGraph(adjacency, n_stgcnn=1, n_txpcnn=2, device=META).state_dict().values())
