"""MAT (arXiv:1705.09764): the mixed loss against a hand computation on a linear model, the sampling of
every strength, the eps-ball and [0, 1] invariants of the training examples, eval-mode crafting with
the flags restored, the parallel ensemble's averaged probabilities, and clear errors on bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import TrainState, train
from honed.robust.training import (AdversarialTraining, MixedMAT, ParallelMAT, fgsm_accuracy_curve, fgsm_attack,
                                   pgd_attack, robust_accuracy)

W = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 1.5, -0.5], [0.5, 0.5, -1.0, 2.0]])
B = torch.tensor([0.1, -0.2, 0.0])
X = torch.tensor([[0.2, 0.5, 0.9, 0.4], [0.6, 0.05, 0.3, 0.7]])
Y = torch.tensor([0, 2])


def linear_model() -> nn.Linear:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(W)
        model.bias.copy_(B)
    return model


def hand_fgsm(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM on softmax(Wx + b) by the closed form grad_x CE = W^T (softmax - onehot(y))."""
    probs = torch.softmax(x @ W.T + B, dim=1)
    grad = (probs - F.one_hot(y, 3).float()) @ W
    return (x + eps * grad.sign()).clamp(0, 1)


def hand_ce(x: torch.Tensor, y: torch.Tensor) -> float:
    logits = x @ W.T + B
    return float(sum(torch.logsumexp(logits[i], 0) - logits[i, y[i]] for i in range(len(y))) / len(y))


def test_mixed_loss_is_the_card_weighted_sum_over_clean_and_every_strength():
    strengths = (0.05, 0.1, 0.3)
    mat = MixedMAT(strengths)
    assert mat.weights == pytest.approx((0.5, 1 / 6, 1 / 6, 1 / 6)) and sum(mat.weights) == pytest.approx(1.0)
    hand = 0.5 * hand_ce(X, Y) + sum(hand_ce(hand_fgsm(X, Y, e), Y) / (2 * len(strengths)) for e in strengths)
    assert float(mat.loss_on(linear_model(), X, Y).detach()) == pytest.approx(hand, rel=1e-5)
    assert mat.last_losses["eps0.3"] == pytest.approx(hand_ce(hand_fgsm(X, Y, 0.3), Y), rel=1e-5)
    assert mat.counts.tolist() == [2, 2, 2]


def test_single_strength_training_and_the_weight_options():
    at = AdversarialTraining(0.1)
    assert at.weights == (0.5, 0.5)
    hand = 0.5 * hand_ce(X, Y) + 0.5 * hand_ce(hand_fgsm(X, Y, 0.1), Y)
    assert float(at.loss_on(linear_model(), X, Y).detach()) == pytest.approx(hand, rel=1e-5)
    madry = AdversarialTraining(0.1, clean_weight=0.0)  # no clean block at all
    assert madry.weights == (1.0,)
    madry_loss = float(madry.loss_on(linear_model(), X, Y).detach())
    assert madry_loss == pytest.approx(hand_ce(hand_fgsm(X, Y, 0.1), Y), rel=1e-5)
    assert MixedMAT((0.1, 0.2), sampling="per_batch", clean_weight=0.25).weights == (0.25, 0.75)


def test_per_sample_sampling_gives_every_strength_equal_share():
    mat = MixedMAT((0.05, 0.1, 0.2, 0.3), sampling="per_sample", generator=torch.Generator().manual_seed(0))
    shares = [torch.bincount(mat.assign_strengths(10), minlength=4) for _ in range(200)]
    assert all(int(s.max() - s.min()) <= 1 for s in shares)  # 10 over 4 strengths: 3 or 2 each
    totals = torch.stack(shares).sum(0)
    assert totals.sum() == 2000 and int(totals.min()) >= 450  # the random offset rotates the extra ones


def test_per_batch_sampling_draws_every_strength_over_many_steps():
    x, y = torch.rand(6, 4), torch.randint(0, 3, (6,))
    mat = MixedMAT((0.05, 0.1, 0.2, 0.3), sampling="per_batch", generator=torch.Generator().manual_seed(3))
    chosen = []
    for _ in range(400):
        before = mat.counts.clone()
        mat.loss_on(linear_model(), x, y)
        step = mat.counts - before
        assert int((step > 0).sum()) == 1 and int(step.sum()) == 6  # one strength for the whole batch
        chosen.append(int(step.argmax()))
    counts = torch.bincount(torch.tensor(chosen), minlength=4)
    assert counts.min() >= 60 and counts.max() <= 140  # Binomial(400, 1/4): mean 100, sd 8.7
    again = MixedMAT((0.05, 0.1, 0.2, 0.3), sampling="per_batch", generator=torch.Generator().manual_seed(3))
    assert [int(again.assign_strengths(6)[0]) for _ in range(400)] == chosen  # seeded: reproducible


@pytest.mark.parametrize("attack", ["fgsm", "pgd", ("fgsm", "pgd", "fgsm")])
@pytest.mark.parametrize("sampling", ["all", "per_sample"])
def test_training_examples_stay_inside_eps_and_the_unit_box(attack, sampling):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))
    x[:, :, 0] = 0.0  # pixels on the box edge, so clipping happens
    strengths = (0.05, 0.2, 0.4)
    mat = MixedMAT(strengths, attack=attack, sampling=sampling, generator=torch.Generator().manual_seed(1))
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), x=x, y=y)
    mat.on_batch_start(state)
    blocks = state.x.split(len(x))
    assert torch.equal(blocks[0], x) and len(blocks) == (4 if sampling == "all" else 2)
    for block in blocks[1:]:
        assert block.min() >= 0 and block.max() <= 1
        assert ((block - x).abs().flatten(1).amax(1) <= max(strengths) + 1e-6).all()
    if sampling == "all":
        for eps, block in zip(strengths, blocks[1:]):
            assert (block - x).abs().max() <= eps + 1e-6
            if attack == "fgsm":  # before clipping every pixel moved by exactly eps
                inside = (x + eps <= 1) & (x - eps >= 0)
                assert torch.allclose((block - x).abs()[inside], torch.tensor(eps))


