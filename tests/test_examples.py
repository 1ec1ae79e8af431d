"""Every script in examples/ runs to the end at its tiny size (HONED_EXAMPLE_TINY=1), as a user would
run it: a fresh interpreter, the script's own plain PyTorch loop, no honed test fixtures."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LAUNCHER_VARIABLES  # a user runs an example from a plain shell: none of these

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_at_tiny_size(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}  # a fresh shell's
    env.update(HONED_EXAMPLE_TINY="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
