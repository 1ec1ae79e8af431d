"""DDP under torchrun: the TernGrad example and experiment 18's DDP arms run in 2 processes started by
`torchrun --standalone --nproc_per_node 2` (gloo, CPU), and the experiment's arms under torchrun equal
the ones honed's own launcher (honed.distributed.launch.run_workers) gives."""
import json
import os
import subprocess
import sys
from pathlib import Path

from honed.cli import main
from tests.test_reproduce_jobs import stable

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HONED_EXAMPLE_TINY="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run(TORCHRUN + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_terngrad_example_runs_under_torchrun(tmp_path):
    proc = torchrun([str(ROOT / "examples" / "terngrad_ddp.py")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 workers, test accuracy" in proc.stdout  # rank 0's line, after 2 processes trained


REPLICA_GAP = "replica_max_abs_diff"  # float round-off between two processes' kernels, not a result


def arms(root: Path) -> dict:
    (file,) = root.glob("18-terngrad/*/result*.json")
    data = json.loads(file.read_text())
    return stable(data.get("value", data)["arms"])


def replica_gaps(arms: dict) -> dict:
    """Pop each arm's replica gap (PowerSGD's replicas measured 0 in one launch and 3.7e-9 in another)."""
    return {name: metrics.pop(REPLICA_GAP)["values"] for name, metrics in arms.items() if REPLICA_GAP in metrics}


def test_experiment_18_ddp_arms_under_torchrun_equal_honed_launcher(tmp_path):
    proc = torchrun(["-m", "honed.cli", "run", "18-terngrad", "--preset", "smoke", "--out", str(tmp_path / "tr")],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["run", "18-terngrad", "--preset", "smoke", "--out", str(tmp_path / "local")]) == 0
    under_torchrun, local = arms(tmp_path / "tr"), arms(tmp_path / "local")
    assert {"ddp_w2_fp32", "ddp_w2_terngrad", "ddp_w2_fp16", "ddp_w2_powersgd"} <= set(under_torchrun)
    gaps = replica_gaps(under_torchrun), replica_gaps(local)
    assert gaps[0].keys() == gaps[1].keys() and all(v < 1e-6 for g in gaps for vs in g.values() for v in vs)
    assert under_torchrun == local
    assert len(list((tmp_path / "tr").glob("18-terngrad/*/"))) == 1  # rank 0 alone wrote the runs folder
