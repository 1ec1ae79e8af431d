"""Mean Teacher as used by A*HAR (arXiv:2101.04859): EMA, masked CE, consistency, ramps, sampler."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import train
from honed.sequence.har_cnn import HARConvNet, TimeMaxPool
from honed.sequence.mean_teacher import (MeanTeacher, RandomBatches, TwoStreamBatches, balanced_labeled_indices,
                                         ema_update, masked_cross_entropy, semi_supervised_targets, sigmoid_rampdown,
                                         sigmoid_rampup, softmax_mse_consistency)


def test_ema_update_is_exact():
    teacher, student = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 2.0]])); teacher.bias.fill_(4.0)
        student.weight.copy_(torch.tensor([[3.0, -2.0]])); student.bias.fill_(0.0)
    ema_update(teacher, student, 0.75)
    assert torch.allclose(teacher.weight, torch.tensor([[1.5, 1.0]]))  # 0.75*1 + 0.25*3, 0.75*2 - 0.25*2
    assert torch.allclose(teacher.bias, torch.tensor([3.0]))
    with pytest.raises(InputError):
        ema_update(teacher, student, 1.5)


def test_cross_entropy_ignores_minus_one_and_divides_by_batch_size():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, -5.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, -1, -1])
    expected = (math.log(2) + (2 + math.log(1 + math.exp(-2)))) / 4  # two labeled CE terms over B = 4
    assert masked_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert masked_cross_entropy(logits, torch.full((4,), -1)).item() == 0.0
    with pytest.raises(InputError):
        masked_cross_entropy(logits, torch.tensor([0, 2, -1, -1]))


def test_consistency_by_hand_and_zero_for_equal_outputs():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # softmax 0.5/0.5 vs 0.75/0.25
    assert softmax_mse_consistency(s, t).item() == pytest.approx(0.0625)  # mean(0.25^2, 0.25^2)
    student = HARConvNet(4, (2, 2, 2, 2, 2, 2), dropout=0.0, input_noise=0.0)
    mt = MeanTeacher(student, torch.optim.Adam(student.parameters()), total_steps=10)
    x = torch.randn(3, 9, 32)
    assert softmax_mse_consistency(student(x), mt.teacher(x)).item() == 0.0


def test_teacher_receives_no_gradient_and_follows_the_ema():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    mt = MeanTeacher(student, opt, total_steps=5, ema_decay=0.9, rampup_steps=0, rampdown_steps=0, max_lr=0.1)
    before_t = [p.clone() for p in mt.teacher.parameters()]
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, -1, -1, -1])
    mt.step(x, y)
    assert all(p.grad is None and not p.requires_grad for p in mt.teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())
    for t0, t1, s in zip(before_t, mt.teacher.parameters(), student.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s.detach(), atol=1e-6)


def test_ramps_hit_one_at_end_of_rampup_and_exp_minus_12_5_at_the_end():
    assert sigmoid_rampup(0, 10_000) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(10_000, 10_000) == 1.0 and sigmoid_rampup(9_999, 10_000) < 1.0
    assert sigmoid_rampdown(37_500 - 6_250, 37_500, 6_250) == 1.0
    assert sigmoid_rampdown(37_500, 37_500, 6_250) == pytest.approx(math.exp(-12.5))
    mt = MeanTeacher(nn.Linear(2, 2), torch.optim.Adam(nn.Linear(2, 2).parameters()), total_steps=37_500,
                     max_consistency=2.0, max_lr=0.003)
    end = mt.schedule(37_500)
    assert end["lr"] == pytest.approx(0.003 * math.exp(-12.5))
    assert end["beta1"] == pytest.approx(0.9 * math.exp(-12.5) + 0.5 * (1 - math.exp(-12.5)))
    assert mt.schedule(10_000)["consistency_weight"] == 2.0


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(2, 5), st.integers(0, 1000))
def test_sampler_returns_exactly_n_over_k_per_class(per_class, k, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (200,), generator=gen)
    labels[: k * 6] = torch.arange(k).repeat(6)  # every class has >= 6 samples
    idx = balanced_labeled_indices(labels, per_class * k, k, gen)
    assert torch.equal(torch.bincount(labels[idx], minlength=k), torch.full((k,), per_class))
    assert len(idx.unique()) == len(idx)
    indices, targets = semi_supervised_targets(labels, idx)
    assert len(indices) == 200 + len(idx) and (targets != -1).sum() == len(idx)
    assert torch.equal(targets[idx], labels[idx])


def test_sampler_rejects_bad_budgets():
    labels = torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(InputError, match="multiple"):
        balanced_labeled_indices(labels, 3, 2)
    with pytest.raises(InputError, match="fewer"):
        balanced_labeled_indices(labels, 6, 2)


def test_random_batches_cover_the_pool_once_per_pass():
    x = torch.arange(10.0).view(10, 1)
    batches = list(RandomBatches(x, torch.arange(10), torch.arange(10), 5, 2, seed=3))
    seen = torch.cat([b[0].flatten() for b in batches]).sort().values
    assert torch.equal(seen, torch.arange(10.0))


def _two_stream(labeled_per_batch=3, batch_size=8, steps=12, seed=5):
    x = torch.arange(40.0).view(40, 1)  # x value = window index
    labeled = torch.tensor([2, 9, 17, 30, 33])
    unlabeled = torch.tensor([i for i in range(40) if i not in labeled.tolist()])
    return TwoStreamBatches(x, labeled, labeled % 7, unlabeled, batch_size, labeled_per_batch, steps, seed), labeled


def test_two_stream_batches_hold_exactly_the_labeled_count_and_cycle_the_labeled_set():
    sampler, labeled = _two_stream()
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12
    drawn = []
    for xb, yb in batches:
        idx = xb.flatten().long()
        assert xb.shape == (8, 1) and yb.shape == (8,)
        assert (yb != -1).sum() == 3 and torch.all(yb[3:] == -1)
        assert torch.equal(yb[:3], idx[:3] % 7)  # labeled targets travel with their windows
        assert all(i in labeled.tolist() for i in idx[:3].tolist())
        assert not any(i in labeled.tolist() for i in idx[3:].tolist())  # unlabeled from the rest
        drawn += idx[:3].tolist()
    for start in range(0, 35, 5):  # 36 labeled draws: every full pass of 5 visits each labeled window once
        assert sorted(drawn[start:start + 5]) == labeled.tolist()
    unl = torch.cat([xb[3:].flatten() for xb, _ in batches])[:35]  # first pass over the 35 unlabeled
    assert len(unl.unique()) == 35


def test_two_stream_batches_are_deterministic_under_a_seed_and_validate():
    a = [torch.cat([xb.flatten(), yb.float()]) for xb, yb in _two_stream(seed=1)[0]]
    b = [torch.cat([xb.flatten(), yb.float()]) for xb, yb in _two_stream(seed=1)[0]]
    c = [torch.cat([xb.flatten(), yb.float()]) for xb, yb in _two_stream(seed=2)[0]]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    full, _ = _two_stream(labeled_per_batch=8)
    assert all(torch.all(yb != -1) for _, yb in full)
    with pytest.raises(InputError, match="exceeds"):
        _two_stream(labeled_per_batch=9)
    with pytest.raises(InputError):
        _two_stream(labeled_per_batch=0)
    with pytest.raises(InputError, match="unlabeled"):
        TwoStreamBatches(torch.zeros(4, 1), torch.tensor([0]), torch.tensor([1]), torch.tensor([], dtype=torch.long),
                         4, 2, 3)


def test_callback_route_equals_step_route():
    def make():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        return model, MeanTeacher(model, opt, total_steps=4, ema_decay=0.5, rampup_steps=2, rampdown_steps=1)
    x, y = torch.randn(8, 3), torch.tensor([0, 1, -1, -1, 0, -1, 1, -1])
    a_model, a = make()
    for _ in range(4):
        a.step(x, y)
    b_model, b = make()
    train(b_model, [(x, y)], b.optimizer, 4, loss_fn=b.loss_fn, callbacks=[b], progress=False)
    for pa, pb in zip(a.teacher.parameters(), b.teacher.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_cnn_shapes_time_only_pooling_and_errors():
    net = HARConvNet(7, (2, 3, 3, 4, 3, 2))
    assert net(torch.randn(5, 9, 64)).shape == (5, 7)
    x = torch.randn(2, 3, 9, 7)
    assert torch.equal(TimeMaxPool()(x), nn.MaxPool2d((1, 2))(x))
    with pytest.raises(InputError):
        net(torch.randn(5, 9, 10))


def test_pools_and_batches_stay_on_the_labels_device(device):
    """Issue 18: the training pool and the two-stream targets live on the labels' device."""
    labels = (torch.arange(12) % 3).to(device)
    labeled = torch.tensor([0, 1, 2], device=device)
    indices, targets = semi_supervised_targets(labels, labeled)
    assert indices.device == targets.device == torch.device(device)
    x = torch.rand(12, 2, device=device)
    unlabeled = torch.arange(3, 12, device=device)
    batch_x, batch_y = next(iter(TwoStreamBatches(x, labeled, labels[labeled], unlabeled, 4, 1, 1, 0)))
    assert batch_x.device == batch_y.device == torch.device(device) and (batch_y[1:] == -1).all()
