"""FGSM family and PGD: oracles on linear toys, eps-ball and box invariants, targeted success."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from honed.robust.attacks import DIFGSM, FGSM, IFGSM, MIFGSM, PGD, PGDL2
from tests.robust.toy_models import linear

# A 3-class linear model on 2-d inputs where momentum changes the third step's sign.
W_TOY = [[0.0, -2.0], [2.0, -3.0], [-1.0, 1.0]]


def ce_grad(weight: np.ndarray, x: np.ndarray, label: int) -> np.ndarray:
    """d CE / dx for logits W x: W^T (softmax(Wx) - onehot(label))."""
    z = weight @ x
    p = np.exp(z - z.max())
    p /= p.sum()
    p[label] -= 1
    return weight.T @ p


def mi_fgsm_by_hand(x0, label, eps, alpha, steps, decay):
    weight, x, m = np.array(W_TOY), x0.copy(), np.zeros_like(x0)
    for _ in range(steps):
        g = ce_grad(weight, x, label)
        m = decay * m + g / np.abs(g).sum()
        x = np.clip(np.clip(x + alpha * np.sign(m), x0 - eps, x0 + eps), 0, 1)
    return x


def test_fgsm_matches_the_sign_of_the_hand_gradient():
    x = np.array([0.5, 0.2])
    expected = np.clip(x + 0.1 * np.sign(ce_grad(np.array(W_TOY), x, 0)), 0, 1)
    x_adv = FGSM(linear(W_TOY), eps=0.1)(torch.tensor(x[None], dtype=torch.float32), torch.tensor([0]))
    assert np.allclose(x_adv[0].numpy(), expected, atol=1e-6)


def test_mi_fgsm_momentum_matches_hand_computation():
    x0 = np.array([0.5, 0.5])
    model, x, y = linear(W_TOY), torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    with_momentum = MIFGSM(model, eps=0.3, alpha=0.1, steps=3, decay=1.0)(x, y)[0].numpy()
    without = MIFGSM(model, eps=0.3, alpha=0.1, steps=3, decay=0.0)(x, y)[0].numpy()
    assert np.allclose(with_momentum, mi_fgsm_by_hand(x0, 0, 0.3, 0.1, 3, 1.0), atol=1e-6)
    assert np.allclose(without, mi_fgsm_by_hand(x0, 0, 0.3, 0.1, 3, 0.0), atol=1e-6)
    # by hand: step gradients have signs (+,+), (+,+), (-,+); the momentum keeps x_1 rising
    assert np.allclose(with_momentum, [0.8, 0.8], atol=1e-6) and np.allclose(without, [0.6, 0.8], atol=1e-6)


def test_ifgsm_default_step_is_eps_over_steps_and_difgsm_without_diversity_equals_it():
    model, x, y = linear(W_TOY), torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    assert IFGSM(model, eps=0.3, steps=3).alpha == pytest.approx(0.1)
    plain = IFGSM(model, eps=0.3, steps=3)(x, y)
    assert torch.equal(plain, DIFGSM(model, eps=0.3, steps=3, diversity_prob=0.0)(x, y))


def test_input_diversity_resizes_and_pads_to_the_larger_side():
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    gen = torch.Generator().manual_seed(0)
    shrink = DIFGSM(model, diversity_prob=1.0, resize_rate=0.5, generator=gen)
    grow = DIFGSM(model, diversity_prob=1.0, resize_rate=1.5, generator=gen)
    x = torch.rand(2, 1, 8, 8)
    assert shrink.diverse(x).shape == (2, 1, 8, 8) and not torch.equal(shrink.diverse(x), x)
    assert grow.diverse(x).shape == (2, 1, 12, 12)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0.0, 0.5), alpha=st.floats(0.01, 0.5), steps=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_pgd_linf_stays_in_the_eps_ball_and_the_box(eps, alpha, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, 1, 4, 4, generator=gen) * 1.4 - 0.2).clamp(0, 1)  # many pixels at exactly 0 / 1
    y = torch.randint(0, 5, (4,), generator=gen)
    x_adv = PGD(small_cnn(), eps=eps, alpha=alpha, steps=steps, generator=gen)(x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0.0, 3.0), alpha=st.floats(0.01, 2.0), steps=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_pgd_l2_stays_in_the_eps_ball_and_the_box(eps, alpha, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, 1, 4, 4, generator=gen) * 1.4 - 0.2).clamp(0, 1)
    y = torch.randint(0, 5, (4,), generator=gen)
    x_adv = PGDL2(small_cnn(), eps=eps, alpha=alpha, steps=steps, generator=gen)(x, y)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5) + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_l2_random_start_is_inside_the_ball_and_reaches_its_edge():
    x = torch.full((500, 16), 0.5)
    start = PGDL2(linear(torch.ones(2, 16).tolist()), eps=0.4, generator=torch.Generator().manual_seed(0)).start(x)
    radius = (start - x).norm(dim=1)
    assert radius.max() <= 0.4 + 1e-6 and radius.min() > 0.2  # uniform in a 16-d ball: radius ~ U^(1/16)


@pytest.mark.parametrize("attack", [
    lambda m: PGD(m, eps=1.0, alpha=0.1, steps=20, targeted=True),
    lambda m: PGDL2(m, eps=2.0, alpha=0.2, steps=20, targeted=True),
    lambda m: IFGSM(m, eps=1.0, alpha=0.1, steps=20, targeted=True),
    lambda m: MIFGSM(m, eps=1.0, alpha=0.1, steps=20, targeted=True),
])
def test_targeted_attacks_hit_the_target_on_an_easy_toy(attack):
    model = linear([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], bias=[0.0, 0.0, 0.9])
    x = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.5]])
    target = torch.tensor([2, 0, 1])
    atk = attack(model)
    x_adv = atk(x, target)
    assert torch.equal(model(x_adv).argmax(1), target) and atk.last_stats.success.all()


def test_untargeted_fgsm_lowers_the_true_class_logit():
    model = linear(W_TOY)
    x, y = torch.tensor([[0.5, 0.5], [0.3, 0.7]]), torch.tensor([0, 1])
    before = model(x).gather(1, y[:, None])
    after = model(FGSM(model, eps=0.05)(x, y)).gather(1, y[:, None])
    assert (after < before).all()


@pytest.mark.parametrize("attack", [PGD, PGDL2])
def test_random_start_with_a_cpu_generator_lands_on_the_input_device(attack):
    """Issue 18: the start is drawn on the generator's device (the CPU here) and moved to x's, so a
    seed starts from the same point on every device."""
    from tests.device_checks import META, assert_on, cpu_generator
    model = linear([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    start = attack(model, eps=0.1, steps=2, alpha=0.05, generator=cpu_generator()).start(torch.rand(2, 3, device=META))
    assert_on(META, start)


def test_pgd_start_keeps_its_cpu_numbers():
    from tests.device_checks import cpu_generator
    x = torch.full((2, 3), 0.5)
    start = PGD(linear([[1.0, 0.0, 0.0]]), eps=0.1, steps=2, alpha=0.05, generator=cpu_generator(4)).start(x)
    assert torch.allclose(start, x + (2 * torch.rand(2, 3, generator=cpu_generator(4)) - 1) * 0.1)


def pgd_by_hand(model, x, y, eps, alpha, steps, seed):
    """PGD L-inf written out in plain torch (summed cross-entropy, sign step, clip to the ball, then the box)."""
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    x_adv = (x + ((x + (2 * noise - 1) * eps) - x).clamp(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_in = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_in), y, reduction="sum"), [x_in])
        x_adv = (x + (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv


@pytest.mark.parametrize("verify", [True, False])
def test_pgd_returns_the_plain_torch_loops_images_bit_for_bit(verify):
    """Issue 15 pin: speed work on PGD must not change its output (same seed, same images, exactly);
    the verification forward (``verify``) changes nothing either."""
    model = small_cnn()
    x = (torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 1.4 - 0.2).clamp(0, 1)
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(2))
    attack = PGD(model, 0.1, 0.01, 7, generator=torch.Generator().manual_seed(3))
    attack.verify = verify
    assert torch.equal(attack(x, y), pgd_by_hand(model, x, y, 0.1, 0.01, 7, seed=3))
    assert (attack.last_stats.success is not None) == verify
