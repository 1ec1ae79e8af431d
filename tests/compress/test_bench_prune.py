"""benchmarks/bench_prune.py (issue 15) on toy models: one result file per target in honed.core.benchmark's
shape, the judged pair present among the ratios, exports that keep the outputs (BatchNorm folded: GDP's
export, arXiv:2109.02220; low-rank pairs as products: Force Regularization, arXiv:1703.09746). No timing
is asserted."""
import copy
import json
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from honed.compress.channel_surgery import find_channel_groups, remove_channels
from honed.compress.lowrank import decompose_model
from honed.core.benchmark import RESULT_KEYS
from honed.models import create_model

from tests.benchmark_scripts import load_benchmark

ARGS = SimpleNamespace(rounds=2, repeats=1, threads=1, allocator="default", quick=True)


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("bench_prune")
    module.BATCH = 4  # a tiny batch: this checks the bookkeeping, not the speed
    return module


def test_gdp_part_writes_its_target_file(bench, tmp_path):
    torch.manual_seed(0)
    dense = create_model("resnet_s", in_channels=1, num_classes=10, widths=(8, 16), blocks_per_stage=1).eval()
    x = torch.randn(3, 1, 8, 8)
    pruned = copy.deepcopy(dense)
    groups = find_channel_groups(pruned, x[:1])
    remove_channels(pruned, groups, {g.name: torch.arange(g.channels // 2) for g in groups})
    details = bench.measure_gdp({"dense": dense, "gdp": pruned.eval()}, {"dense": 1.0, "gdp": 0.5}, x, ARGS, tmp_path)
    record = json.loads((tmp_path / "prune_gdp_speedup_b64.json").read_text())
    assert tuple(record) == RESULT_KEYS and record["target"] == 1.6 and record["comparison"] == ">="
    assert record["ratio"] == details["ratios"][bench.GDP_HEADLINE]["cpu"]["median"] > 0
    assert max(details["max_logit_gap_folded"].values()) < 1e-4
    assert details["macs"]["gdp"] < details["macs"]["dense"]
    assert set(details["profile"]["blocks"]) >= {"stem", "stages.0", "stages.1", "head"}


def test_force_part_writes_its_target_file(bench, tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 8, 3, padding=1), relu=nn.ReLU(),
                                      conv2=nn.Conv2d(8, 8, 3, padding=1), flatten=nn.Flatten(),
                                      fc1=nn.Linear(8 * 16, 10))).eval()
    lra, _ = decompose_model(dense, layers=["conv2", "fc1"], ranks={"conv2": 2, "fc1": 3}, only_if_cheaper=False)
    x = torch.randn(3, 1, 4, 4)
    details = bench.measure_force({"dense": dense, "force_lra": lra.eval()}, {"rank_conv2": 2.0},
                                  lambda _m: 0.5, x, ARGS, tmp_path)
    record = json.loads((tmp_path / "prune_force_speedup_b64.json").read_text())
    assert tuple(record) == RESULT_KEYS and record["target"] == 2.0
    assert record["ratio"] == details["ratios"][bench.FORCE_HEADLINE]["cpu"]["median"] > 0
    assert [f["name"] for f in details["forms"]] == ["conv2", "fc1"] and details["max_logit_gap_fast"] < 1e-4
    assert details["macs_implied_ceiling"] == pytest.approx(details["macs"]["dense"] / details["macs"]["force_lra"])


def test_why_short_names_the_blocks_whose_time_lags_their_macs(bench):
    block = f"macs_ratio_block{bench.CHANNEL_BLOCK}"
    profile = {"macs_implied": 2.0, f"macs_implied_block{bench.CHANNEL_BLOCK}": 1.2,
               "blocks": {"stages.1": {"ms": [3.0, 2.7], "time_ratio": 0.9, "macs_ratio": 0.5, block: 1.0},
                          "stages.0": {"ms": [3.0, 1.2], "time_ratio": 0.4, "macs_ratio": 0.3, block: 0.5},
                          bench.TOTAL: {"ms": [6.0, 3.9], "time_ratio": 0.65, "macs_ratio": None, block: None}}}
    text = bench.why_short(profile, 1.4, 1.6)
    assert "2.00x" in text and "1.20x" in text and "stages.1" in text and "stages.0" not in text
