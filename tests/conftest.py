"""Shared fixtures: a throwaway runs folder and a tiny registered-on-demand experiment."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


# What a distributed launcher sets. A test that leaves one behind (a full-suite run once left RANK in
# an xdist worker, and the TernGrad example then took torchrun's path) would change later tests.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "RENDEZVOUS")


@pytest.fixture(autouse=True)
def no_leaked_launcher_variables():
    """Restore the launcher variables of the environment after every test."""
    before = {k: os.environ.get(k) for k in LAUNCHER_VARIABLES}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A fresh runs folder, also exported as HONED_RUNS for CLI tests."""
    root = tmp_path / "runs"
    monkeypatch.setenv("HONED_RUNS", str(root))
    return root


def pytest_collection_modifyitems(config, items):
    """HONED_DEVICE_TESTS_ONLY=1 keeps only the tests that take the ``device`` fixture (tests/test_cuda.py
    runs them again on cuda)."""
    if os.environ.get("HONED_DEVICE_TESTS_ONLY"):
        kept = [item for item in items if "device" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def device():
    """The device component tests run on: cpu, or HONED_TEST_DEVICE (``make test-cuda`` sets cuda)."""
    import torch

    return torch.device(os.environ.get("HONED_TEST_DEVICE", "cpu"))


@pytest.fixture
def toy_registered():
    """The toy experiment of tests/core, registered for the duration of a test (CLI tests)."""
    from honed.core.experiment import EXPERIMENTS, load_experiments
    from tests.core.toy_experiment import ToyExperiment

    load_experiments()
    EXPERIMENTS._items[ToyExperiment.id] = ToyExperiment
    yield
    EXPERIMENTS._items.pop(ToyExperiment.id)


# Tests run two xdist workers on two cores: one torch thread each avoids oversubscription, which on
# a loaded machine made tiny models ~100x slower. Experiments themselves keep torch's default.
import torch  # noqa: E402

torch.set_num_threads(1)

# Hypothesis: no per-example deadline (a loaded CI machine is not a slow kernel), and in CI a fixed
# example sequence so a landing cannot hinge on a lucky draw; locally it explores fresh examples.
from hypothesis import settings  # noqa: E402

settings.register_profile("honed", deadline=None, derandomize=bool(os.environ.get("CI")), print_blob=True)
settings.load_profile("honed")
