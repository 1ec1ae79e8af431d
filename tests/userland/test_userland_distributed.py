"""Issue 11: the TernGrad DDP hook (TernGradState, terngrad_hook) on a CNN defined here, trained by the
user's own DDP loop in 2 gloo processes; a NaN on one rank makes every rank raise the same InputError
before any optimizer step, so every replica keeps the weights it had; bad options are refused."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.distributed.launch import run_workers
from honed.distributed.terngrad_hook import TernGradState, terngrad_hook


class UserCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


def user_loop(rank: int, world: int, nan_at_step: int) -> dict:
    """The user's DDP loop; at step ``nan_at_step`` rank 1's loss is NaN (-1: never)."""
    from torch.nn.parallel import DistributedDataParallel

    model = UserCNN()
    ddp = DistributedDataParallel(model)
    state = TernGradState(seed=1)
    ddp.register_comm_hook(state, terngrad_hook)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(rank)
    error, weights_before_error = None, None
    for step in range(3):
        x, y = torch.rand(8, 1, 8, 8, generator=data), torch.randint(0, 3, (8,), generator=data)
        loss = F.cross_entropy(ddp(x), y) * (float("nan") if step == nan_at_step and rank == 1 else 1.0)
        optimizer.zero_grad()
        weights_before_error = [p.detach().clone() for p in model.parameters()]
        try:
            loss.backward()
        except InputError as err:
            error = str(err)
            break
        optimizer.step()
    return {"weights": [p.detach().clone() for p in model.parameters()], "before": weights_before_error,
            "error": error, "bytes": state.bytes_per_step, "fp32": state.fp32_bytes_per_step}


@pytest.mark.slow
def test_user_cnn_trains_under_the_hook_and_replicas_stay_identical():
    import torch._dynamo  # noqa: F401  (DDP imports it lazily: load once so forked workers share it)

    first, second = run_workers(user_loop, 2, (-1,), start_method="fork", timeout_s=60)
    assert first["error"] is None and second["error"] is None
    assert all(torch.equal(p, q) for p, q in zip(first["weights"], second["weights"]))
    assert not torch.equal(first["weights"][0], UserCNN().conv.weight.detach())
    assert 0 < first["bytes"] < first["fp32"] / 8


@pytest.mark.slow
def test_nan_on_one_rank_every_rank_raises_the_same_error_and_keeps_its_weights():
    import torch._dynamo  # noqa: F401

    results = run_workers(user_loop, 2, (1,), start_method="fork", timeout_s=60)
    for result in results:
        assert result["error"] and result["error"].startswith("terngrad_hook: a gradient in this bucket is NaN")
        assert all(torch.equal(p, q) for p, q in zip(result["weights"], result["before"]))
    assert all(torch.equal(p, q) for p, q in zip(results[0]["weights"], results[1]["weights"]))


def test_bad_options_are_refused_in_one_line():
    for bad in ({"clip_factor": -1.0}, {"clip_factor": float("inf")}, {"min_numel": 1.5}):
        with pytest.raises(InputError):
            TernGradState(**bad)
