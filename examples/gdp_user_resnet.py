"""GDP channel pruning (arXiv:2109.02220) of your own ResNet-like model, in your own PyTorch loop.

The model below is defined here, not in honed: residual additions couple channels, and GDP finds
that by tracing the model with torch.fx. Train it densely, then train it with GDP's gates (your
optimizer over model.parameters(); gdp.penalty() in the loss; gdp.step() after optimizer.step()),
export the physically smaller model and compare accuracy, MACs and latency (both models timed in
deployed form - BatchNorm folded, channels-last - in interleaved rounds, by
honed.compress.deployed_latency).

    python examples/gdp_user_resnet.py            # about a minute on one CPU core
    HONED_EXAMPLE_TINY=1 python examples/gdp_user_resnet.py   # a few seconds
"""
import copy
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from honed.compress.deployed_latency import deployed_latency
from honed.compress.gdp import GDP, GDPSchedule

TINY = os.environ.get("HONED_EXAMPLE_TINY") == "1"
DENSE_EPOCHS, GDP_EPOCHS, FINETUNE_EPOCHS = (1, 2, 1) if TINY else (15, 20, 3)
LATENCY_ROUNDS = 3 if TINY else 15


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class MyResNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width), Block(width, 2 * width, 2), Block(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def digits():
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = int(0.8 * len(y))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def batches(x, y, size=64):
    order = torch.randperm(len(y))
    for i in range(0, len(y), size):
        yield x[order[i:i + size]], y[order[i:i + size]]


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def macs(model, x):
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def train(model, data, epochs, lr, gdp=None):
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        model.train()
        for xb, yb in batches(x, y):
            loss = F.cross_entropy(model(xb), yb)
            if gdp is not None:
                loss = loss + gdp.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if gdp is not None:
                gdp.step()


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    (x, y), (x_test, y_test) = digits()
    model = MyResNet()
    train(model, (x, y), DENSE_EPOCHS, lr=0.05)
    dense_acc, dense_macs = accuracy(model, x_test, y_test), macs(model, x_test[:1])
    dense = copy.deepcopy(model)  # GDP gates the model in place; keep the dense one to time against

    steps = GDP_EPOCHS * -(-len(y) // 64)
    gdp = GDP(model, x[:1], GDPSchedule(target_macs=0.5), steps=steps)
    train(model, (x, y), GDP_EPOCHS, lr=0.02, gdp=gdp)
    zeroed = gdp.enforce_target()  # warns if the gates had not reached the target by themselves
    gated_acc = accuracy(model, x_test, y_test)
    pruned = gdp.export()
    exported_acc = accuracy(pruned, x_test, y_test)
    train(pruned, (x, y), FINETUNE_EPOCHS, lr=0.01)

    print(f"dense : acc {dense_acc:.3f}  MACs {dense_macs}")
    print(f"gated : acc {gated_acc:.3f}  gates forced to 0 by enforce_target: {zeroed}")
    print(f"pruned: acc {exported_acc:.3f} at export, {accuracy(pruned, x_test, y_test):.3f} after "
          f"{FINETUNE_EPOCHS} finetune epoch(s)  MACs {macs(pruned, x_test[:1])} (GDP's model: {gdp.hard_macs()})")
    print("widths:", {g.name: int(m.sum()) for g, m in zip(gdp.groups, gdp.alive())})
    timing = deployed_latency({"dense": dense, "gdp": pruned}, x_test[:1], rounds=LATENCY_ROUNDS, batches=(64,))
    print(f"latency at batch 64 (deployed form, CPU time): dense {timing['dense']['latency_b64_ms']:.2f} ms, "
          f"pruned {timing['gdp']['latency_b64_ms']:.2f} ms, speed-up {timing['gdp']['speedup_b64']:.2f}x")


if __name__ == "__main__":
    main()
