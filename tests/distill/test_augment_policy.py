"""Role-wise KD / PBA augmentation agents (arXiv:2004.08861): policy encoding, the op walk, the torch ops,
explore's ranges and PBT exploit."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.distill.augment_policy import (COUNT_PROBS, OP_NAMES, POLICY_LENGTH, Schedule, Trial, apply_op,
                                          apply_policy, check_policy, explore_policy, exploit_and_explore,
                                          policy_entries, random_pad_crop, random_policy, sample_op_walk,
                                          zero_policy)


def full_policy(magnitude: int = 5) -> np.ndarray:
    p = np.empty(POLICY_LENGTH, dtype=np.int64)
    p[0::2], p[1::2] = 10, magnitude
    return p


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 8))
def test_policy_stays_60_ints_in_range_after_repeated_explore(seed, rounds):
    rng = np.random.default_rng(seed)
    policy = random_policy(rng)
    for _ in range(rounds):
        policy = explore_policy(policy, rng)
    assert policy.shape == (60,) and policy.dtype == np.int64
    assert policy[0::2].min() >= 0 and policy[0::2].max() <= 10
    assert policy[1::2].min() >= 0 and policy[1::2].max() <= 9


def test_explore_hits_both_range_ends_and_moves_by_at_most_3_when_not_resampled():
    rng = np.random.default_rng(0)
    top = full_policy(9)
    seen = np.stack([explore_policy(top, rng) for _ in range(300)])
    assert seen[:, 0::2].max() == 10 and seen[:, 1::2].max() == 9  # clipped, never above
    zeros = np.stack([explore_policy(zero_policy(), rng) for _ in range(300)])
    assert zeros.min() == 0
    # from 5, a +-{0..3} step lands in 2..8; only resampling (p = 0.2) reaches 0, 1, 9 or 10
    mid = np.full(POLICY_LENGTH, 5)
    moved = np.stack([explore_policy(mid, rng) for _ in range(500)])[:, 0::2]
    far = np.isin(moved, [0, 1, 9, 10]).mean()
    assert 0.2 * 4 / 11 * 0.6 < far < 0.2 * 4 / 11 * 1.4


def test_check_policy_rejects_bad_vectors():
    with pytest.raises(InputError, match="60"):
        check_policy(np.zeros(59, dtype=int))
    bad = zero_policy()
    bad[1] = 10  # magnitude above 9
    with pytest.raises(InputError, match="0-9"):
        check_policy(bad)
    with pytest.raises(InputError, match="ints"):
        check_policy(np.zeros(60))


def test_entries_list_each_op_twice_with_probability_over_ten():
    policy = zero_policy()
    policy[2 * 3], policy[2 * 3 + 1] = 7, 4  # entry 3 = op 3 (Rotate), p = 0.7, m = 4
    entries = policy_entries(policy)
    assert len(entries) == 30
    assert [e[0] for e in entries] == list(OP_NAMES) * 2
    assert entries[3] == ("Rotate", 0.7, 4)


def test_applied_op_count_follows_0_2_0_3_0_5_over_10k_draws():
    rng = np.random.default_rng(0)
    counts = np.bincount([len(sample_op_walk(full_policy(), rng)) for _ in range(10_000)], minlength=3)
    freq = counts / counts.sum()
    assert len(counts) == 3  # never more than 2 ops
    np.testing.assert_allclose(freq, COUNT_PROBS, atol=0.02)


def test_walk_never_applies_dropped_or_zero_probability_ops():
    rng = np.random.default_rng(1)
    policy = full_policy()
    policy[0::2][:15] = 0  # first copies off
    keep = OP_NAMES.index("Rotate")
    policy[0::2][15:] = 0
    policy[2 * (15 + keep)] = 10  # only the second Rotate entry can fire
    ops = [op for _ in range(2000) for op, _ in sample_op_walk(policy, rng)]
    assert ops and set(ops) == {"Rotate"}
    colour_only = zero_policy()
    colour_only[2 * OP_NAMES.index("Color")] = 10
    assert all(sample_op_walk(colour_only, rng) == [] for _ in range(200))


def test_ops_hand_values_on_a_tiny_image():
    rng = np.random.default_rng(0)
    img = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    torch.testing.assert_close(apply_op(img, "Invert", 0, rng), 1 - img)
    torch.testing.assert_close(apply_op(img, "AutoContrast", 0, rng), (img - 0.2) / 0.6)
    # Solarize m=5: threshold (256 - 128) / 255 ~ 0.502 -> 0.6 and 0.8 inverted
    torch.testing.assert_close(apply_op(img, "Solarize", 5, rng), torch.tensor([[[0.2, 0.4], [0.4, 0.2]]]))
    # Brightness m=0: factor 0.1
    torch.testing.assert_close(apply_op(img, "Brightness", 0, rng), 0.1 * img)
    # Posterize m=9: 4 - int(3.6) = 1 bit -> {0, 128/255}
    torch.testing.assert_close(apply_op(img, "Posterize", 9, rng),
                               torch.tensor([[[0.0, 0.0], [128 / 255, 128 / 255]]]))
    assert torch.equal(apply_op(img, "Color", 9, rng), img)


def test_translate_moves_content_by_the_pba_pixel_amount():
    rng = np.random.default_rng(0)
    img = torch.zeros(1, 16, 16)
    img[0, 8, 8] = 1.0
    out = apply_op(img, "TranslateX", 9, rng)  # int(9 * 10 / 10 * 16 / 32) = 4 px, random sign
    ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
    assert ys.tolist() == [8] and abs(xs.item() - 8) == 4


def test_apply_policy_keeps_shape_and_domain_and_zero_policy_is_identity():
    rng = np.random.default_rng(0)
    x = torch.rand(20, 1, 16, 16)
    out = apply_policy(x, full_policy(), rng)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    assert torch.equal(apply_policy(x, zero_policy(), rng), x)
    with pytest.raises(InputError, match="grey"):
        apply_policy(torch.rand(2, 3, 8, 8), zero_policy(), rng)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        apply_policy(x * 2, zero_policy(), rng)


def test_pad_crop_keeps_shape_and_only_shifts():
    rng = np.random.default_rng(0)
    x = torch.rand(5, 1, 8, 8)
    out = random_pad_crop(x, 2, rng)
    assert out.shape == x.shape
    assert torch.equal(random_pad_crop(x, 0, rng), x)
    assert (out.flatten(1).sum(1) <= x.flatten(1).sum(1) + 1e-5).all()  # content shifted out, none added


def test_schedule_is_stretched_to_a_longer_run():
    sched = Schedule([np.full(60, i % 10) for i in range(4)])
    assert [int(sched.at(e, 8)[0]) for e in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert Schedule.from_json(sched.to_json()).to_json() == sched.to_json()
    with pytest.raises(InputError):
        sched.at(8, 8)


def make_trials(n: int):
    trials = []
    for i in range(n):
        torch.manual_seed(i)
        model = nn.Linear(3, 2)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        trials.append(Trial(model, opt, np.full(60, i % 10), [np.full(60, i % 10)]))
    return trials


def test_exploit_copies_weights_optimizer_state_policy_and_history_then_explores():
    trials = make_trials(4)
    scores = [0.1, 0.9, 0.5, 0.3]
    winner_state = {k: v.clone() for k, v in trials[1].model.state_dict().items()}
    winner_adam = trials[1].optimizer.state_dict()["state"][0]["exp_avg"].clone()
    pairs = exploit_and_explore(trials, scores, np.random.default_rng(0))
    assert pairs == [(0, 1)]  # bottom 25% of 4 = trial 0, top 25% = trial 1
    for k, v in trials[0].model.state_dict().items():
        assert torch.equal(v, winner_state[k])
    assert torch.equal(trials[0].optimizer.state_dict()["state"][0]["exp_avg"], winner_adam)
    assert [h.tolist() for h in trials[0].history] == [h.tolist() for h in trials[1].history]
    # explored from the winner's all-1 policy: most ints moved by <= 3 (only resampling goes further)
    assert (np.abs(trials[0].policy - 1) <= 3).mean() >= 0.7
    assert not np.array_equal(trials[0].policy, trials[1].policy)
    # the copy is independent: stepping the loser leaves the winner's Adam state alone
    trials[0].model(torch.randn(4, 3)).sum().backward()
    trials[0].optimizer.step()
    assert torch.equal(trials[1].optimizer.state_dict()["state"][0]["exp_avg"], winner_adam)
    for k, v in trials[1].model.state_dict().items():
        assert torch.equal(v, winner_state[k])
