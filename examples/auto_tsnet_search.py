"""Auto-TSNet (arXiv:2108.12957) on your own clips: progressive probabilistic search of a two-stream
(slow: every 4th frame, fast: every frame) video network under a FLOPs target, then the found
architecture retrained from scratch as a plain nn.Module.

``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch
import torch.nn.functional as F

from honed.core.measure import count_macs
from honed.data.moving_shapes import make_moving_shapes
from honed.vision.two_stream_search import cycle_batches, progressive_search
from honed.vision.two_stream_space import FixedArchNet, TwoStreamSpace, slowfast_tiny

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
torch.set_num_threads(1)
size = 16 if TINY else 24
space = TwoStreamSpace(frames=16, alpha=4, size=size)
x, y = make_moving_shapes(48 if TINY else 768, seed=0, size=size)
vx, vy = make_moving_shapes(24 if TINY else 192, seed=1, size=size)

target = count_macs(FixedArchNet(space, slowfast_tiny(space)), x[:1])  # SlowFast-tiny's MACs: the budget
found = progressive_search(space, cycle_batches(x, y, 16, 0), cycle_batches(vx, vy, 16, 1),
                           steps=(2, 1, 1) if TINY else (40, 15, 15), target_macs=target)
print(f"search: {found['weight_updates']} weight updates, {found['cpu_s']:.1f} CPU s")

torch.manual_seed(0)
net = FixedArchNet(space, found["arch"])
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
for epoch in range(1 if TINY else 10):
    for idx in torch.randperm(len(y)).split(32):
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
net.eval()
with torch.no_grad():
    acc = (net(vx).argmax(1) == vy).float().mean().item()
print(f"found model: {count_macs(net, x[:1]):,} MACs (budget {target:,}), validation accuracy {acc:.3f}")
