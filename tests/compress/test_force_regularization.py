"""Force Regularization (arXiv:1703.09746): forces computed by hand on tiny filters, the card's
invariants (tangent, norm-preserving, attractive, vectorised == pairwise), the callback in honed's
loop (ghost batches, lower rank after training) and bad input."""
import math

import pytest
import torch
from torch import nn

from honed.compress.force_regularization import (ForceRegularization, add_force_gradient, force_delta,
                                                 force_gradient_term, force_parameters)
from honed.compress.lowrank import energy_in_top, select_rank
from honed.core.errors import InputError
from honed.core.loop import train

SQRT2 = math.sqrt(2.0)


def test_two_filters_by_hand():
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # p = 0: F_1 = u2 - u1 = (-1, 1), tangent part (0, 1), times ||w1|| = 2
    assert torch.allclose(force_delta(w, "degradation"), torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    # p = 1: the same direction divided by ||u2 - u1|| = sqrt 2
    assert torch.allclose(force_delta(w, "constant"), torch.tensor([[0.0, 2.0], [1.0, 0.0]]) / SQRT2)


@pytest.mark.parametrize("force_type, divisor", [("degradation", 1.0), ("constant", SQRT2), ("linear", 2.0),
                                                 ("gravity", 2 * SQRT2)])
def test_three_filters_by_hand(force_type, divisor):
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]).reshape(3, 3, 1, 1)
    # F_1 = (u2 - u1) + (u3 - u1) = (-2, 1, 1) -> tangent (0, 1, 1); filter 3 has norm 3
    expected = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [3.0, 3.0, 0.0]]) / divisor
    assert torch.allclose(force_delta(w, force_type).reshape(3, 3), expected, atol=1e-6)


def test_gradient_term_is_attractive_and_scaled():
    w = nn.Parameter(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    w.grad = torch.tensor([[0.5, 0.5], [0.0, 0.0]])
    add_force_gradient([("w", w)], force_decay=0.1)
    # grad - lambda * delta_w: the descent step w - lr * grad moves w1 toward +y, i.e. toward w2
    assert torch.allclose(w.grad, torch.tensor([[0.5, 0.5 - 0.2], [-0.1, 0.0]]))


def test_multiplier_zero_disables_a_layer_and_biases_are_never_touched():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    added = add_force_gradient(model, 1e-2, multipliers={"1.weight": 0.0})
    assert set(added) == {"0.weight"}
    assert float(model[0].weight.grad.abs().sum()) > 0
    assert float(model[0].bias.grad.abs().sum()) == 0 and float(model[1].weight.grad.abs().sum()) == 0


def pairwise_loop(w: torch.Tensor, p: int) -> torch.Tensor:
    """The card's definition written as an explicit double loop (float64)."""
    w = w.double().reshape(len(w), -1)
    unit = w / w.norm(dim=1, keepdim=True)
    out = torch.zeros_like(w)
    for i in range(len(w)):
        force = torch.zeros(w.shape[1], dtype=torch.float64)
        for j in range(len(w)):
            if j != i:
                diff = unit[j] - unit[i]
                force += diff / diff.norm() ** p
        out[i] = w[i].norm() * (force - (force @ unit[i]) * unit[i])
    return out


@pytest.mark.parametrize("force_type, p", [("degradation", 0), ("constant", 1), ("linear", 2)])
@pytest.mark.parametrize("chunk_size", [1, 3, 256])
def test_vectorised_and_chunked_forces_equal_the_pairwise_loop(force_type, p, chunk_size):
    w = torch.randn(7, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = force_delta(w, force_type, chunk_size=chunk_size).reshape(7, -1)
    assert torch.allclose(got, pairwise_loop(w, p), atol=1e-10)


@pytest.mark.parametrize("force_type", ["degradation", "constant"])
def test_delta_is_tangent_to_each_filter(force_type):
    w = torch.randn(16, 27, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dots = (force_delta(w, force_type) * w).sum(1)
    assert dots.abs().max() < 1e-10 * w.norm(dim=1).max() ** 2


def test_force_only_updates_keep_filter_norms():
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    norms = w.norm(dim=1)
    for _ in range(200):
        w = w + 1e-5 * force_delta(w)
    assert ((w.norm(dim=1) - norms).abs() / norms).max() < 1e-4


def test_angle_between_two_filters_shrinks_monotonically():
    w = torch.tensor([[1.0, 0.2, -0.5], [-0.3, 1.0, 0.4]], dtype=torch.float64)
    angles = []
    for _ in range(50):
        angles.append(float(torch.nn.functional.cosine_similarity(w[0], w[1], dim=0).clamp(-1, 1).acos()))
        w = w - 0.05 * force_gradient_term(w, None, force_decay=1.0)  # a descent step on the force term
    assert all(b < a for a, b in zip(angles, angles[1:])) and angles[-1] < 0.5 * angles[0]


def test_zero_filters_neither_move_nor_pull():
    w = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    delta = force_delta(w)
    assert torch.equal(delta[1], torch.zeros(2))
    assert torch.allclose(delta[[0, 2]], force_delta(w[[0, 2]]))


def test_adaptive_and_same_direction_options():
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(4))
    grad = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))
    adaptive = force_gradient_term(w, grad, 0.3, decay_type="adaptive")
    assert float(adaptive.norm()) == pytest.approx(0.3 * float(grad.norm()), rel=1e-5)
    same = force_gradient_term(w, grad, 0.3, direction="same")
    full = force_gradient_term(w, grad, 0.3)
    kept = same != 0
    assert torch.all(torch.sign(same[kept]) == torch.sign(grad[kept]))
    assert torch.equal(same[kept], full[kept]) and int(kept.sum()) < full.numel()


