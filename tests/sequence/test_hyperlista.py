"""HyperLISTA (arXiv:2110.15900): the card's honest unit tests plus hand-computed oracles."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.sequence.hyperlista import (ALISTA, FISTA, ISTA, HyperLISTA, analytic_weight, coherence_objective,
                                       gaussian_sensing_matrix, grid_search_hyperlista, measure, nmse_db,
                                       sample_sparse_signals, soft_threshold, support_selection_shrink)


def problem(m=20, n=40, batch=64, p=0.1, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    A = gaussian_sensing_matrix(m, n, gen).to(dtype)
    x = sample_sparse_signals(batch, n, p, generator=gen).to(dtype)
    return A, x, measure(A, x)


def test_analytic_weight_is_feasible_and_beats_random_feasible_weights():
    A, _, _ = problem(dtype=torch.float64)
    W = analytic_weight(A)
    torch.testing.assert_close((W * A).sum(dim=0), torch.ones(A.shape[1], dtype=torch.float64), atol=1e-6, rtol=0)
    best = coherence_objective(W, A)
    gen = torch.Generator().manual_seed(1)
    for scale in (0.0, 0.01, 0.1, 1.0):  # random feasible W near and far from the optimum
        for _ in range(5):
            R = W + scale * torch.randn(W.shape, generator=gen, dtype=torch.float64)
            R = R / (R * A).sum(dim=0, keepdim=True)
            torch.testing.assert_close((R * A).sum(dim=0), torch.ones(A.shape[1], dtype=torch.float64))
            assert best <= coherence_objective(R, A) + 1e-9


def test_analytic_weight_on_an_orthonormal_square_matrix_is_the_matrix():
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    torch.testing.assert_close(analytic_weight(Q), Q)


def test_eta_ss_oracle_on_a_hand_example():
    z = torch.tensor([[3.0, -2.0, 0.5, -0.2, 1.0]])
    # p = 0.4, n = 5 -> top 2 magnitudes (3, -2) pass; the rest soft-thresholded by 0.6
    out = support_selection_shrink(z, 0.6, 0.4)
    torch.testing.assert_close(out, torch.tensor([[3.0, -2.0, 0.0, 0.0, 0.4]]))
    # a theta above |z| blocks the bypass: 3 passes, -2 < theta = 2.5 is shrunk to 0
    torch.testing.assert_close(support_selection_shrink(z, 2.5, 0.4), torch.tensor([[3.0, 0.0, 0.0, 0.0, 0.0]]))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 4), n=st.integers(1, 30), p=st.floats(0.0, 1.0), theta=st.floats(0.0, 2.0),
       seed=st.integers(0, 10_000))
def test_eta_ss_properties(rows, n, p, theta, seed):
    z = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(support_selection_shrink(z, theta, 0.0), soft_threshold(z, theta))
    torch.testing.assert_close(support_selection_shrink(z, 0.0, p), z)
    out = support_selection_shrink(z, theta, p)
    k = math.ceil(p * n - 1e-4)
    # entries passed unchanged (nonzero ones: a zero is unchanged by soft-thresholding too)
    unchanged = ((out == z) & (z != 0)).sum(dim=1)
    above = (z.abs() >= theta).sum(dim=1)
    assert (unchanged >= torch.minimum(above, torch.tensor(k))).all()
    # and never more change than soft-thresholding allows
    assert ((out - z).abs() <= theta + 1e-12).all()


def test_eta_ss_passes_at_least_ceil_pn_entries_with_a_small_threshold():
    z = torch.randn(8, 50, generator=torch.Generator().manual_seed(3))
    for p in (0.01, 0.1, 0.13, 0.5):
        out = support_selection_shrink(z, 1e-6, torch.full((8,), p))
        assert ((out == z).sum(dim=1) >= math.ceil(p * 50 - 1e-4)).all()


def test_hyperlista_layer_without_momentum_and_selection_is_an_alista_step():
    A, x_true, y = problem(batch=1, seed=2)
    hyper = HyperLISTA(A, layers=3, c_theta=0.05, c_beta=0.0, c_p=0.0)
    x = x_true + 0.1 * torch.randn(x_true.shape, generator=torch.Generator().manual_seed(4))
    x_prev = torch.randn_like(x)  # ignored when c_beta = 0
    context = hyper.prepare(y)
    out = hyper.layer(1, x, x_prev, y, context)
    alista = ALISTA(A, layers=3, W=hyper.W, p_per_layer=0.0)
    residual = x @ A.T - y
    theta = 0.05 * hyper.gamma * (residual @ torch.linalg.pinv(A.double()).T.float()).abs().sum()
    with torch.no_grad():
        alista.gamma[1] = hyper.gamma
        alista.theta[1] = theta
    torch.testing.assert_close(out, alista.layer(1, x, x, y, None), atol=1e-6, rtol=1e-5)
    expected = soft_threshold(x - hyper.gamma * residual @ hyper.W, theta)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_layer_zero_has_no_momentum_and_no_support_selection():
    A, _, y = problem(batch=4, seed=5)
    hyper = HyperLISTA(A, layers=1, c_theta=0.02, c_beta=0.5, c_p=10.0)
    zero = torch.zeros(4, A.shape[1])
    theta = 0.02 * hyper.gamma * (y @ hyper.A_pinv_t).abs().sum(dim=1, keepdim=True)
    torch.testing.assert_close(hyper(y), soft_threshold(hyper.gamma * y @ hyper.W, theta), atol=1e-6, rtol=1e-5)
    assert hyper.layer(0, zero, zero, y, hyper.prepare(y)).shape == (4, A.shape[1])


def test_grid_search_returns_the_minimiser_of_its_table_and_sets_it():
    A, x, y = problem(batch=32, seed=6)
    model = HyperLISTA(A, layers=6)
    found = grid_search_hyperlista(model, y, x, [0.01, 0.05, 0.2], [0.0, 0.03], [0.5, 3.0])
    assert found.loss.shape == (3, 2, 2)
    i, b, j = found.grid[0].index(found.c_theta), found.grid[1].index(found.c_beta), found.grid[2].index(found.c_p)
    assert found.loss[i, b, j] == found.loss.min()
    assert (model.c_theta, model.c_beta, model.c_p) == (found.c_theta, found.c_beta, found.c_p)
    # each table entry is what a model with those constants scores on the batch
    for (ti, bi, pj) in [(0, 0, 0), (2, 1, 1), (i, b, j)]:
        single = HyperLISTA(A, layers=6, c_theta=found.grid[0][ti], c_beta=found.grid[1][bi], c_p=found.grid[2][pj])
        with torch.no_grad():
            direct = float(((single(y) - x) ** 2).sum())
        assert found.loss[ti, bi, pj].item() == pytest.approx(direct, rel=1e-4)


def test_tuned_hyperlista_nmse_decreases_across_layers_on_noiseless_data():
    A, x, y = problem(m=50, n=100, batch=256, seed=7)
    model = HyperLISTA(A, layers=8)
    grids = [np.geomspace(0.01, 0.1, 4), np.geomspace(0.01, 0.1, 4), np.geomspace(0.3, 10, 4)]
    grid_search_hyperlista(model, y[:128], x[:128], *grids)
    with torch.no_grad():
        _, iterates = model(y[128:], return_iterates=True)
    curve = [nmse_db(it, x[128:]) for it in iterates]
    assert all(b <= a + 1e-6 for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] < curve[0] - 5


def test_solvers_shapes_and_classical_oracles():
    A, x, y = problem(batch=5, seed=8)
    for solver in (ISTA(A, 4), FISTA(A, 4), ALISTA(A, 4), HyperLISTA(A, 4)):
        out, its = solver(y, return_iterates=True)
        assert out.shape == x.shape and len(its) == 4 and torch.equal(its[-1], out)
    ista, fista = ISTA(A, 1), FISTA(A, 2)
    step = 1 / ista.lipschitz
    torch.testing.assert_close(ista(y), soft_threshold(step * y @ A, 0.1 * step))
    x1 = ista(y)  # FISTA's first two steps: t0 = 1 gives zero momentum at layer 0
    t1 = (1 + math.sqrt(5)) / 2
    point = x1 + (t1 - 1) / ((1 + math.sqrt(1 + 4 * t1 * t1)) / 2) * x1
    torch.testing.assert_close(fista(y), ista.gradient_step(point, y))


def test_alista_parameters_are_trainable_and_nmse_is_ratio_of_means():
    A, x, y = problem(batch=16, seed=9)
    model = ALISTA(A, 3)
    ((model(y) - x) ** 2).sum().backward()
    assert model.gamma.grad.abs().sum() > 0 and model.theta.grad.abs().sum() > 0
    x_hat = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    truth = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert nmse_db(x_hat, truth) == pytest.approx(10 * math.log10(2 / 5))


def test_bad_inputs_raise_input_error():
    A, x, y = problem(batch=2)
    model = HyperLISTA(A, 2)
    with pytest.raises(InputError):
        model(y[:, :-1])
    with pytest.raises(InputError):
        model(torch.full_like(y, float("nan")))
    with pytest.raises(InputError):
        HyperLISTA(A, 2, c_theta=-1.0)
    with pytest.raises(InputError):
        HyperLISTA(A, 0)
    with pytest.raises(InputError):
        support_selection_shrink(torch.ones(2, 3), 0.1, 1.5)
    with pytest.raises(InputError):
        analytic_weight(torch.zeros(3, 5))
    with pytest.raises(InputError):
        grid_search_hyperlista(model, y, x[:, :-1], [0.1], [0.1], [0.1])
    with pytest.raises(InputError):
        sample_sparse_signals(4, 10, p=0.0)


def test_problem_draws_happen_on_the_generator_device_and_land_where_asked():
    """Issue 18: a CPU generator draws on the CPU (same numbers everywhere), the result moves to ``device``."""
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    A, x = gaussian_sensing_matrix(6, 10, g(), device="meta"), sample_sparse_signals(4, 10, generator=g(), device="meta")
    assert A.device == x.device == torch.device("meta")
    assert torch.equal(gaussian_sensing_matrix(6, 10, g()), gaussian_sensing_matrix(6, 10, g(), device="cpu"))
    assert measure(torch.rand(6, 10, device="meta"), torch.rand(4, 10, device="meta"), 20.0, g()).device.type == "meta"


def test_grid_search_on_the_test_device_picks_the_cpu_constants(device):
    g = torch.Generator().manual_seed(1)
    A = gaussian_sensing_matrix(12, 30, g)
    x = sample_sparse_signals(16, 30, p=0.1, generator=g)
    y = measure(A, x)
    grids = [0.01, 0.05, 0.2], [0.0, 0.03], [0.5, 3.0]
    on_cpu = grid_search_hyperlista(HyperLISTA(A, layers=3), y, x, *grids)
    moved = grid_search_hyperlista(HyperLISTA(A.to(device), layers=3), y.to(device), x.to(device), *grids)
    assert (moved.c_theta, moved.c_beta, moved.c_p) == (on_cpu.c_theta, on_cpu.c_beta, on_cpu.c_p)
    assert torch.allclose(moved.loss.cpu(), on_cpu.loss, rtol=1e-4)
