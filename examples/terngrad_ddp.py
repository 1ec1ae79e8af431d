"""TernGrad (arXiv:1705.07878) as a DDP communication hook on your own model and loop.

Run it either way:

    torchrun --nproc_per_node 2 examples/terngrad_ddp.py   # torchrun starts the processes
    python examples/terngrad_ddp.py                        # starts 2 gloo CPU processes itself

Each worker trains the same MLP on its own shard of sklearn digits; the hook sends 2-bit gradient codes
instead of float32 gradients. ``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from honed.distributed.terngrad_hook import TernGradState, terngrad_hook

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))


def train(rank: int, world_size: int) -> dict:
    """One worker's training; the default process group is already initialised."""
    torch.set_num_threads(1)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16  # (1797, 64) in [0, 1]
    y = torch.tensor(digits.target)
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    shard = torch.arange(rank, len(x_train), world_size)  # each worker its own examples

    torch.manual_seed(0)  # DDP also broadcasts rank 0's weights, so every replica starts alike
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    ddp = DistributedDataParallel(model)
    state = TernGradState(clip_factor=2.5, seed=0)
    ddp.register_comm_hook(state, terngrad_hook)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    order = torch.Generator().manual_seed(rank)
    for epoch in range(2 if TINY else 20):
        for batch in shard[torch.randperm(len(shard), generator=order)].split(32):
            loss = F.cross_entropy(ddp(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()  # the hook ternarises and averages the gradients here
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    fp32 = state.fp32_bytes_per_step
    if rank == 0:
        print(f"{world_size} workers, test accuracy {accuracy:.3f}; each worker sent {state.bytes_per_step:.0f} bytes "
              f"per step instead of {fp32} for float32 gradients (1/{fp32 / state.bytes_per_step:.1f})")
    return {"accuracy": accuracy, "bytes_per_step": state.bytes_per_step}


if __name__ == "__main__":
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):  # started by torchrun
        dist.init_process_group("gloo")
        train(dist.get_rank(), dist.get_world_size())
        sys.stdout.flush()
        dist.destroy_process_group()
        os._exit(0)  # gloo workers of this torch may abort at a normal interpreter exit
    else:
        from honed.distributed.launch import run_workers  # spawns gloo CPU workers on a free port

        results = run_workers(train, world_size=2)
        assert results[0]["accuracy"] == results[1]["accuracy"], "the replicas should stay identical"
