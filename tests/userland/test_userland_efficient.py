"""Issue 11: SmoothOut and StreamFilter on models defined here, in a plain PyTorch loop on sklearn digits;
bad inputs (NaN, a batch-mean loss, an empty batch, wrong shapes, an optimizer step in the wrong
place) give one clear error and leave the model (weights, buffers, every submodule's mode) as it was."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from honed.core.errors import InputError
from honed.efficient.smoothout import SmoothOut
from honed.efficient.stream_filter import StreamFilter


class UserCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


class UserPairModel(nn.Module):
    """Takes a dict of two tensors, as a text model takes ids and a mask."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 10)

    def forward(self, pixels, mask):
        return self.fc(pixels * mask)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return torch.tensor(data.images[:320], dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(data.target[:320])


def state(model: nn.Module) -> dict:
    return {"tensors": {k: v.clone() for k, v in model.state_dict().items()},
            "modes": [m.training for m in model.modules()]}


def assert_as_it_was(model: nn.Module, before: dict) -> None:
    now = state(model)
    assert now["modes"] == before["modes"]
    assert all(torch.equal(now["tensors"][k], v) for k, v in before["tensors"].items())


def test_smoothout_plain_loop_trains_a_user_cnn_and_never_noises_its_batchnorm(digits):
    model = UserCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    smooth = SmoothOut(model, 0.01, generator=torch.Generator().manual_seed(0))
    x, y = digits
    with torch.no_grad():
        start = F.cross_entropy(model(x), y).item()
    for epoch in range(3):
        for batch in torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).split(32):
            optimizer.zero_grad()
            smooth.inject()
            assert not smooth.noise.keys() & {"bn.weight", "bn.bias"}
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            smooth.step(optimizer)
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < start
    assert smooth.t == 3 * 10 and not smooth.injected


def test_smoothout_attached_optimizer_makes_the_usual_loop_safe(digits):
    model = UserCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    smooth = SmoothOut(model, 0.05, optimizer=optimizer)
    x, y = digits[0][:32], digits[1][:32]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    smooth.inject()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # the pre-hook removed the noise first: the update lands on the clean weights
    assert not smooth.injected and smooth.t == 1
    assert not torch.equal(model.conv.weight, before["conv.weight"])
    smooth.denoise()  # nothing to restore: the update stays
    assert not torch.equal(model.conv.weight, before["conv.weight"])


def test_smoothout_refuses_misuse_and_bad_settings_without_touching_the_model(digits):
    model = UserCNN()
    model.train()
    model.bn.eval()
    before = state(model)
    for bad in ({"amplitude": float("nan")}, {"amplitude": -0.1}, {"amplitude": 0.1, "mode": "layer"}):
        with pytest.raises(InputError):
            SmoothOut(model, **bad)
    smooth = SmoothOut(model, 0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with smooth.perturbed():
            raise RuntimeError("boom")  # an error inside the user's forward: weights restored on exit
    assert_as_it_was(model, before)
    smooth.inject()
    F.cross_entropy(model(digits[0][:8]), digits[1][:8]).backward()
    optimizer.step()  # the unsafe order, without an attached optimizer
    with pytest.raises(RuntimeError, match="changed in place while the noise was in"):
        smooth.denoise()
    assert torch.equal(model.conv.weight, before["tensors"]["conv.weight"])  # noised weights restored


def per_example_ce(model, x, y):
    return F.cross_entropy(model(x), y, reduction="none")


def features(x: torch.Tensor) -> np.ndarray:
    return (x.flatten(1) > 0.5).numpy().astype(np.uint8)


def test_stream_filter_fine_tunes_a_user_cnn_in_a_plain_loop(digits):
    x, y = digits
    model = UserCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for batch in list(torch.arange(160).split(16)) * 5:
        optimizer.zero_grad()  # warm the model first (5 passes over the first half): the filter fine-tunes
        per_example_ce(model, x[batch], y[batch]).mean().backward()
        optimizer.step()
    stream = StreamFilter(model, optimizer, per_example_ce, 16, warmup_steps=2, predictor_loss_threshold=0.5,
                          predictor_window=2, threshold_window=32)
    model.train()
    model.bn.eval()  # the user's frozen BatchNorm must stay frozen through stage 2's eval forwards
    for epoch in range(2):
        for batch in torch.arange(160, 320).split(16):
            stream.step(x[batch], y[batch], features(x[batch]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stream.end_epoch()
        assert not [w for w in caught if "back-propagated" in str(w.message)]  # a warm model keeps training
    c = stream.counters()
    assert c["stage"] == 2 and c["forward_skipped"] > 0 and c["seen"] == 320 and c["seen"] == c["backward_examples"] + c["backward_skipped"] + c["buffer_dropped"] + c["buffered"]
    assert model.training and not model.bn.training


def test_stream_filter_takes_dict_inputs_of_a_user_model(digits):
    model = UserPairModel()
    loss = lambda m, inputs, y: F.cross_entropy(m(**inputs), y, reduction="none")  # noqa: E731
    stream = StreamFilter(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, 8, 1, 0.5)
    x, y = digits[0][:16].flatten(1), digits[1][:16]
    for batch in torch.arange(16).split(8):
        stream.step({"pixels": x[batch], "mask": torch.ones_like(x[batch])}, y[batch], features(x[batch]))
    assert stream.counters()["seen"] == 16


@pytest.mark.parametrize("case, match", [
    ("nan_loss", "NaN or inf"), ("mean_loss", "one loss per example"), ("empty", "empty"),
    ("phi_rows", "phi must be"), ("phi_values", "binary"), ("targets", "targets must be a tensor"),
])
def test_stream_filter_refuses_bad_batches_and_leaves_the_model_as_it_was(case, match, digits):
    x, y = digits[0][:8], digits[1][:8]
    phi = features(x)
    loss = per_example_ce
    if case == "nan_loss":
        loss = lambda m, xb, yb: per_example_ce(m, xb, yb) * float("nan")  # noqa: E731
    if case == "mean_loss":
        loss = lambda m, xb, yb: F.cross_entropy(m(xb), yb)  # noqa: E731
    x, y, phi = {"empty": (x[:0], y[:0], phi[:0]), "phi_rows": (x, y, phi[:3]), "phi_values": (x, y, phi * 2),
                 "targets": (x, y.tolist(), phi)}.get(case, (x, y, phi))
    model = UserCNN()
    model.train()
    before = state(model)
    stream = StreamFilter(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, 8, 1, 0.5)
    with pytest.raises(InputError, match=match):
        stream.step(x, y, phi)
    assert_as_it_was(model, before)  # BatchNorm running statistics included
    assert stream.counters()["seen"] == 0
