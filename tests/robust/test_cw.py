"""CW-L2: tanh box, margin loss, binary search, objective, frozen pixels, honest success."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.robust.attacks import CW
from honed.robust.attacks.cw import (Adam, BestAdversary, from_tanh_space, margin_loss, reaches_margin,
                                     to_tanh_space, update_search_bounds)
from tests.robust.toy_models import linear


def test_tanh_reparameterisation_round_trips_within_1e5_and_stays_finite_at_the_box_edges():
    x = torch.cat([torch.tensor([0.0, 1.0, 0.5, 1e-7, 1 - 1e-7]), torch.rand(1000)])
    w = to_tanh_space(x)
    assert torch.isfinite(w).all()
    assert (from_tanh_space(w) - x).abs().max() <= 1e-5
    assert torch.isinf(to_tanh_space(torch.tensor([0.0, 1.0]), scale=1.0)).all()  # torchattacks' mapping


def test_start_margin_moves_only_the_pixels_near_the_box_edges():
    x = torch.tensor([0.0, 1.0, 0.5, 0.01, 0.3, 0.97])
    start = from_tanh_space(to_tanh_space(x, scale=1.0, start_margin=0.05))
    assert torch.allclose(start, torch.tensor([0.05, 0.95, 0.5, 0.05, 0.3, 0.95]), atol=1e-6)
    assert torch.equal(to_tanh_space(x, start_margin=0.0), torch.atanh((2 * x - 1) * (1 - 1e-6)))


def test_a_saturated_pixel_moves_within_a_short_budget_only_with_a_start_margin():
    # class 1 wins only once pixel 0 (exactly 0 in x) rises above 0.2
    model = linear([[0.0, 0.0], [10.0, 0.0]], bias=[2.0, 0.0])
    x, y = torch.tensor([[0.0, 0.5]]), torch.tensor([0])
    settings = dict(c=10.0, steps=40, lr=0.05, binary_search_steps=1, abort_early=False)
    moved = CW(model, **settings)
    assert moved(x, y)[0, 0] > 0.2 and moved.last_stats.success.all()
    reference = CW(model, **settings, start_margin=0.0)
    assert reference(x, y)[0, 0] < 1e-3 and not reference.last_stats.success.any()


@pytest.mark.parametrize("margin", [-0.1, 0.5])
def test_start_margin_outside_its_range_is_refused(margin):
    with pytest.raises(InputError, match="start_margin"):
        CW(linear([[1.0, 0.0], [0.0, 1.0]]), start_margin=margin)


def test_margin_loss_matches_hand_computed_margins():
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    # untargeted: Z_y - max_{i != y} Z_i  -> y=1: 3-2 = 1; y=0: 1-3 = -2, clamped at -kappa
    assert margin_loss(logits, torch.tensor([1, 0]), targeted=False).tolist() == [1.0, 0.0]
    assert margin_loss(logits, torch.tensor([1, 0]), targeted=False, kappa=5.0).tolist() == [1.0, -2.0]
    assert margin_loss(logits, torch.tensor([1, 0]), targeted=False, kappa=1.5).tolist() == [1.0, -1.5]
    # targeted: max_{i != t} Z_i - Z_t -> t=0: 3-1 = 2; t=1: 2-3 = -1
    assert margin_loss(logits, torch.tensor([0, 1]), targeted=True).tolist() == [2.0, 0.0]
    assert margin_loss(logits, torch.tensor([0, 1]), targeted=True, kappa=5.0).tolist() == [2.0, -1.0]


def test_success_test_during_the_search_honours_kappa():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert reaches_margin(logits, torch.tensor([0]), targeted=False).item()
    assert not reaches_margin(logits, torch.tensor([0]), targeted=False, kappa=2.5).item()  # 1+2.5 > 3
    assert reaches_margin(logits, torch.tensor([1]), targeted=True, kappa=0.5).item()  # 3-0.5 > 2
    assert not reaches_margin(logits, torch.tensor([1]), targeted=True, kappa=1.5).item()  # 3-1.5 < 2


def test_binary_search_update_rules():
    c = torch.tensor([1.0, 1.0, 2.0, 3.0])
    lower = torch.tensor([0.0, 0.0, 0.0, 2.0])
    upper = torch.tensor([1e10, 1e10, 4.0, 4.0])
    success = torch.tensor([True, False, False, True])
    c, lower, upper = update_search_bounds(c, lower, upper, success)
    assert upper.tolist() == [1.0, 1e10, 4.0, 3.0]  # success -> upper bound = c
    assert lower.tolist() == [0.0, 1.0, 2.0, 2.0]   # failure -> lower bound = c
    assert c.tolist() == [0.5, 10.0, 3.0, 2.5]      # bisect, or c x 10 while no upper bound


def test_best_adversary_keeps_the_smallest_adversarial_and_the_first_iteration():
    x = torch.zeros(2, 1)
    best = BestAdversary.start(x)
    best.update(torch.tensor([[0.5], [0.5]]), torch.tensor([0.25, 0.25]), torch.tensor([True, False]), 3, 6)
    best.update(torch.tensor([[0.9], [0.2]]), torch.tensor([0.81, 0.04]), torch.tensor([True, True]), 4, 8)
    assert best.images.flatten().tolist() == pytest.approx([0.5, 0.2])
    assert best.first_iteration.tolist() == [3, 4] and best.first_queries.tolist() == [6, 8]


def test_own_adam_matches_torch_adam():
    torch.manual_seed(0)
    a, b = torch.randn(5, requires_grad=True), None
    b = a.detach().clone().requires_grad_(True)
    ours, theirs = Adam([a], lr=0.1), torch.optim.Adam([b], lr=0.1)
    for _ in range(5):
        grad = torch.randn(5)
        ours.step((grad,))
        b.grad = grad.clone()
        theirs.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_cw_objective_decreases():
    model = linear([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.5], [0.2, 0.2, -1.0, -1.0]])
    x = torch.tensor([[0.8, 0.2, 0.5, 0.4], [0.3, 0.6, 0.1, 0.9]])
    attack = CW(model, c=2.0, steps=100, lr=0.01, binary_search_steps=1, abort_early=False)
    attack(x, torch.tensor([0, 1]))
    trace = attack.last_stats.loss_trace[0]
    assert len(trace) == 10  # recorded every 10% of the iterations
    # Adam is not monotone once the margin clamp is reached, but the objective falls overall
    assert trace[-1] < 0.2 * trace[0] and all(value < trace[0] for value in trace[1:])
    assert all(b <= a for a, b in zip(trace[:6], trace[1:6]))  # strictly downhill before the kink


def test_a_pixel_exactly_at_zero_can_move():
    # class 1 wins only once pixel 0 (exactly 0 in x) rises above 1e-3; pixel 1 is irrelevant
    model = linear([[0.0, 0.0], [50.0, 0.0]], bias=[0.05, 0.0])
    x, y = torch.tensor([[0.0, 0.5]]), torch.tensor([0])
    attack = CW(model, c=10.0, steps=150, lr=0.05, binary_search_steps=1, abort_early=False)
    x_adv = attack(x, y)
    assert x_adv[0, 0] > 1e-3 and attack.last_stats.success.all()
    frozen = CW(model, c=10.0, steps=150, lr=0.05, binary_search_steps=1, abort_early=False, tanh_scale=1.0,
                start_margin=0.0)
    x_frozen = frozen(x, y)
    assert x_frozen[0, 0] == 0.0 and not frozen.last_stats.success.any()


def test_failures_are_reported_as_failures_and_return_the_clean_image():
    model = linear([[2.0, 0.0], [0.0, 2.0]])
    x, y = torch.tensor([[0.9, 0.1], [0.2, 0.7]]), torch.tensor([0, 1])
    attack = CW(model, c=1e-3, steps=2, binary_search_steps=1)
    x_adv = attack(x, y)
    assert not attack.last_stats.success.any() and attack.last_stats.success_rate == 0.0
    assert torch.equal(x_adv, x) and attack.last_stats.iterations_to_success.tolist() == [-1, -1]


def test_targeted_cw_hits_the_target_and_records_when():
    model = linear([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], bias=[0.0, 0.0, 0.9])
    x, target = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.5]]), torch.tensor([2, 0, 1])
    attack = CW(model, c=1.0, steps=200, lr=0.05, binary_search_steps=4, targeted=True)
    x_adv = attack(x, target)
    stats = attack.last_stats
    assert torch.equal(model(x_adv).argmax(1), target) and stats.success.all()
    assert ((stats.iterations_to_success >= 1) & (stats.iterations_to_success <= stats.iterations)).all()
    assert (stats.queries_to_success == 2 * stats.iterations_to_success).all()  # one fwd + one bwd each
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_early_abort_on_a_plateau_stops_after_one_check_interval():
    model = linear([[0.0, 0.0], [0.0, 0.0]], bias=[1.0, 0.0])  # constant logits: the objective never moves
    attack = CW(model, c=1.0, steps=100, binary_search_steps=2, abort_early=True)
    attack(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    assert attack.last_stats.iterations == 2 * 11  # checks at iterations 0 and 10, abort at the second


def test_binary_search_lowers_the_distortion_of_a_large_initial_c():
    model = linear([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.5], [0.2, 0.2, -1.0, -1.0]])
    x, y = torch.tensor([[0.8, 0.2, 0.5, 0.4], [0.3, 0.6, 0.1, 0.9]]), torch.tensor([0, 1])
    one = CW(model, c=100.0, steps=200, lr=0.05, binary_search_steps=1)
    many = CW(model, c=100.0, steps=200, lr=0.05, binary_search_steps=6)
    l2_one = (one(x, y) - x).norm(dim=1)
    l2_many = (many(x, y) - x).norm(dim=1)
    assert one.last_stats.success.all() and many.last_stats.success.all()
    assert (l2_many <= l2_one + 1e-6).all() and (l2_many < l2_one).any()
