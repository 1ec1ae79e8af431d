"""honed.distributed.launch: the gloo workers are CPU processes by design (issue 18)."""
import os

from honed.distributed.launch import run_workers


def report_cuda_visibility(rank, world_size):
    import torch
    return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available()


def test_workers_never_see_a_gpu():
    assert run_workers(report_cuda_visibility, 2, start_method="fork", timeout_s=60) == [("", False)] * 2
