"""A training run killed at an epoch boundary and resumed from its checkpoint ends bit for bit where
an uninterrupted run ends, including the generators its callbacks, data and loss own."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from honed.core.checkpoint import save_checkpoint
from honed.core.loop import Callback, train
from honed.core.rng_state import capture, owned_generators, restore


class NoisyGradients(Callback):
    """Owns three kinds of generator, nested one level down, and draws from each every step."""

    def __init__(self, seed: int) -> None:
        self.gens = {"torch": torch.Generator().manual_seed(seed), "numpy": np.random.default_rng(seed),
                     "python": random.Random(seed)}

    def before_step(self, state):
        scale = self.gens["numpy"].random() + self.gens["python"].random()
        for p in state.model.parameters():
            p.grad.add_(torch.randn(p.shape, generator=self.gens["torch"]) * 0.01 * scale)
        torch.rand(1)  # the global generator too


class KillAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def batches():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]


def run(tmp_path, kill_at: int | None, ckpt_name: str = "c.safetensors"):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    callbacks = [NoisyGradients(7)] + ([KillAt(kill_at)] if kill_at is not None else [])
    train(model, batches(), opt, 5, callbacks=callbacks, checkpoint=tmp_path / ckpt_name, progress=False)
    return model


def test_killed_and_resumed_training_equals_the_uninterrupted_run(tmp_path):
    whole = run(tmp_path / "a", None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill_at=2)
    resumed = run(tmp_path / "b", None)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_damaged_checkpoint_is_named_moved_aside_and_recomputed(tmp_path):
    whole = run(tmp_path / "a", None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill_at=1)
    ckpt = tmp_path / "b" / "c.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-40:-20] = bytes(b ^ 0xFF for b in data[-40:-20])  # damage tensor bytes, keep the header readable
    ckpt.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="fails its checksum"):
        again = run(tmp_path / "b", None)
    assert (tmp_path / "b" / "c.safetensors.corrupt").exists()
    for a, b in zip(whole.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_generators_are_found_by_attribute_path_and_restored():
    cb = NoisyGradients(3)
    found = owned_generators({"callbacks": [cb]})
    assert set(found) == {"callbacks[0].gens['torch']", "callbacks[0].gens['numpy']", "callbacks[0].gens['python']"}
    saved = capture({"callbacks": [cb]})
    first = (torch.rand(2, generator=cb.gens["torch"]), cb.gens["numpy"].random(), cb.gens["python"].random(),
             np.random.rand(), random.random(), torch.rand(1))
    restore({"callbacks": [cb]}, *saved)
    second = (torch.rand(2, generator=cb.gens["torch"]), cb.gens["numpy"].random(), cb.gens["python"].random(),
              np.random.rand(), random.random(), torch.rand(1))
    assert torch.equal(first[0], second[0]) and first[1:5] == second[1:5] and torch.equal(first[5], second[5])


def test_an_old_checkpoint_without_generator_state_still_resumes(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "old.safetensors", model, opt, {"epoch": 0, "step": 4, "history": {"train_loss": [1.0]}})
    history = train(model, batches(), opt, 2, checkpoint=tmp_path / "old.safetensors", progress=False,
                    loss_fn=F.cross_entropy)
    assert len(history["train_loss"]) == 2
