"""Guided CW (method card 15): the card's invariants for Variants A and B, and oracles on linear toys."""
import math

import pytest
import torch
from torch import nn

from honed.robust.attacks import CW, GuidedCW
from honed.robust.attacks.cw import TanhIterate, from_tanh_space
from honed.robust.attacks.guided_cw import GradientConstrainedIterate, inverse_softplus, unit_linf
from tests.robust.toy_models import linear as toy_linear

WEIGHT = [[1.0, -1.0, 0.5, 0.0, 2.0, -0.5],
          [-1.0, 1.0, 0.0, 0.5, -2.0, 0.5],
          [0.3, 0.2, -1.0, -1.0, 0.0, 1.0]]


def linear() -> nn.Linear:
    """The 3-class toy model these tests attack."""
    return toy_linear(WEIGHT)


def toy_inputs():
    x = torch.tensor([[0.8, 0.2, 0.5, 0.0, 1.0, 0.4], [0.3, 0.6, 0.0, 0.9, 0.1, 1.0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    return x, linear()(x).argmax(1).detach()


def hand_margin_gradient(x, labels, targeted):
    """For logits W x the margin's gradient is W_y - W_j* (untargeted) or W_j* - W_t (targeted),
    with j* the best other class."""
    weight = torch.tensor(WEIGHT)
    logits = x @ weight.T
    other = logits.scatter(1, labels[:, None], float("-inf")).argmax(1)
    return weight[other] - weight[labels] if targeted else weight[labels] - weight[other]


def test_softplus_inverse_and_linf_unit():
    m = torch.tensor([1e-3, 0.1, 1.0, 5.0])
    assert torch.allclose(torch.nn.functional.softplus(inverse_softplus(m)), m, rtol=1e-5)
    g = torch.tensor([[2.0, -4.0, 1.0], [0.0, 0.0, 0.0]])
    assert unit_linf(g).tolist() == [[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("targeted", [False, True])
def test_variant_a_moves_each_pixel_only_against_its_clean_gradient(targeted):
    x, y = toy_inputs()
    labels = (y + 1) % 3 if targeted else y
    attack = GuidedCW(linear(), variant="A", init_magnitude=0.05, lr=0.1, c=1.0, steps=200,
                      binary_search_steps=3, targeted=targeted)
    delta = attack(x, labels) - x
    g0 = hand_margin_gradient(x, labels, targeted)
    assert attack.last_stats.success.all() and (delta != 0).any()
    assert ((delta == 0) | (torch.sign(delta) == -torch.sign(g0))).all()  # sign(delta_i) in {0, -sign(g0_i)}


def test_variant_a_iterate_starts_at_init_magnitude_along_the_unit_gradient():
    x = torch.tensor([[0.5, 0.5, 0.0]])
    direction = unit_linf(torch.tensor([[2.0, -1.0, 4.0]]))
    iterate = GradientConstrainedIterate(x, direction, 1e-3)
    assert torch.allclose(iterate.perturbation(), torch.tensor([[-5e-4, 2.5e-4, -1e-3]]), atol=1e-9)
    assert iterate.image()[0, 2] == 0.0  # clipped to the box


def test_variant_a_rebase_in_the_same_basis_keeps_the_image():
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    direction = torch.tensor([[1.0, -0.5, 0.25, -1.0]])
    iterate = GradientConstrainedIterate(x, direction, 1e-3)
    with torch.no_grad():
        iterate.v.copy_(inverse_softplus(torch.tensor([[0.2, 0.3, 0.4, 0.1]])))
    before = iterate.image().detach().clone()
    iterate.rebase(direction.clone())
    assert torch.allclose(iterate.image(), before, atol=1e-6)
    iterate.rebase(-direction)  # no pixel fits the opposite signs: all restart at init_magnitude
    assert torch.allclose(torch.nn.functional.softplus(iterate.v), torch.full((1, 4), 1e-3), rtol=1e-4)


def test_variant_a_recomputes_g0_at_every_search_step_and_every_refresh():
    x, y = toy_inputs()
    plain = GuidedCW(linear(), variant="A", c=1.0, steps=20, binary_search_steps=3, abort_early=False)
    plain(x, y)
    assert plain.last_stats.forwards == 3 * 20 + 3  # one g0 per search step
    refreshed = GuidedCW(linear(), variant="A", c=1.0, steps=20, binary_search_steps=3, abort_early=False,
                         refresh_every=5)
    refreshed(x, y)
    assert refreshed.last_stats.forwards == 3 * 20 + 3 + 3 * 4


@pytest.mark.parametrize("variant", ["A", "B"])
def test_guided_iterates_stay_in_the_box_and_success_is_rechecked(variant):
    x, y = toy_inputs()
    attack = GuidedCW(linear(), variant=variant, c=1.0, steps=100, lr=0.05, binary_search_steps=3,
                      init_magnitude=0.05, eta0=2.0)
    x_adv = attack(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(attack.last_stats.success, linear()(x_adv).argmax(1) != y)


def test_variant_b_without_guidance_is_cw_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.rand(5, 6)
    y = model(x).argmax(1).detach()
    shared = dict(c=0.1, steps=40, binary_search_steps=4, lr=0.05)
    cw, gcw = CW(model, **shared), GuidedCW(model, variant="B", eta0=0.0, **shared)
    torch.manual_seed(1)
    x_cw = cw(x, y)
    torch.manual_seed(1)
    x_gcw = gcw(x, y)
    assert torch.equal(x_cw, x_gcw)
    assert torch.equal(cw.last_stats.iterations_to_success, gcw.last_stats.iterations_to_success)
    assert cw.last_stats.queries == gcw.last_stats.queries and cw.last_stats.loss_trace == gcw.last_stats.loss_trace


def test_variant_b_correction_matches_the_hand_step_and_spares_adversarial_rows():
    x, y = toy_inputs()
    attack = GuidedCW(linear(), variant="B", eta0=0.5)
    iterate = TanhIterate(x)
    with torch.no_grad():  # move every row a little, and push row 2 across the boundary
        iterate.w.add_(torch.tensor([[0.3, -0.2, 0.1, 0.0, 0.0, 0.2], [0.1, 0.1, 0.0, -0.2, 0.3, 0.0],
                                     [-5.0, 5.0, 0.0, 0.0, -5.0, 0.0]]))
    x_now = from_tanh_space(iterate.w).detach()
    logits = linear()(x_now)
    assert logits.argmax(1)[2] != y[2] and (logits.argmax(1)[:2] == y[:2]).all()
    attack._labels = y
    attack.gradient_correction(iterate, x, y)
    g = hand_margin_gradient(x_now, y, targeted=False)
    eta = 0.5 * (x_now - x).norm(dim=1, keepdim=True) / math.sqrt(6)
    expected = (x_now - eta * g / g.norm(dim=1, keepdim=True)).clamp(0, 1)
    assert torch.allclose(from_tanh_space(iterate.w[:2]), expected[:2], atol=1e-5)
    assert torch.allclose(from_tanh_space(iterate.w[2]), x_now[2])  # already adversarial: untouched
    assert attack._stats.forwards == 1 and attack._stats.backwards == 1


def test_variant_b_spends_one_extra_pass_per_iteration():
    x, y = toy_inputs()
    attack = GuidedCW(linear(), variant="B", c=1e-3, steps=10, binary_search_steps=1, abort_early=False)
    attack(x, y)
    assert attack.last_stats.forwards == 2 * 10 and attack.last_stats.backwards == 2 * 10


def test_variant_a_changes_images_at_its_defaults_where_a_tiny_start_cannot():
    x, y = toy_inputs()
    attack = GuidedCW(linear())  # variant A, c = 1, 50 steps, one search step
    x_adv = attack(x, y)
    assert attack.last_stats.success.all() and ((x_adv - x).flatten(1).abs().amax(1) > 0).all()
    tiny = GuidedCW(linear(), init_magnitude=1e-3)  # softplus(v) grows by <= exp(lr) per step
    assert not tiny(x, y).ne(x).any() and not tiny.last_stats.success.any()
