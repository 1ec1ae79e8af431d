"""On a GPU machine (`make test-cuda`): every experiment's smoke preset runs on cuda, and the userland
component tests and every other test that takes the ``device`` fixture run again with HONED_TEST_DEVICE=cuda. Skipped, with the reason, where no GPU exists."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from honed.core.config import preset
from honed.core.experiment import load_experiments
from honed.core.runner import result_name, run_dir, run_experiment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
REGISTRY = load_experiments()


@pytest.mark.parametrize("exp_id", REGISTRY.names())
def test_smoke_preset_runs_on_cuda(exp_id, tmp_path):
    exp = REGISTRY.get(exp_id)
    cfg = preset(exp.Config, "smoke")
    result = run_experiment(exp(), cfg, "smoke", tmp_path, "cuda", progress=False)
    assert result.environment["device"].startswith("cuda") and result.claims
    assert (run_dir(tmp_path, exp_id, cfg, "cuda") / result_name(cfg)).exists()


def test_userland_components_on_cuda():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HONED_TEST_DEVICE="cuda")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests/userland")],
                          cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_device_fixture_tests_on_cuda():
    """Every test outside tests/userland that takes the ``device`` fixture (components in tests/compress,
    tests/robust, tests/vision, ...), on cuda."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HONED_TEST_DEVICE="cuda", HONED_DEVICE_TESTS_ONLY="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests"),
                           "--ignore", str(root / "tests/userland"), "--ignore", str(root / "tests/test_cuda.py")],
                          cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
