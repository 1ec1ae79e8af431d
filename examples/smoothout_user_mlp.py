"""SmoothOut (arXiv:1805.07898) in your own training loop: fresh uniform weight noise for each
mini-batch's forward and backward, removed again before the optimizer steps.

``so.step(optimizer)`` removes the noise, steps the optimizer and advances the amplitude schedule, so
the update is applied to the clean weights (an ``optimizer.step()`` taken while the noise is in would
be thrown away; honed raises instead of letting that happen silently). Compares with plain SGD on
sklearn digits. ``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from honed.efficient.smoothout import SmoothOut

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
torch.set_num_threads(1)

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16  # (1797, 64) in [0, 1]
y = torch.tensor(digits.target)
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def fit(smoothout_amplitude: float | None) -> float:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    smooth = SmoothOut(model, smoothout_amplitude, schedule="anneal") if smoothout_amplitude else None
    order = torch.Generator().manual_seed(1)
    for epoch in range(2 if TINY else 30):
        for batch in torch.randperm(len(x_train), generator=order).split(256):
            optimizer.zero_grad()
            if smooth is None:
                F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
                continue
            smooth.inject()  # weights w + theta, theta ~ U(-a, a)
            F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()  # gradient at w + theta
            smooth.step(optimizer)  # back to w, then w <- w - lr * gradient
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


print(f"plain SGD test accuracy {fit(None):.3f}; SmoothOut (a = 0.02, annealed) {fit(0.02):.3f}")
