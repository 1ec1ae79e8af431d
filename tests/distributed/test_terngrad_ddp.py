"""TernGrad's DDP hook in real gloo processes (arXiv:1705.07878), and the worker launcher.

Every multi-process test is marked slow (it still runs in CI); each run_workers call takes its own
free port. Worker functions live at module level so spawn can pickle them.
"""
import math

import pytest
import torch

from honed.distributed.launch import WorkerError, run_workers

STEPS = 4
MIN_NUMEL = 8  # the 7- and 3-element biases stay fp32


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def terngrad_worker(rank: int, world: int) -> dict:
    """Train the tiny model STEPS steps with the hook; record wire dtypes, grads and counters."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from honed.distributed.terngrad_hook import TernGradState, terngrad_hook

    sent = []
    real_all_gather = dist.all_gather

    def recording_all_gather(outputs, tensor, *args, **kwargs):
        sent.append((tensor.dtype, tensor.numel()))
        return real_all_gather(outputs, tensor, *args, **kwargs)

    dist.all_gather = recording_all_gather
    model = _tiny_model()
    ddp = DDP(model)
    state = TernGradState(clip_factor=2.5, min_numel=MIN_NUMEL, seed=3)
    ddp.register_comm_hook(state, terngrad_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)  # each worker its own shard
    for _ in range(STEPS):
        x, y = torch.randn(16, 10, generator=data), torch.randint(0, 3, (16,), generator=data)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
    dist.all_gather = real_all_gather
    return {"params": [p.detach().clone() for p in model.parameters()], "grads": grads, "sent": sent,
            "steps": state.steps, "bytes_per_step": state.bytes_per_step, "last": state.last_step_bytes,
            "fp32": state.fp32_bytes_per_step, "local": state.last_local_scalers,
            "shared": state.last_shared_scalers}


@pytest.mark.slow
def test_two_process_ddp_terngrad_replicas_identical_and_bytes_counted():
    results = run_workers(terngrad_worker, 2)  # default start method (spawn)
    first, second = results
    for p, q in zip(first["params"], second["params"]):
        assert torch.equal(p, q)
    assert not torch.equal(first["params"][0], _tiny_model()[0].weight.detach())
    # Counted bytes = formula: 2 bits/element rounded up + one fp32 scaler per ternary tensor + fp32 biases.
    ternary_numel, float_numel = 10 * 7 + 7 * 3, 7 + 3
    expected = math.ceil(ternary_numel / 4) + 4 * 2 + 4 * float_numel
    for r in results:
        assert r["steps"] == STEPS and r["bytes_per_step"] == expected == r["last"]
        assert r["fp32"] == 4 * (ternary_numel + float_numel)
        # The wire carries the packed uint8 codes, one all-gather per step.
        assert r["sent"] == [(torch.uint8, math.ceil(ternary_numel / 4))] * STEPS
    # Shared scalers are the max over workers of the local ones.
    assert torch.equal(first["shared"], torch.maximum(first["local"], second["local"]))
    assert torch.equal(first["shared"], second["shared"])


@pytest.mark.slow
def test_averaged_gradients_lie_on_the_ternary_grid():
    import torch._dynamo  # noqa: F401  (DDP imports it lazily: load once so forked workers share it)

    first, second = run_workers(terngrad_worker, 2, start_method="fork")
    s = first["shared"]  # scalers of the last step, in bucket order: weights of layer 2, then layer 0
    for grads in (first["grads"], second["grads"]):
        for grad, scale in ((grads[2], s[0]), (grads[0], s[1])):
            k = grad / (scale / 2)  # 2 workers: levels s * {-2, -1, 0, 1, 2} / 2
            assert torch.allclose(k, k.round(), atol=1e-5) and k.abs().max() <= 2
    assert torch.equal(first["grads"][1], second["grads"][1])


def rank_echo(rank: int, world: int, offset: int) -> tuple:
    return rank + offset, world


def failing_worker(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("boom on purpose")
    import torch.distributed as dist

    dist.barrier()  # rank 0 waits for a peer that never comes; the launcher must still return


@pytest.mark.slow
def test_run_workers_returns_values_by_rank():
    assert run_workers(rank_echo, 3, (10,), start_method="fork") == [(10, 3), (11, 3), (12, 3)]


@pytest.mark.slow
def test_run_workers_names_the_failing_rank():
    with pytest.raises(WorkerError, match="worker 1 of 2 failed: ValueError: boom on purpose"):
        run_workers(failing_worker, 2, start_method="fork", timeout_s=30)


def dying_worker(rank: int, world: int) -> int:
    import os

    if rank == 1:
        os._exit(3)  # no result, no traceback: what a segfault or the gloo exit abort looks like
    return rank


@pytest.mark.slow
def test_run_workers_reports_a_worker_that_dies():
    with pytest.raises(WorkerError, match="worker 1 of 2 died without a result.*exit code 3"):
        run_workers(dying_worker, 2, start_method="fork", timeout_s=30)


def test_state_selects_full_precision_tensors_and_rejects_bad_options():
    from honed.core.errors import InputError
    from honed.distributed.terngrad_hook import TernGradState

    model = _tiny_model()
    state = TernGradState(min_numel=MIN_NUMEL, float_parameters=model[2].parameters())
    assert [state.quantizes(p) for p in model.parameters()] == [True, False, False, False]
    for bad in ({"clip_factor": -1.0}, {"clip_factor": float("nan")}, {"min_numel": -2}):
        with pytest.raises(InputError):
            TernGradState(**bad)


def nan_on_rank_one_worker(rank: int, world: int, min_numel: int) -> str:
    """One backward where only rank 1's loss is NaN; returns the error this rank raised."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from honed.core.errors import InputError
    from honed.distributed.terngrad_hook import TernGradState, terngrad_hook

    ddp = DDP(_tiny_model())
    ddp.register_comm_hook(TernGradState(min_numel=min_numel), terngrad_hook)
    x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    loss = torch.nn.functional.cross_entropy(ddp(x), y) * (float("nan") if rank == 1 else 1.0)
    try:
        loss.backward()
    except InputError as err:
        return f"InputError: {err}"
    except Exception as err:  # anything else (e.g. a gloo connection error) fails the test below
        return f"{type(err).__name__}: {err}"
    return "no error"


