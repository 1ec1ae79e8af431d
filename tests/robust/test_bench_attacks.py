"""benchmarks/bench_attacks.py writes one result file per target in honed.core.benchmark's shape
(a tiny setting: hand-made success rows, one PGD round on a toy CNN; no timing is asserted)."""
import json

import pytest
import torch
from torch import nn

from honed.core.benchmark import RESULT_KEYS

from tests.benchmark_scripts import load_benchmark



@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("bench_attacks")
    return module


def row(success: float) -> dict:
    return {"success": success, "mean_l2_of_successes": 0.5}


def test_success_targets_are_judged_on_honed_cw_and_guided_a_on_its_ratio(bench, tmp_path):
    rows = {"c=1": {"honed CW": row(0.9), "honed GuidedCW A": row(0.45)},
            "binary search": {"honed CW": row(1.0), "honed GuidedCW A": row(1.0)}}
    bench.write_success_results(rows, {"images": 2}, tmp_path)
    c1, search, guided = (json.loads((tmp_path / f"{n}.json").read_text())
                          for n in ("cw_success_c1", "cw_success_binary_search", "guided_cw_a_success"))
    assert tuple(c1) == RESULT_KEYS and c1["ratio"] == 0.9 and not c1["holds"] and c1["details"]["images"] == 2
    assert search["ratio"] == 1.0 and search["holds"] and search["comparison"] == ">="
    assert guided["ratio"] == 0.5 and not guided["holds"]


@pytest.mark.parametrize("peer", [False, True])
def test_pgd_targets_write_a_ratio_per_file_and_null_without_the_peer(bench, tmp_path, peer):
    ta = pytest.importorskip("torchattacks") if peer else None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    bench.measure_pgd(model, x, y, ta, 1, {"images": 3}, tmp_path)
    vs_peer = json.loads((tmp_path / "pgd_step_vs_torchattacks.json").read_text())
    vs_floor = json.loads((tmp_path / "pgd_step_vs_forward_backward.json").read_text())
    assert tuple(vs_floor) == RESULT_KEYS and vs_floor["ratio"] > 0 and vs_floor["target"] == 1.05
    assert (vs_peer["ratio"] is not None) == peer and vs_peer["target"] == 1.0
    assert "verification forward" in vs_floor["notes"] and vs_floor["details"]["ratios"]["honed_over_floor"]["cpu"]["n"] == 1
