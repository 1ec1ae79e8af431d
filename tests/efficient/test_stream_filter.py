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


class BNModel(torch.nn.Module):
    """Linear 4 -> 2 behind a BatchNorm: its running statistics show whether a refused forward stuck."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.bn = torch.nn.BatchNorm1d(4)
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(self.bn(x))


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_nan_loss_is_refused_before_any_step_and_leaves_model_and_counters(stage):
    model = BNModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    poison = {"on": False}

    def loss(m, x, y):
        out = ce(m, x, y)
        return out * float("nan") if poison["on"] else out

    f = StreamFilter(model, opt, loss, 4, 1, 10.0, 1, threshold_window=8)
    for s in range(stage):  # stage 0 -> 1 after one batch; 1 -> 2 after one more (c = 10)
        f.step(*data(seed=s))
    assert f.stage == stage
    if stage == 2:
        f.predictor.predict = lambda phi: np.ones(len(phi), dtype=int)  # forward every example
    before, counters = state_of(model), f.counters()
    poison["on"] = True
    with pytest.raises(InputError, match="NaN or inf"):
        f.step(*data(seed=9))
    assert_same_state(model, before)
    assert f.counters() == counters


def test_batch_mean_loss_is_refused_but_a_0d_loss_of_one_example_is_accepted():
    model = CountingModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    f = StreamFilter(model, opt, lambda m, x, y: F.cross_entropy(m(x), y), 4, 2, 10.0, 1)
    before = state_of(model)
    with pytest.raises(InputError, match="one loss per example"):
        f.step(*data(n=4))
    assert_same_state(model, before)
    x, y, phi = data(n=1)
    f.step(x, y, phi)  # a scalar loss of a one-example batch is that example's loss
    assert f.counters()["backward_examples"] == 1


def test_empty_batch_and_loss_without_graph_are_refused():
    model, f = make()
    x, y, phi = data()
    with pytest.raises(InputError, match="empty"):
        f.step(x[:0], y[:0], phi[:0])
    detached = StreamFilter(model, torch.optim.SGD(model.parameters(), lr=0.1),
                            lambda m, x, y: ce(m, x, y).detach(), 4, 2, 10.0, 1)
    with pytest.raises(InputError, match="graph"):
        detached.step(x, y, phi)


def test_error_in_stage2_restores_every_submodule_mode():
    model = BNModel()
    fail = {"on": False}

    def loss(m, x, y):
        if fail["on"]:
            raise RuntimeError("user loss failed")
        return ce(m, x, y)

    f = StreamFilter(model, torch.optim.SGD(model.parameters(), lr=0.0), loss, 4, 1, 10.0, 1,
                     threshold_window=8)
    f.step(*data(seed=0))
    f.step(*data(seed=1))
    assert f.stage == 2
    model.train()
    model.bn.eval()  # a user's frozen BatchNorm stays frozen
    f.predictor.predict = lambda phi: np.ones(len(phi), dtype=int)  # forward every example
    fail["on"] = True
    with pytest.raises(RuntimeError, match="user loss failed"):
        f.step(*data(seed=2))
    assert model.training and model.lin.training and not model.bn.training


def constant_loss_filter(level: dict, **kw) -> StreamFilter:
    """A filter whose every example's loss is ``level["value"]`` (with a graph to the model)."""
    model = CountingModel()
    loss = lambda m, x, y: ce(m, x, y) * 0 + level["value"]  # noqa: E731
    return StreamFilter(model, torch.optim.SGD(model.parameters(), lr=0.0), loss, 4, 1, 1e-9, 2, threshold_window=8,
                        max_stage=1, **kw)


@pytest.mark.parametrize("later, warns", [(0.9, True), (0.5, False)])
def test_end_epoch_warns_when_back_propagation_stopped_with_losses_still_near_tau(later, warns):
    import warnings as w

    level = {"value": 1.0}  # stage 0 fixes tau = 1; then every loss is below it: nothing is back-propagated
    f = constant_loss_filter(level)
    f.step(*data(seed=0))
    level["value"] = later
    for s in range(1, 30):
        f.step(*data(seed=s))
    assert f.counters()["backward_examples"] == 4
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        f.end_epoch()
    stalled = [str(c.message) for c in caught if "back-propagated" in str(c.message)]
    assert bool(stalled) == warns  # 0.9: stuck under tau (a tau frozen too early); 0.5: learned past it
    if warns:
        assert "only 4 of the 120 examples of this epoch were back-propagated" in stalled[0]
    quiet = constant_loss_filter(level, min_backward_share=0.0)
    for s in range(5):
        quiet.step(*data(seed=s))
    with w.catch_warnings():
        w.simplefilter("error")
        quiet.end_epoch()
