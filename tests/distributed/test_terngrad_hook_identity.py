"""TernGrad's DDP hook (arXiv:1705.07878) gives, bit for bit, the gradients of the single-process
reference :func:`honed.distributed.terngrad.aggregate_ternary` fed with the same local gradients and
the same per-rank random streams: the vectorised encode/decode and the asynchronous exchange change
how fast the average is computed, never what it is.

The reference draws, for each worker, the tensors in bucket order from a generator seeded
``seed * 1_000_003 + rank`` (the hook's rule), so the two runs consume the same random numbers.
"""
import pytest
import torch

from honed.distributed.launch import run_workers
from honed.distributed.terngrad import aggregate_ternary

SEED = 7


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # 3 layers: 13-, 9- and 5-element tensors make paddings of 1, 3 and 3 codes
    return torch.nn.Sequential(torch.nn.Linear(13, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5),
                               torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(6, 13, generator=data), torch.randint(0, 3, (6,), generator=data)


def identity_worker(rank: int, world: int, min_numel: int, steps: int, bucket_mb: float) -> dict:
    """Train ``steps`` SGD steps with the hook; return every step's local and averaged gradients and the
    parameter order of every bucket the hook saw in the last step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from honed.distributed.terngrad_hook import TernGradState, terngrad_hook

    model = _model()
    local_model = _model()  # same weights, no DDP: this worker's own (un-averaged) gradient
    ddp = DDP(model, bucket_cap_mb=bucket_mb)
    ptr_to_index = {p.data_ptr(): i for i, p in enumerate(model.parameters())}
    buckets: list[list[int]] = []

    def recording_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buckets.append([ptr_to_index[p.data_ptr()] for p in bucket.parameters()])
        return terngrad_hook(state, bucket)

    state = TernGradState(clip_factor=2.5, min_numel=min_numel, seed=SEED)
    ddp.register_comm_hook(state, recording_hook)
    opt, local_opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, local_model))
    records = []
    for step in range(steps):
        x, y = _batch(rank, step)
        buckets.clear()
        for m, o in ((ddp, opt), (local_model, local_opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
        records.append({"local": [p.grad.clone() for p in local_model.parameters()],
                        "averaged": [p.grad.clone() for p in model.parameters()], "buckets": list(buckets)})
        opt.step()
        with torch.no_grad():  # the local copy follows the averaged update, so step k's gradients match
            for p, q in zip(local_model.parameters(), model.parameters()):
                p.copy_(q)
    return {"records": records}


def _reference(per_rank: list[dict], step: int, min_numel: int) -> list[torch.Tensor]:
    """aggregate_ternary over the buckets of ``step``, each worker's generator advanced bucket by bucket."""
    world = len(per_rank)
    gens = [torch.Generator().manual_seed(SEED * 1_000_003 + r) for r in range(world)]
    out: list[torch.Tensor | None] = [None] * len(per_rank[0]["records"][step]["local"])
    # every step so far consumed random numbers: replay them in order
    for past in range(step + 1):
        for bucket in per_rank[0]["records"][past]["buckets"]:
            stacked = [torch.stack([r["records"][past]["local"][i] for r in per_rank]) for i in bucket]
            averaged = aggregate_ternary(stacked, clip_factor=2.5, generators=gens, min_numel=min_numel)
            if past == step:
                for i, avg in zip(bucket, averaged):
                    out[i] = avg
    return out


@pytest.mark.slow
@pytest.mark.parametrize("min_numel,bucket_mb", [(1, 25.0), (10, 25.0), (1, 1e-4)])
def test_ddp_hook_equals_the_reference_bit_for_bit(min_numel, bucket_mb):
    """min_numel 10: the 9-, 5- and 3-element biases stay fp32 (mixed buckets); bucket_mb 1e-4: one
    tensor per bucket (several hooks in flight during one backward)."""
    import torch._dynamo  # noqa: F401  (DDP imports it lazily: load once so forked workers share it)

    steps = 3
    per_rank = run_workers(identity_worker, 2, (min_numel, steps, bucket_mb), start_method="fork", timeout_s=60)
    for step in range(steps):
        expected = _reference(per_rank, step, min_numel)
        for r in per_rank:
            got = r["records"][step]["averaged"]
            for i, (g, e) in enumerate(zip(got, expected)):
                assert torch.equal(g, e), (step, i, (g - e).abs().max())
    if bucket_mb < 1:
        assert len(per_rank[0]["records"][-1]["buckets"]) > 1
