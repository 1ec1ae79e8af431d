"""Query prior attack (arXiv:2205.09518): WACE oracle, prior masking/weights, exact victim query
counts, budget, eps-ball and box, perfect-prior advantage, bad inputs."""
import math

import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.robust.attacks.query_prior import (QueryPriorAttack, RandomSignSearch, default_steps, query_prior,
                                              query_steps, wace_loss)


class CountingVictim(nn.Module):
    """Wraps a model and counts its forward calls and the rows forwarded, independently of the attack."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls, self.rows = model, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += len(x)
        return self.model(x)


def toy_models(seed: int = 0):
    torch.manual_seed(seed)
    victim = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 5))
    surrogate = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 5))
    x = torch.rand(40, 1, 4, 4)
    with torch.no_grad():
        y = victim(x).argmax(1)
    return victim, surrogate, x, y


def test_query_prior_masks_true_class_and_weights_sum_to_one():
    scores = torch.tensor([[5.0, 4.0, 1.0, 0.0], [0.0, 1.0, 3.0, 2.0]])
    y = torch.tensor([0, 2])
    classes, weights = query_prior(scores, y, top_n=1)
    assert classes.tolist() == [[1], [3]] and weights.tolist() == [[1.0], [1.0]]
    classes, weights = query_prior(scores, y, top_n=2)
    assert classes.tolist() == [[1, 2], [3, 1]]
    expected = torch.softmax(torch.tensor([4.0, 1.0]), 0)
    assert torch.allclose(weights[0], expected)
    assert torch.allclose(weights.sum(1), torch.ones(2))
    classes, weights = query_prior(scores, y, top_n=10)  # capped at K - 1, never the true class
    assert classes.shape == (2, 3) and not (classes == y.view(-1, 1)).any()


def test_query_prior_renormalises_probabilities():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    classes, weights = query_prior(probs, torch.tensor([0]), top_n=2, victim_output="probabilities")
    assert classes.tolist() == [[1, 2]]
    assert torch.allclose(weights, torch.tensor([[0.3 / 0.45, 0.15 / 0.45]]))


def test_wace_with_n1_is_ce_minus_ce_of_top_wrong_class():
    z = torch.tensor([[2.0, 1.0, 0.5], [0.1, 0.2, 0.3]])
    y = torch.tensor([0, 1])
    victim = torch.tensor([[3.0, 0.0, 1.0], [5.0, 6.0, 0.0]])  # top wrong: class 2, then class 0
    classes, weights = query_prior(victim, y)
    lse = torch.logsumexp(z, 1)
    by_hand = ((lse - z[[0, 1], [0, 1]]) - (lse - z[[0, 1], [2, 0]]))  # = z_j* - z_y
    assert torch.allclose(wace_loss(z, y, classes, weights, "none"), by_hand)
    assert math.isclose(float(wace_loss(z, y, classes, weights)), float(by_hand.mean()), rel_tol=1e-6)


def test_schedule_and_step_rule():
    assert query_steps(10, 3) == [0, 3, 6] and query_steps(5, 1) == [0] and query_steps(4, 0) == []
    assert default_steps(0.1) == 29 and default_steps(4 / 255) == 5
    with pytest.raises(InputError):
        query_steps(2, 3)


@pytest.mark.parametrize("mode,query_num,early_stop", [("fgsm", 1, True), ("ifgsm", 3, True),
                                                       ("mifgsm", 5, False), ("ifgsm", 0, True)])
def test_counter_equals_independent_victim_count_and_budget_holds(mode, query_num, early_stop):
    victim, surrogate, x, y = toy_models()
    counted = CountingVictim(victim)
    attack = QueryPriorAttack(counted, surrogate, mode=mode, eps=0.2, steps=10 if mode != "fgsm" else 0,
                              loss="wace" if query_num else "ce", query_num=query_num, early_stop=early_stop)
    attack(x, y)
    stats = attack.last_stats
    assert stats.forwards == counted.calls and int(attack.queries_used.sum()) == counted.rows
    assert stats.backwards == 0
    assert int(attack.queries_used.max()) <= attack.max_queries == query_num + 1
    if not early_stop:
        assert counted.calls == query_num + 1 and (attack.queries_used == query_num + 1).all()
    hit = stats.success
    assert ((stats.queries_to_success >= 1) == hit).all()
    assert (stats.queries_to_success[hit] <= attack.queries_used[hit]).all()


def test_random_sign_search_counts_and_budget():
    victim, surrogate, x, y = toy_models(1)
    for prior in (None, surrogate):
        counted = CountingVictim(victim)
        attack = RandomSignSearch(counted, eps=0.3, max_queries=4, surrogate=prior,
                                  generator=torch.Generator().manual_seed(0))
        x_adv = attack(x, y)
        assert attack.last_stats.forwards == counted.calls <= 4
        assert int(attack.queries_used.sum()) == counted.rows and int(attack.queries_used.max()) <= 4
        assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        # reported success is the victim's verdict on the returned images
        with torch.no_grad():
            assert torch.equal(victim(x_adv).argmax(1) != y, attack.last_stats.success)


@pytest.mark.parametrize("mode", ["fgsm", "ifgsm", "mifgsm"])
def test_perturbation_inside_eps_ball_and_box(mode):
    victim, surrogate, x, y = toy_models(2)
    x = x.clamp(0.02, 0.98)
    x[:5] = 0.0
    attack = QueryPriorAttack(victim, surrogate, mode=mode, eps=0.07, steps=6 if mode != "fgsm" else 0,
                              query_num=1, alpha=0.03 if mode != "fgsm" else None)
    x_adv = attack(x, y)
    assert (x_adv - x).abs().max() <= 0.07 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(victim(x_adv).argmax(1) != y, attack.last_stats.success)


def test_first_wace_step_raises_victims_top_wrong_logit_when_surrogate_is_victim():
    victim, _, x, y = toy_models(3)
    with torch.no_grad():
        top_wrong = victim(x).scatter(1, y.view(-1, 1), float("-inf")).argmax(1)
    attack = QueryPriorAttack(victim, victim, mode="fgsm", eps=0.02, early_stop=False)
    x_adv = attack(x, y)
    with torch.no_grad():
        before = victim(x).gather(1, top_wrong.view(-1, 1))
        after = victim(x_adv).gather(1, top_wrong.view(-1, 1))
    assert (after > before).float().mean() >= 0.9


def test_perfect_prior_needs_fewer_queries_than_no_prior_search():
    victim, _, x, y = toy_models(4)
    budget, eps = 6, 0.25
    blind = RandomSignSearch(victim, eps=eps, max_queries=budget, generator=torch.Generator().manual_seed(0))
    primed = RandomSignSearch(victim, eps=eps, max_queries=budget, surrogate=victim,
                              generator=torch.Generator().manual_seed(0))
    blind(x, y)
    primed(x, y)
    cost = lambda a: torch.where(a.last_stats.success, a.queries_used, budget + 1).float().mean()  # noqa: E731
    assert primed.last_stats.success.float().mean() >= blind.last_stats.success.float().mean()
    assert cost(primed) < cost(blind)
    # the method with a perfect prior beats plain transfer from a different surrogate
    _, other, _, _ = toy_models(9)
    same = QueryPriorAttack(victim, victim, mode="ifgsm", eps=eps, steps=5, alpha=0.06)
    transfer = QueryPriorAttack(victim, other, mode="ifgsm", eps=eps, steps=5, alpha=0.06, loss="ce", query_num=0)
    same(x, y)
    transfer(x, y)
    assert same.last_stats.success_rate > transfer.last_stats.success_rate


def test_bad_inputs_raise_input_error():
    victim, surrogate, x, y = toy_models()
    with pytest.raises(InputError):
        QueryPriorAttack(victim, surrogate, mode="pgd")
    with pytest.raises(InputError):
        QueryPriorAttack(victim, surrogate, loss="wace", query_num=0)
    with pytest.raises(InputError):
        QueryPriorAttack(victim, surrogate, query_num=2, max_queries=2)
    with pytest.raises(InputError):
        QueryPriorAttack(victim, "not a model")
    with pytest.raises(InputError):
        QueryPriorAttack(victim, surrogate, eps=-0.1)
    with pytest.raises(InputError):
        QueryPriorAttack(victim, surrogate, targeted=True)
    with pytest.raises(InputError):
        RandomSignSearch(victim, resample_fraction=1.5)
    with pytest.raises(InputError):
        RandomSignSearch(victim, max_queries=0)
    attack = QueryPriorAttack(victim, surrogate, mode="fgsm")
    with pytest.raises(InputError):
        attack(x * 2, y)
    with pytest.raises(InputError):
        attack(x.clone().fill_(float("nan")), y)
    with pytest.raises(InputError):
        attack(x, y.float())
    with pytest.raises(InputError):
        query_prior(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(InputError):
        query_prior(torch.tensor([[0.5, 1.5]]), torch.tensor([0]), victim_output="probabilities")


def test_random_signs_with_a_cpu_generator_land_on_the_requested_device():
    """Issue 18: sign draws happen on the generator's device, then move to the input's."""
    from tests.device_checks import META, assert_on, cpu_generator
    search = RandomSignSearch(nn.Linear(3, 2), eps=0.1, max_queries=2, generator=cpu_generator())
    assert_on(META, search._random_signs((2, 3), META))
