"""SmoothOut (arXiv:1805.07898): the card's honest unit tests, plus the sharpness measures."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import Callback, ClipGradNorm, train
from honed.efficient.sharpness import epsilon_sharpness, random_perturbation_loss_increase
from honed.efficient.smoothout import PersistentWeightNoise, SmoothOut, smoothout_gradient
from honed.models import create_model


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", in_features=6, hidden=(5, 4), num_classes=3)


def batch(n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class RecordNoise(Callback):
    """Placed after SmoothOut: keeps each chunk's noise and the gradient the optimizer will use."""

    def __init__(self, so: SmoothOut) -> None:
        self.so, self.noises, self.grads, self.steps = so, [], [], []

    def on_batch_start(self, state):
        self.steps.append((state.step, self.so.t))

    def after_backward(self, state):
        self.noises.append({k: v.clone() for k, v in self.so.noise.items()})

    def before_step(self, state):
        self.grads.append({n: p.grad.clone() for n, p in state.model.named_parameters()})


def test_lr_zero_step_leaves_weights_bit_identical():
    model = small_mlp()
    before = snapshot(model)
    x, y = batch(16)
    so = SmoothOut(model, amplitude=0.03, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    train(model, [(x, y)], opt, epochs=2, callbacks=[so, ClipGradNorm(5.0)], ghost_size=4, progress=False)
    assert any(v.abs().max() > 0.01 for v in so.noise.values())  # noise was really injected
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_gradient_equals_hand_gradient_at_perturbed_weights_per_ghost_chunk():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x, t = torch.randn(6, 3), torch.randn(6, 2)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    so = SmoothOut(lin, amplitude=0.2, generator=torch.Generator().manual_seed(3))
    rec = RecordNoise(so)
    loss_fn = lambda out, target: 0.5 * ((out - target) ** 2).sum()  # noqa: E731
    opt = torch.optim.SGD(lin.parameters(), lr=0.0)
    train(lin, [(x, t)], opt, 1, loss_fn=loss_fn, callbacks=[so, rec], ghost_size=3, progress=False)
    assert len(rec.noises) == 2 and not torch.equal(rec.noises[0]["weight"], rec.noises[1]["weight"])
    grad_w, grad_b = torch.zeros(2, 3), torch.zeros(2)
    for k, noise in enumerate(rec.noises):  # loop scales each chunk's loss by chunk/batch = 1/2
        xs, ts = x[3 * k:3 * k + 3], t[3 * k:3 * k + 3]
        residual = xs @ (w0 + noise["weight"]).T + (b0 + noise["bias"]) - ts
        grad_w += 0.5 * residual.T @ xs
        grad_b += 0.5 * residual.sum(0)
    torch.testing.assert_close(rec.grads[0]["weight"], grad_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rec.grads[0]["bias"], grad_b, rtol=1e-5, atol=1e-6)


def test_none_mode_noise_is_bounded_by_amplitude_and_fills_the_box():
    model = small_mlp()
    so = SmoothOut(model, amplitude=0.02, generator=torch.Generator().manual_seed(0))
    so.inject()
    flat = torch.cat([v.flatten() for v in so.noise.values()])
    so.denoise()
    assert flat.abs().max() <= 0.02
    assert flat.abs().max() > 0.019 and abs(float(flat.mean())) < 0.002


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 40), amplitude=st.floats(0.01, 0.1), seed=st.integers(0, 99))
def test_filter_mode_row_noise_norm_is_amplitude_times_row_norm(rows, cols, amplitude, seed):
    torch.manual_seed(seed)
    lin = nn.Linear(cols, rows)
    so = SmoothOut(lin, amplitude, mode="filter", generator=torch.Generator().manual_seed(seed))
    with so.perturbed():
        theta_w, theta_b = so.noise["weight"], so.noise["bias"]
    w_norms = lin.weight.detach().norm(dim=1)
    torch.testing.assert_close(theta_w.norm(dim=1), amplitude * w_norms, rtol=1e-5, atol=0.0)
    # a 1-D bias is one row: its whole noise vector has norm a * ||b||
    torch.testing.assert_close(theta_b.norm(), amplitude * lin.bias.detach().norm(), rtol=1e-5, atol=0.0)


