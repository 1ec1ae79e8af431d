import pytest
import torch
import torch.nn.functional as F

from honed.core.loop import Callback, ClipGradNorm, CosineLR, evaluate_classifier, train
from honed.data.base import Batches, Split


def make_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=g)
    return Split(x, (x.sum(1) > 2).long())


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_step_start(self, s): self.events.append("step_start")
    def on_batch_start(self, s): self.events.append("batch")
    def after_backward(self, s): self.events.append("backward")
    def before_step(self, s): self.events.append("before")
    def after_step(self, s): self.events.append("after")
    def on_epoch_end(self, s): self.events.append("epoch")


def test_callbacks_fire_in_order_with_one_batch_start_per_ghost_chunk():
    rec = Recorder()
    model = make_model()
    train(model, Batches(make_data(8), 8), torch.optim.SGD(model.parameters(), 0.1), 1,
          callbacks=[rec], ghost_size=4, progress=False)
    assert rec.events == ["step_start", "batch", "backward", "batch", "backward", "before", "after", "epoch"]


def test_ghost_chunks_give_the_full_batch_mean_gradient():
    data = make_data(12)
    grads = []
    for ghost in (None, 4):
        model = make_model()
        grab = type("Grab", (Callback,), {"before_step": lambda self, s: grads.append(
            [p.grad.clone() for p in s.model.parameters()])})()
        train(model, Batches(data, 12, shuffle=False), torch.optim.SGD(model.parameters(), 0.0), 1,
              callbacks=[grab], ghost_size=ghost, progress=False)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_matches_a_bare_torch_loop():
    data = make_data(40)
    model_a, model_b = make_model(), make_model()
    opt_a = torch.optim.SGD(model_a.parameters(), 0.2, momentum=0.9)
    batches = Batches(data, 10, seed=3)
    train(model_a, batches, opt_a, 2, progress=False)
    opt_b = torch.optim.SGD(model_b.parameters(), 0.2, momentum=0.9)
    for epoch in range(2):
        batches.set_epoch(epoch)
        for x, y in batches:
            opt_b.zero_grad()
            F.cross_entropy(model_b(x), y).backward()
            opt_b.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b)


class StopAfter(Callback):
    def __init__(self, epoch): self.epoch = epoch
    def on_epoch_end(self, s):
        if s.epoch == self.epoch:
            raise KeyboardInterrupt


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    data = make_data(40)
    ref = make_model()
    hist_ref = train(ref, Batches(data, 8), torch.optim.SGD(ref.parameters(), 0.1, momentum=0.9), 4,
                     callbacks=[ClipGradNorm(1.0), CosineLR()], progress=False)
    model = make_model()
    ckpt = tmp_path / "c.safetensors"
    try:
        train(model, Batches(data, 8), torch.optim.SGD(model.parameters(), 0.1, momentum=0.9), 4,
              callbacks=[ClipGradNorm(1.0), CosineLR(), StopAfter(1)], checkpoint=ckpt, progress=False)
    except KeyboardInterrupt:
        pass
    resumed = make_model()
    hist = train(resumed, Batches(data, 8), torch.optim.SGD(resumed.parameters(), 0.1, momentum=0.9), 4,
                 callbacks=[ClipGradNorm(1.0), CosineLR()], checkpoint=ckpt, progress=False)
    assert len(hist["train_loss"]) == 4
    assert hist["train_loss"][2:] == hist_ref["train_loss"][2:]
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_evaluate_classifier_counts_and_restores_mode():
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    model.train()
    out = evaluate_classifier(model, x, y, batch_size=2)
    assert out["accuracy"] == 2 / 3 and model.training
    expected = F.cross_entropy(model(x), y).item()
    assert abs(out["loss"] - expected) < 1e-6


def test_cosine_lr_follows_the_formula():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), 0.4)
    seen = []
    grab = type("Grab", (Callback,), {"before_step": lambda self, s: seen.append(s.optimizer.param_groups[0]["lr"])})()
    train(model, Batches(make_data(16), 4, shuffle=False), opt, 1, callbacks=[CosineLR(), grab], progress=False)
    import math
    assert seen == pytest.approx([0.4 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)])


def test_split_accuracy_is_evaluate_classifiers_accuracy_on_x_and_y():
    from types import SimpleNamespace

    from honed.core.loop import split_accuracy

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    split = SimpleNamespace(x=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), y=torch.tensor([0, 1, 1]))
    assert split_accuracy(model, split) == 2 / 3


class _SeenDevice(Exception):
    pass


class _StopAtFirstBatch(Callback):
    """Records the device of the first batch the model would see, then aborts training."""

    def on_batch_start(self, s):
        raise _SeenDevice(s.x.device, s.y.device)


def test_train_moves_batches_to_the_model_device_by_default():
    """Issue 18: no CPU default - CPU batches go to the model's device unless ``device`` says otherwise."""
    model = make_model().to("meta")
    with pytest.raises(_SeenDevice) as seen:
        train(model, Batches(make_data(8), 8), torch.optim.SGD(model.parameters(), 0.1), 1,
              callbacks=[_StopAtFirstBatch()], progress=False)
    assert seen.value.args == (torch.device("meta"), torch.device("meta"))


def test_train_on_the_test_device_with_cpu_batches(device):
    model = make_model().to(device)
    history = train(model, Batches(make_data(16), 8), torch.optim.SGD(model.parameters(), 0.1), 1, progress=False)
    assert len(history["train_loss"]) == 1 and {p.device for p in model.parameters()} == {torch.device(device)}