@pytest.mark.slow
@pytest.mark.parametrize("min_numel", [1, 10 ** 6])  # every tensor ternarised / every tensor kept fp32
def test_nan_on_one_rank_makes_every_rank_raise_the_same_clear_error(min_numel):
    import torch._dynamo  # noqa: F401  (DDP imports it lazily: load once so forked workers share it)

    errors = run_workers(nan_on_rank_one_worker, 2, (min_numel,), start_method="fork", timeout_s=60)
    for rank, error in enumerate(errors):
        assert error.startswith("InputError: terngrad_hook: a gradient in this bucket is NaN or inf"), (rank, error)
    assert "another rank's" in errors[0] and "this rank's are" not in errors[1]


def test_a_failed_rendezvous_is_retried_on_a_new_port(monkeypatch):
    import honed.distributed.launch as launch

    calls = []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 1:
            raise launch.WorkerError("worker 0 of 2 failed: RuntimeError: Gloo connectFullMesh failed ...")
        return ["ok", "ok"]

    monkeypatch.setattr(launch, "_run_once", flaky)
    assert launch.run_workers(print, 2) == ["ok", "ok"] and len(calls) == 2
    monkeypatch.setattr(launch, "_run_once", lambda *a: (_ for _ in ()).throw(launch.WorkerError("worker 1 failed: ValueError")))
    with pytest.raises(launch.WorkerError, match="ValueError"):
        launch.run_workers(print, 2)