def test_filter_mode_zero_row_gets_zero_noise_and_weight_mode_is_relative():
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight[0] = 0.0
    so = SmoothOut(lin, 0.1, mode="filter")
    so.inject()
    assert torch.equal(so.noise["weight"][0], torch.zeros(4)) and torch.isfinite(so.noise["weight"]).all()
    so.denoise()
    rel = SmoothOut(lin, 0.1, mode="weight")
    clean = lin.weight.detach().clone()  # inside perturbed() the weight holds w + theta, not w
    with rel.perturbed():
        assert (rel.noise["weight"].abs() <= 0.1 * clean.abs() + 1e-12).all()
        assert torch.equal(rel.noise["weight"][0], torch.zeros(4))


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(5), nn.LayerNorm(5), nn.GroupNorm(1, 5)])
def test_norm_layer_affine_parameters_receive_no_noise(norm):
    model = nn.Sequential(nn.Linear(6, 5), norm, nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    before = snapshot(model)
    so = SmoothOut(model, amplitude=0.05)
    so.inject()
    assert torch.equal(norm.weight, before["1.weight"]) and torch.equal(norm.bias, before["1.bias"])
    assert not torch.equal(model[0].weight, before["0.weight"])
    assert set(so.noise) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    so.denoise()
    with SmoothOut(model, 0.05, exclude_bn=False).perturbed():
        assert not torch.equal(norm.weight, before["1.weight"])


class Replicated(nn.Module):
    """n copies of one scalar weight: each copy gets its own noise draw, so one backward of
    sum_i C(w_i) yields n independent samples of C'(w + theta)."""

    def __init__(self, w: float, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((n,), w, dtype=torch.float64))

    def forward(self, x):
        return self.w


@pytest.mark.parametrize("w", [0.0, 0.03, 0.08, 0.13, 0.2])
def test_stochastic_smoothout_gradient_is_unbiased_on_the_notch_toy(w):
    h, a, n = 0.05, 0.1, 100_000  # notch width 2h < box width 2a
    notch = lambda v: torch.clamp(1 - v.abs() / h, min=0.0)  # noqa: E731
    model = Replicated(w, n)
    so = SmoothOut(model, a, generator=torch.Generator().manual_seed(int(w * 1000)))
    with so.perturbed():
        notch(model(None)).sum().backward()
    samples = model.w.grad
    # box average C_bar(v) = (F(v + a) - F(v - a)) / 2a with F the antiderivative of the notch
    antiderivative = lambda v: h / 2 * (1 + math.copysign(1 - (1 - min(abs(v), h) / h) ** 2, v))  # noqa: E731
    box_average = lambda v: (antiderivative(v + a) - antiderivative(v - a)) / (2 * a)  # noqa: E731
    delta = 1e-4
    finite_difference = (box_average(w + delta) - box_average(w - delta)) / (2 * delta)
    standard_error = float(samples.std()) / math.sqrt(n)
    assert abs(float(samples.mean()) - finite_difference) < 4 * standard_error + 1e-3
    exact = (float(notch(torch.tensor(w + a))) - float(notch(torch.tensor(w - a)))) / (2 * a)
    assert finite_difference == pytest.approx(exact, abs=1e-3)


def test_multi_copy_gradient_is_the_mean_of_single_copy_gradients():
    model, (x, y) = small_mlp(), batch(8)
    before = snapshot(model)
    many = smoothout_gradient(model, F.cross_entropy, x, y, 0.05, copies=4,
                              generator=torch.Generator().manual_seed(5))
    stream = torch.Generator().manual_seed(5)
    singles = [smoothout_gradient(model, F.cross_entropy, x, y, 0.05, copies=1, generator=stream)
               for _ in range(4)]
    for name in many:
        torch.testing.assert_close(many[name], sum(s[name] for s in singles) / 4, rtol=1e-5, atol=1e-7)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert not torch.equal(many["1.weight"], model[1].weight.grad)  # it really is taken at w + theta


def test_schedules_follow_the_card_formulas():
    model = small_mlp()
    anneal = SmoothOut(model, 0.02, schedule="anneal")
    assert anneal.amplitude_at(0) == pytest.approx(0.02)
    assert anneal.amplitude_at(3) == pytest.approx(0.02 * 4 ** -0.275)
    tanh = SmoothOut(model, 0.02, schedule="tanh", total_steps=100)
    assert tanh.amplitude_at(50) == pytest.approx(0.01)
    assert tanh.amplitude_at(0) == pytest.approx(0.02 * (math.tanh(-5) + 1) / 2)
    assert tanh.amplitude_at(100) == pytest.approx(0.02 * (math.tanh(5) + 1) / 2)
    assert SmoothOut(model, 0.02).amplitude_at(1000) == 0.02
    anneal.step(), anneal.step()
    assert anneal.t == 2


def test_callback_follows_the_loop_step_and_takes_total_steps_from_it():
    model, (x, y) = small_mlp(), batch(16)
    so = SmoothOut(model, 0.02, schedule="tanh")
    rec = RecordNoise(so)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train(model, [(x[:8], y[:8]), (x[8:], y[8:])], opt, 3, callbacks=[so, rec], ghost_size=4, progress=False)
    assert so.total_steps == 6
    assert [s for s, _ in rec.steps] == [t for _, t in rec.steps] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    last = rec.noises[-1]["1.weight"].abs().max()
    assert last <= so.amplitude_at(5) and not so.injected


def test_noisy_sgd_baseline_keeps_the_noise():
    model, (x, y) = small_mlp(), batch(8)
    before = snapshot(model)
    noisy = PersistentWeightNoise(model, 0.05)
    rec = RecordNoise(noisy)
    train(model, [(x, y)], torch.optim.SGD(model.parameters(), lr=0.0), 1, callbacks=[noisy, rec], progress=False)
    torch.testing.assert_close(model[1].weight.detach(), before["1.weight"] + rec.noises[0]["1.weight"])


@pytest.mark.parametrize("kwargs", [
    {"amplitude": -0.1}, {"amplitude": float("nan")}, {"amplitude": float("inf")}, {"amplitude": "big"},
    {"amplitude": 0.1, "mode": "layer"}, {"amplitude": 0.1, "noise": "laplace"},
    {"amplitude": 0.1, "schedule": "cosine"}, {"amplitude": 0.1, "total_steps": 0},
    {"amplitude": 0.1, "coef": -1.0},
])
def test_bad_hyper_parameters_raise_input_error(kwargs):
    with pytest.raises(InputError):
        SmoothOut(small_mlp(), **kwargs)


def test_misuse_raises_clear_errors():
    model, (x, y) = small_mlp(), batch(4)
    with pytest.raises(InputError, match="total_steps"):
        SmoothOut(model, 0.1, schedule="tanh").amplitude_at(3)
    so = SmoothOut(model, 0.1)
    so.inject()
    with pytest.raises(RuntimeError, match="twice"):
        so.inject()
    so.denoise()
    with pytest.raises(InputError):
        smoothout_gradient(model, F.cross_entropy, x, y, 0.1, copies=0)
    with pytest.raises(InputError):
        epsilon_sharpness(model, F.cross_entropy, x, y, eps=-1.0)
    with pytest.raises(InputError):
        epsilon_sharpness(model, F.cross_entropy, x, y[:2])
    with pytest.raises(InputError):
        random_perturbation_loss_increase(model, F.cross_entropy, x, y, 0.1, draws=0)


def test_epsilon_sharpness_hand_value_on_a_linear_loss():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    loss = lambda out, y: out.sum()  # noqa: E731  L(w) = w at x = 1
    value = epsilon_sharpness(lin, loss, torch.ones(1, 1), torch.zeros(1), eps=5e-4, steps=10)
    # L0 = 2, L_max = 2 + eps * (|w| + 1) = 2 + 3 eps -> 100 * 3 eps / 3 = 100 eps
    assert value == pytest.approx(100 * 5e-4, rel=1e-3)
    assert lin.weight.item() == 2.0


def test_sharpness_measures_restore_weights_and_mode_and_are_non_negative():
    model, (x, y) = small_mlp(), batch(32)
    model.train()
    before = snapshot(model)
    running = model[2].running_mean.clone()
    sharp = epsilon_sharpness(model, F.cross_entropy, x, y)
    rand = random_perturbation_loss_increase(model, F.cross_entropy, x, y, 0.05,
                                             generator=torch.Generator().manual_seed(0))
    assert sharp > 0 and math.isfinite(rand)
    assert model.training and torch.equal(model[2].running_mean, running)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert random_perturbation_loss_increase(model, F.cross_entropy, x, y, 0.0) == 0.0


def test_random_perturbation_loss_increase_matches_a_squared_over_three():
    model = Replicated(0.0, 20_000)
    loss = lambda out, y: (out ** 2).mean()  # noqa: E731  E[theta^2] = a^2 / 3
    value = random_perturbation_loss_increase(model, loss, torch.zeros(1), torch.zeros(1), 0.03,
                                              generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(0.03 ** 2 / 3, rel=0.02)


def noisy_grad_step(so_factory, use):
    """One SGD step (lr 0.5) from a fixed model; returns (clean weights, noise, grads, weights after)."""
    model, (x, y) = small_mlp(), batch(8)
    clean = snapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    so = so_factory(model, opt)
    so.inject()
    noise = {k: v.clone() for k, v in so.noise.items()}
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    use(so, opt)
    return clean, noise, grads, snapshot(model), so


@pytest.mark.parametrize("how", ["step", "attached"])
def test_plain_loop_step_keeps_the_update_taken_from_the_clean_weights(how):
    if how == "step":
        factory = lambda m, o: SmoothOut(m, 0.05, generator=torch.Generator().manual_seed(0))  # noqa: E731
        use = lambda so, opt: so.step(opt)  # noqa: E731
    else:
        factory = lambda m, o: SmoothOut(m, 0.05, generator=torch.Generator().manual_seed(0), optimizer=o)  # noqa: E731
        use = lambda so, opt: opt.step()  # noqa: E731  the attached optimizer removes the noise itself
    clean, noise, grads, after, so = noisy_grad_step(factory, use)
    assert any(v.abs().max() > 0.01 for v in noise.values())
    for name in clean:  # the SGD update, applied to w (not w + theta), with the gradient taken at w + theta
        torch.testing.assert_close(after[name], clean[name] - 0.5 * grads[name])
    assert so.t == 1 and not so.injected


def test_optimizer_step_while_noise_is_in_raises_instead_of_dropping_the_update():
    def use(so, opt):
        opt.step()  # the unsafe order: steps the noisy weights, then denoise would copy w back
        with pytest.raises(RuntimeError, match="changed in place while the noise was in"):
            so.denoise()

    clean, noise, _, after, so = noisy_grad_step(lambda m, o: SmoothOut(m, 0.05), use)
    assert all(torch.equal(after[n], clean[n]) for n in noise) and not so.injected  # noised ones restored
    model = small_mlp()
    so = SmoothOut(model, 0.05)
    so.inject()
    with pytest.raises(RuntimeError, match="step\\(optimizer\\)"):
        so.step()
    with pytest.raises(InputError):
        so.step("sgd")
    so.denoise()
    so.detach()


def test_noise_from_a_cpu_generator_lands_on_the_weights_device():
    """Issue 18: the noise is drawn on the generator's device and moved to each weight's."""
    from tests.device_checks import META, cpu_generator
    lin = torch.nn.Linear(3, 2).to(META)
    assert SmoothOut(lin, amplitude=0.2, generator=cpu_generator()).draw_noise(lin.weight, 0.2).device == META
