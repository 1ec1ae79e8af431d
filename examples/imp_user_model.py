"""Iterative magnitude pruning with weight rewinding (The Lottery Ticket Hypothesis, arXiv:1803.03635;
rewinding, arXiv:1903.01611) of your own model, trained by your own loop.

IMP only needs a function ``train(model, steps)`` that runs ``steps`` optimizer steps of your loop
(build the optimizer inside it, as each level restarts training from the rewind point). Pruned
weights stay exactly zero whatever your optimizer does; IMP prunes 20% of the remaining weights per
level and rewinds the survivors to their values after ``rewind_step`` steps.

    python examples/imp_user_model.py             # under a minute on one CPU core
    HONED_EXAMPLE_TINY=1 python examples/imp_user_model.py    # a few seconds
"""
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from honed.compress.imp import iterative_magnitude_pruning

TINY = os.environ.get("HONED_EXAMPLE_TINY") == "1"
STEPS, ROUNDS, REWIND = (30, 2, 5) if TINY else (600, 6, 50)


class MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def digits():
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    (x, y), (x_test, y_test) = digits()

    def train(model: nn.Module, steps: int) -> None:  # your loop, any optimizer
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(y), (64,))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        model.eval()
        return {"test_acc": (model(x_test).argmax(1) == y_test).float().mean().item()}

    model = MyNet()
    result = iterative_magnitude_pruning(model, train, ROUNDS, steps=STEPS, rewind_step=REWIND,
                                         ignore=["fc2.weight"], evaluate=evaluate)
    for level in result.levels:
        print(f"level {level.level}: sparsity {level.sparsity:.3f}  test acc {level.metrics['test_acc']:.3f}")
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n in result.masks[-1])
    print(f"the model now holds the last ticket: {zeros} weights exactly zero")


if __name__ == "__main__":
    main()
