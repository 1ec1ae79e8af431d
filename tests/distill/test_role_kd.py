"""Role-wise KD (arXiv:2004.08861): KD + RKD losses, the clipped distillation gradient, the frozen
teacher and the PBT search loop."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.distill.augment_policy import Trial, apply_policy, zero_policy
from honed.distill.dorefa import quantize_student
from honed.distill.role_kd import (RoleKDLoss, combine_distillation_gradients, distillation_step,
                                   hinton_kd_loss, pbt_search, rkd_angle_loss, rkd_distance_loss,
                                   step_decay_lr)


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_hinton_kd_hand_value():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # teacher probs (3/4, 1/4) at T=1
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert hinton_kd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-5)
    # at T = 2 the teacher's logits are halved and the loss is scaled by T^2 = 4
    t2 = torch.tensor([[2 * math.log(3.0), 0.0]])
    assert hinton_kd_loss(s, t2, 2.0).item() == pytest.approx(4 * expected, rel=1e-5)
    assert hinton_kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_rkd_terms_vanish_for_scaled_and_shifted_copies_and_not_otherwise():
    torch.manual_seed(0)
    t = torch.randn(6, 4)
    assert rkd_distance_loss(3 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # distances are normalised
    assert rkd_angle_loss(2 * t + 1, t).item() == pytest.approx(0.0, abs=1e-6)  # angles: scale/shift free
    assert rkd_distance_loss(torch.randn(6, 4), t).item() > 1e-3
    assert rkd_angle_loss(torch.randn(6, 4), t).item() > 1e-3


def test_rkd_distance_hand_value_on_three_points():
    t = torch.tensor([[0.0], [1.0], [2.0]])  # distances 1, 2, 1 (mean 4/3)
    s = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 3, 2 (mean 2)
    nt = torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0.0]]) * 3 / 4
    ns = torch.tensor([[0, 1, 3], [1, 0, 2], [3, 2, 0.0]]) / 2
    assert rkd_distance_loss(s, t).item() == pytest.approx(F.smooth_l1_loss(ns, nt).item(), rel=1e-4)


def test_losses_reject_bad_input():
    with pytest.raises(InputError, match="shapes"):
        hinton_kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(InputError, match="NaN"):
        RoleKDLoss()(torch.full((2, 3), float("nan")), torch.zeros(2, 3))
    with pytest.raises(InputError, match="temperature"):
        RoleKDLoss(temperature=0.0)


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_distillation_gradient_norm_is_at_most_ce_gradient_norm_per_tensor(epoch):
    model = tiny_cnn()
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    teacher_logits = torch.randn(8, 3) * 5
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    dist = 1000 * RoleKDLoss()(logits, teacher_logits)  # large, so the clip binds
    g_ce = torch.autograd.grad(ce, list(model.parameters()), retain_graph=True)
    g_dist = torch.autograd.grad(dist, list(model.parameters()), retain_graph=True)
    norms = combine_distillation_gradients(model.parameters(), ce, dist, epoch)
    sig = 1 / (1 + math.exp(-epoch))
    for p, gc, gd, (n_ce, n_dist) in zip(model.parameters(), g_ce, g_dist, norms):
        assert n_dist <= n_ce * sig + 1e-6 and n_dist <= n_ce + 1e-6
        clipped = gd * min(1.0, n_ce * sig / float(gd.norm()))
        torch.testing.assert_close(p.grad, gc + clipped, rtol=1e-4, atol=1e-6)
        assert float((p.grad - gc).norm()) <= float(gc.norm()) + 1e-5


def test_small_distillation_gradient_passes_unclipped():
    model = tiny_cnn()
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    logits = model(x)
    ce, dist = F.cross_entropy(logits, y), 1e-6 * logits.pow(2).mean()
    g_ce = torch.autograd.grad(ce, list(model.parameters()), retain_graph=True)
    g_dist = torch.autograd.grad(dist, list(model.parameters()), retain_graph=True)
    combine_distillation_gradients(model.parameters(), ce, dist, 3)
    for p, gc, gd in zip(model.parameters(), g_ce, g_dist):
        torch.testing.assert_close(p.grad, gc + gd)


def test_teacher_parameters_and_bn_statistics_unchanged_after_stage_2():
    teacher = tiny_cnn(1)
    teacher(torch.rand(16, 1, 6, 6))  # give BN non-default running statistics
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = torch.rand(32, 1, 6, 6), torch.randint(0, 3, (32,))
    rng = np.random.default_rng(0)
    trials = []
    for _ in range(2):
        student = quantize_student(teacher, 2, 2)
        trials.append(Trial(student, torch.optim.Adam(student.parameters(), 1e-2), zero_policy(), []))

    def train_epoch(trial, epoch):
        xa = apply_policy(x, trial.policy, rng)
        for i in range(0, 32, 8):
            distillation_step(trial.model, teacher, xa[i:i + 8], y[i:i + 8], trial.optimizer, epoch)

    reward = lambda m: float((m.eval()(x).argmax(1) == y).float().mean())  # noqa: E731
    result = pbt_search(trials, train_epoch, reward, epochs=3, interval=1, rng=rng)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not teacher.training
    student_changed = any(not torch.equal(v, before[k]) for k, v in trials[0].model.state_dict().items())
    assert student_changed
    assert len(result.schedule.policies) == 3 and len(result.exploits) == 2


def test_pbt_search_returns_the_best_trials_inherited_history():
    class Const(nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = nn.Parameter(torch.tensor(float(v)))

    trials = [Trial(Const(i), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
                    np.full(60, i, dtype=np.int64), []) for i in range(4)]
    seen = []
    result = pbt_search(trials, lambda t, e: seen.append(e), lambda m: float(m.v.detach()), epochs=4, interval=2,
                        rng=np.random.default_rng(0))
    assert seen == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert result.exploits == [(1, 0, 3)]  # after epoch 2, trial 0 (v=0) clones trial 3 (v=3)
    assert result.best_score == 3.0 and result.best_trial in (0, 3)
    hist = [int(p[0]) for p in result.schedule.policies]
    assert hist[:2] == [3, 3] and len(hist) == 4


def test_step_decay_lr():
    assert [step_decay_lr(1.0, e, 10) for e in (0, 2, 3, 5, 6, 8, 9)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.001, 0.001])
