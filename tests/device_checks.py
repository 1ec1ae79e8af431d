"""Device-convention helpers for the CPU tests of issue 18: a component given a model or tensors on a
non-default device returns tensors on that device. The 'meta' device stands in for a GPU on a CPU-only
machine (shapes and devices, no data); a CPU generator drawing for it must draw on the CPU and move."""
import torch

META = torch.device("meta")


def cpu_generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def devices_of(*outputs) -> set[torch.device]:
    """The devices of every tensor in ``outputs`` (tensors, or lists / tuples / dict values of them)."""
    found = set()
    for out in outputs:
        if torch.is_tensor(out):
            found.add(out.device)
        elif isinstance(out, dict):
            found |= devices_of(*out.values())
        elif isinstance(out, (list, tuple)):
            found |= devices_of(*out)
    return found


def assert_on(device: torch.device | str, *outputs) -> None:
    """Every tensor of ``outputs`` lies on ``device`` (and there is at least one)."""
    found = devices_of(*outputs)
    assert found == {torch.device(device)}, f"expected every output on {device}, got {found}"
