"""Loss-change-ratio balancing (arXiv:2008.12463): the ratio formula, the D/G decision rule with ties,
limits in lambda, the warm-up, step counters, the epsilon guard, and the WGAN-GP penalty."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.generative.adaptive_updates import (FixedUpdateSchedule, LossChangeRatioScheduler, critic_objective,
                                               gradient_penalty, relative_change, train_gan_updates)
from honed.generative.gan_metrics import sample_gaussian_ring


def test_ratio_formula_on_a_hand_made_loss_sequence():
    sched = LossChangeRatioScheduler(lam=1.0, warmup_cycles=0)
    assert (sched.ratio_d, sched.ratio_g) == (1.0, 1.0)  # initial r_D = r_G = 1
    sched.observe("D", 2.0, -4.0)
    assert (sched.ratio_d, sched.ratio_g) == (1.0, 1.0)  # one observation: nothing to compare yet
    sched.observe("D", 3.0, -5.0)  # r_D = |3 - 2| / 2, r_G = |-5 + 4| / 4
    assert sched.ratio_d == pytest.approx(0.5) and sched.ratio_g == pytest.approx(0.25)
    sched.observe("G", -1.5, -4.0)  # sign change: |-1.5 - 3| / 3, |-4 + 5| / 5
    assert sched.ratio_d == pytest.approx(1.5) and sched.ratio_g == pytest.approx(0.2)
    assert relative_change(-2.0, 4.0) == (pytest.approx(1.5), False)


@pytest.mark.parametrize("lam, expected", [(1.9, "D"), (2.0, "G"), (2.1, "G")])
def test_decision_rule_updates_d_iff_ratio_exceeds_lambda_times_ratio_g_ties_to_g(lam, expected):
    sched = LossChangeRatioScheduler(lam=lam, warmup_cycles=0)
    sched.observe("D", 2.0, 4.0)
    sched.observe("D", 3.0, 5.0)  # r_D = 0.5, r_G = 0.25 exactly: lam = 2 is a tie
    assert sched.choose() == expected


losses = st.builds(lambda size, sign: size * sign, st.floats(0.1, 10), st.sampled_from((-1.0, 1.0)))  # |loss| >= 0.1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(losses, losses), min_size=2, max_size=12))
def test_tiny_lambda_always_picks_d_and_huge_lambda_always_picks_g(sequence):
    small = LossChangeRatioScheduler(lam=1e-12, warmup_cycles=0)
    large = LossChangeRatioScheduler(lam=1e12, warmup_cycles=0)
    for loss_d, loss_g in sequence:
        for sched in (small, large):
            sched.observe(sched.choose(), loss_d, loss_g)
        if small.ratio_d > 0:
            assert small.choose() == "D"
        if large.ratio_g > 0:  # r_D <= 200 here, so lam * r_G dominates whenever r_G > 0
            assert large.choose() == "G"


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(0, 4), st.lists(st.tuples(losses, losses), min_size=40, max_size=40))
def test_warmup_follows_the_fixed_schedule_exactly(n_critic, cycles, sequence):
    sched = LossChangeRatioScheduler(lam=1e12, n_critic=n_critic, warmup_cycles=cycles)  # rule alone would say G
    chosen = []
    for loss_d, loss_g in sequence[:cycles * (n_critic + 1)]:
        chosen.append(sched.choose())
        sched.observe(chosen[-1], loss_d, loss_g)
    assert "".join(chosen) == ("D" * n_critic + "G") * cycles


def test_zero_previous_loss_uses_the_epsilon_guard_and_counts_it():
    sched = LossChangeRatioScheduler(lam=1.0, warmup_cycles=0, eps=1e-6)
    sched.observe("D", 0.0, 0.0)
    sched.observe("G", 1.0, 0.0)  # |1 - 0| / eps and |0 - 0| / eps
    assert sched.ratio_d == pytest.approx(1e6) and sched.ratio_g == 0.0
    assert sched.guard_hits == 2 and math.isfinite(sched.ratio_d)
    assert sched.choose() == "D"


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(InputError, match="lam"):
        LossChangeRatioScheduler(lam=0.0)
    sched = LossChangeRatioScheduler()
    with pytest.raises(InputError, match="finite"):
        sched.observe("D", float("nan"), 1.0)
    with pytest.raises(InputError, match="both"):
        sched.observe("D", 1.0, None)
    with pytest.raises(InputError, match="'D' or 'G'"):
        sched.observe("X", 1.0, 1.0)
    with pytest.raises(InputError, match="scalar"):
        sched.observe("D", torch.ones(2), 1.0)
    with pytest.raises(InputError, match="n_d"):
        FixedUpdateSchedule(0, 1)


def linear_critic(weights):
    critic = nn.Linear(len(weights), 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([weights]))
    return critic


def test_gradient_penalty_of_a_linear_critic_is_norm_minus_one_squared():
    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    assert gradient_penalty(linear_critic([3.0, 4.0]), real, fake).item() == pytest.approx(16.0)
    assert gradient_penalty(linear_critic([0.6, 0.8]), real, fake).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError, match="shape"):
        gradient_penalty(linear_critic([1.0, 0.0]), real, fake[:3])


def test_critic_objective_is_fake_mean_minus_real_mean_plus_penalty():
    critic = linear_critic([3.0, 4.0])
    real, fake = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # D(fake) = [0, 7], D(real) = [3, 4]: 3.5 - 3.5 + 10 * (5 - 1)^2
    assert critic_objective(critic, real, fake, lambda_gp=10.0).item() == pytest.approx(160.0)
    assert critic_objective(critic, real, fake, lambda_gp=0.0).item() == pytest.approx(0.0)


def tiny_gan(seed=0):
    torch.manual_seed(seed)
    return (nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)),
            nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)))


@pytest.mark.parametrize("schedule", [FixedUpdateSchedule(5, 1), FixedUpdateSchedule(1, 1),
                                      LossChangeRatioScheduler(lam=0.5, n_critic=5, warmup_cycles=2)])
def test_counters_add_up_to_the_budget_and_warmup_runs_inside_the_loop(schedule):
    g, d = tiny_gan()
    log = train_gan_updates(g, d, lambda n, rng: sample_gaussian_ring(n, rng), schedule, 40, z_dim=2,
                            batch_size=16, eval_every=10, evaluate=lambda net: {"mmd2": 0.0})
    assert log.d_steps + log.g_steps == 40 == len(log.decisions)
    assert log.d_steps == log.decisions.count("D")
    assert [e["update"] for e in log.evals] == [0, 10, 20, 30, 40]
    if isinstance(schedule, LossChangeRatioScheduler):
        assert log.decisions[:12] == "DDDDDG" * 2
    else:
        assert log.decisions == (("D" * schedule.n_d + "G") * 40)[:40]


def test_generator_steps_leave_the_critic_unchanged_and_runs_are_reproducible():
    logs, critics = [], []
    for _ in range(2):
        g, d = tiny_gan()
        before = [p.clone() for p in d.parameters()]
        schedule = FixedUpdateSchedule(1, 1)
        schedule.d_steps = 1  # start on a G step: choose() sees step 1 of a 1:1 cycle
        log = train_gan_updates(g, d, lambda n, rng: sample_gaussian_ring(n, rng), schedule, 1, z_dim=2,
                                batch_size=16, evaluate=lambda net: {"out": net(torch.ones(1, 2)).sum().item()})
        assert log.decisions == "G" and all(torch.equal(a, b) for a, b in zip(before, d.parameters()))
        logs.append(log.evals[-1]["out"])
    assert logs[0] == logs[1] and logs[0] != 0.0


def test_training_follows_the_generator_device_by_default(device):
    """Issue 18: no CPU default - batches, noise and the seeded generator live on the nets' device."""
    g, d = (net.to(device) for net in tiny_gan())
    seen = []
    def sample(n, rng):
        seen.append(rng.device)
        return sample_gaussian_ring(n, rng)
    log = train_gan_updates(g, d, sample, FixedUpdateSchedule(1, 1), 2, z_dim=2, batch_size=8)
    assert log.d_steps + log.g_steps == 2 and set(seen) == {torch.device(device)}
