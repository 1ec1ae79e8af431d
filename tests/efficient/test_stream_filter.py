"""Multistage streaming filter (arXiv:2207.14386): the card's invariants on a tiny linear model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from honed.core.errors import InputError
from honed.efficient.stream_filter import StreamFilter


def ce(model, inputs, targets):
    return F.cross_entropy(model(inputs), targets, reduction="none")


class CountingModel(torch.nn.Module):
    """Linear 4 -> 2 that counts forward calls and the examples they carried."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 2)
        self.calls = 0
        self.rows = 0

    def forward(self, x):
        self.calls += 1
        self.rows += len(x)
        return self.lin(x)


def make(batch=4, warmup=2, c=10.0, window=2, **kw):
    model = CountingModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: losses stay put, tests stay exact
    return model, StreamFilter(model, opt, ce, batch, warmup, c, window, threshold_window=8, **kw)


def data(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    phi = (torch.rand(n, 6, generator=g) > 0.5).numpy().astype(np.uint8)
    return x, y, phi


def test_tau_is_mean_of_last_window_losses_and_frozen_after_stage0():
    model, f = make(warmup=3)
    losses = []
    for s in range(3):
        x, y, phi = data(seed=s)
        losses += ce(model, x, y).tolist()
        f.step(x, y, phi)
    assert f.stage == 1
    assert f.tau == pytest.approx(np.mean(losses[-8:]), rel=1e-6)
    tau = f.tau
    for s in range(3, 6):
        f.step(*data(seed=s))
    assert f.tau == tau


def test_stage1_below_threshold_never_backpropagated_and_buffer_emits_exact_batches():
    model, f = make(batch=4, warmup=1, c=1e-9)  # c tiny: stays in stage 1
    f.step(*data(seed=0))
    backprop_rows = []
    original = f.backward_step

    def spy(inputs, targets):
        backprop_rows.append(inputs.clone())
        return original(inputs, targets)

    f.backward_step = spy
    below, above = [], []
    for s in range(1, 12):
        x, y, phi = data(seed=s)
        with torch.no_grad():
            losses = ce(model, x, y)
        below += [row for row, l in zip(x, losses) if l < f.tau]
        above += [row for row, l in zip(x, losses) if l >= f.tau]
        f.step(x, y, phi)
    sent = torch.cat(backprop_rows) if backprop_rows else torch.empty(0, 4)
    assert all(len(b) == 4 for b in backprop_rows)
    for row in below:
        assert not any(torch.equal(row, r) for r in sent)
    assert len(sent) == 4 * (len(above) // 4)
    c = f.counters()
    assert c["backward_skipped"] == len(below)
    assert c["buffered"] == len(above) % 4


def test_transition_fires_exactly_when_window_loss_below_c():
    model, f = make(warmup=1, c=0.5, window=2)
    f.step(*data(seed=0))
    history = []
    for s in range(1, 40):
        f.step(*data(seed=s))
        if f.stage == 2:
            break
        history.append(list(f.predictor_losses))
    assert f.stage == 2
    assert np.mean(list(f.predictor_losses)) <= 0.5
    for window in history:  # before the switch, every full window was above c
        assert len(window) < 2 or np.mean(window) > 0.5


def test_stage2_predicted_zero_triggers_no_forward_and_decisions_applied():
    model, f = make(warmup=1, c=10.0, window=1)  # c large: stage 2 right after one stage-1 batch
    f.step(*data(seed=0))
    f.step(*data(seed=1))
    assert f.stage == 2
    for s in range(2, 8):
        x, y, phi = data(seed=s)
        decisions = []
        calls_before, fwd_skip_before = model.calls, f.forward_skipped
        # replay the predictor's sequential decisions on a copy to know what it will decide
        import copy

        shadow = copy.deepcopy(f.predictor)
        for i in range(len(y)):
            d = int(shadow.predict(phi[i:i + 1])[0])
            decisions.append(d)
            if d == 1:
                with torch.no_grad():
                    model.eval()
                    loss = ce(model, x[i:i + 1], y[i:i + 1]).item()
                    model.train()
                model.calls -= 1
                model.rows -= 1
                shadow.partial_fit(phi[i:i + 1], [int(loss > f.tau)], classes=[0, 1])
        f.step(x, y, phi)
        assert model.calls - calls_before == sum(decisions)
        assert f.forward_skipped - fwd_skip_before == len(decisions) - sum(decisions)


def test_counters_add_up():
    model, f = make(warmup=2, c=0.6, window=2)
    for epoch in range(2):
        for s in range(10):
            f.step(*data(seed=100 * epoch + s))
        with pytest.warns(UserWarning) if f.stage < 2 else _null():
            f.end_epoch()
    c = f.counters()
    assert c["seen"] == 80
    assert c["seen"] == c["backward_examples"] + c["backward_skipped"] + c["buffer_dropped"] + c["buffered"]
    assert c["forward_skipped"] <= c["backward_skipped"] <= c["seen"]
    assert c["forward_examples"] == model.rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_threshold_only_never_enters_stage2_and_bad_input_errors():
    model, f = make(warmup=1, c=100.0, window=1, max_stage=1)
    for s in range(5):
        f.step(*data(seed=s))
    f.end_epoch()
    assert f.stage == 1 and f.forward_skipped == 0
    x, y, phi = data()
    with pytest.raises(InputError):
        f.step(x, y, phi[:2])
    with pytest.raises(InputError):
        f.step(x, y, phi * 2)
    with pytest.raises(InputError):
        make(batch=0)