def toy_regression(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 20, generator=gen)
    y = x @ torch.randn(20, 1, generator=gen) + 0.1 * torch.randn(256, 1, generator=gen)
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]


def train_toy(force_decay: float, ghost_size=None, epochs: int = 30) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    callbacks = [ForceRegularization(model, force_decay, layers=["0"], force_scale="sum")] if force_decay else []
    train(model, toy_regression(), opt, epochs, loss_fn=nn.functional.mse_loss, callbacks=callbacks,
          ghost_size=ghost_size, progress=False)
    return model


def test_force_in_the_loop_concentrates_filter_energy():
    plain, forced = train_toy(0.0), train_toy(0.01)
    assert energy_in_top(forced[0].weight, 2) > energy_in_top(plain[0].weight, 2) + 0.1
    assert select_rank(forced[0].weight, 0.95) < select_rank(plain[0].weight, 0.95)


def test_ghost_batches_add_the_force_once_per_step():
    whole, ghost = train_toy(0.01, epochs=2), train_toy(0.01, ghost_size=16, epochs=2)
    for a, b in zip(whole.parameters(), ghost.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_bad_input_is_rejected():
    with pytest.raises(InputError, match="force_type"):
        force_delta(torch.randn(3, 3), "repulsive")
    with pytest.raises(InputError, match=">= 2 axes"):
        force_delta(torch.randn(3))
    with pytest.raises(InputError, match="NaN"):
        force_delta(torch.full((2, 2), float("nan")))
    with pytest.raises(InputError, match="force_decay"):
        ForceRegularization(nn.Linear(2, 2), force_decay=-1.0)
    with pytest.raises(InputError, match="decay_type"):
        force_gradient_term(torch.randn(2, 2), None, 0.1, decay_type="sometimes")
    with pytest.raises(InputError, match="error gradient"):
        force_gradient_term(torch.randn(2, 2), None, 0.1, decay_type="adaptive")
    with pytest.raises(InputError, match="'1'"):
        force_parameters(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), layers=["1"])


@pytest.mark.parametrize("force_type", ["constant", "gravity"])
def test_coincident_filters_give_finite_forces(force_type):
    w = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    delta = force_delta(w, force_type)
    assert torch.isfinite(delta).all()
    # filters 0 and 1 point the same way: they only feel filter 2, identically per unit norm
    assert torch.allclose(delta[1], 2 * delta[0])