def test_crafting_runs_in_eval_mode_and_every_flag_is_restored():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model[2].eval()  # a submodule with its own flag must keep it
    seen: list[bool] = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    loss = MixedMAT((0.1, 0.2)).loss_on(model, x, y)
    assert seen == [False, False, True]  # two crafting passes in eval mode, then the training forward
    assert model.training and model[1].training and not model[2].training
    assert torch.isfinite(loss)
    model.eval()
    MixedMAT((0.1,)).loss_on(model, x, y)
    assert not any(m.training for m in model.modules())


def test_parallel_ensemble_averages_probabilities_of_all_members():
    torch.manual_seed(0)
    members = [nn.Linear(4, 3), linear_model(), nn.Linear(4, 3)]
    ensemble = ParallelMAT(members)
    x = torch.rand(5, 4)
    hand = sum(torch.softmax(m(x), 1) for m in members) / 3
    probs = ensemble.probabilities(x)
    assert torch.allclose(probs, hand, atol=1e-6) and torch.allclose(probs.sum(1), torch.ones(5))
    assert torch.allclose(F.cross_entropy(ensemble(x), Y.new_tensor([0, 1, 2, 0, 1])),
                          -hand[torch.arange(5), torch.tensor([0, 1, 2, 0, 1])].log().mean(), atol=1e-6)


def test_white_box_attack_on_the_ensemble_backpropagates_through_every_member():
    torch.manual_seed(1)
    members = [nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)) for _ in range(3)]
    ensemble = ParallelMAT(members)
    x = torch.rand(6, 4).requires_grad_(True)
    F.cross_entropy(ensemble(x), torch.randint(0, 3, (6,))).backward()
    assert x.grad.abs().sum() > 0
    for member in members:
        assert member[0].weight.grad is not None and member[0].weight.grad.abs().sum() > 0
    x_adv = fgsm_attack(ensemble, 0.1)(x.detach(), torch.randint(0, 3, (6,)))
    assert (x_adv - x.detach()).abs().max() <= 0.1 + 1e-6


def test_fgsm_curve_from_one_gradient_equals_the_fgsm_attack_per_eps():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    x, y = torch.rand(40, 1, 4, 4), torch.randint(0, 4, (40,))
    grid = (0.0, 0.05, 0.2, 0.5)
    with torch.no_grad():  # both work inside no_grad (the loop evaluates under it)
        curve = fgsm_accuracy_curve(model, x, y, grid)
        direct = [robust_accuracy(model, x, y, fgsm_attack, eps, batch_size=7) for eps in grid]
    assert curve == pytest.approx(direct)
    assert curve[0] == pytest.approx(float((model(x).argmax(1) == y).float().mean()))


def test_mixed_mat_trains_in_the_loop_and_lowers_its_loss():
    torch.manual_seed(0)
    x = torch.rand(64, 4)
    y = (x[:, 0] > x[:, 1]).long()
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    mat = MixedMAT((0.02, 0.05))
    history = train(model, [(x[:32], y[:32]), (x[32:], y[32:])], torch.optim.Adam(model.parameters(), 0.02), 15,
                    loss_fn=mat, callbacks=[mat], progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert mat.counts.tolist() == [64 * 15, 64 * 15]


def test_pgd_attack_is_stronger_or_equal_on_a_trained_model():
    torch.manual_seed(0)
    x = torch.rand(64, 4)
    y = (x[:, 0] > x[:, 1]).long()
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    train(model, [(x, y)], torch.optim.Adam(model.parameters(), 0.05), 60, progress=False)
    pgd = robust_accuracy(model, x, y, lambda m, e: pgd_attack(m, e, steps=20, random_start=False), 0.1)
    assert pgd <= robust_accuracy(model, x, y, fgsm_attack, 0.1) + 1e-9


@pytest.mark.parametrize("build", [
    lambda: MixedMAT((0.1, -0.05)),
    lambda: MixedMAT(()),
    lambda: MixedMAT((0.1, math.nan)),
    lambda: MixedMAT((0.1,), attack="cw"),
    lambda: MixedMAT((0.1, 0.2), attack=("fgsm",) * 3),
    lambda: MixedMAT((0.1,), sampling="random"),
    lambda: MixedMAT((0.1,), clean_weight=1.5),
    lambda: AdversarialTraining(-0.1),
    lambda: ParallelMAT([]),
    lambda: pgd_attack(nn.Linear(4, 3), -0.1),
])
def test_bad_hyper_parameters_raise_input_error(build):
    with pytest.raises(InputError):
        build()


def test_bad_tensors_raise_input_error():
    mat, model = MixedMAT((0.1,)), linear_model()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        mat.loss_on(model, X * 3, Y)
    with pytest.raises(InputError, match="NaN"):
        mat.loss_on(model, torch.full((2, 4), math.nan), Y)
    with pytest.raises(InputError, match="logits"):
        mat(torch.zeros(3, 3), Y)  # 2 blocks of N = 2 need 4 rows
    with pytest.raises(InputError):
        robust_accuracy(model, X, Y, fgsm_attack, -0.1)
    with pytest.raises(InputError):
        fgsm_accuracy_curve(model, X - 1, Y, (0.1,))
