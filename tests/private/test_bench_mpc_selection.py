"""benchmarks/bench_mpc_selection.py (issue 15, SelectFormer arXiv:2310.02373): the result file's shape on
a tiny real CrypTen run, the sieve arithmetic against hand-computed totals, the longer-sequence models.
No timing is asserted."""
import argparse
import json

import pytest
import torch

from honed.core.benchmark import RESULT_KEYS
from honed.experiments.e01_mpc_data_selection import MPCSelectionConfig
from honed.private.proxy_selection import TinyTransformer

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_mpc_selection")


def _row(seconds, bytes_, rounds):
    return {"seconds_per_example": seconds, "cpu_seconds_per_example": seconds / 2, "bytes_per_example": bytes_,
            "rounds_per_batch": rounds}


def test_sieve_figures_match_hand_totals(bench):
    cfg = MPCSelectionConfig()  # pool 600, budget 100, a_1 0.4 -> phases 240, 100
    rows = {"target": _row(1.0, 100.0, 50), "p1": _row(0.1, 10.0, 5), "p2": _row(0.2, 10.0, 7),
            "floor": _row(0.05, 1.0, 3)}
    figs = bench.sieve_figures(rows, _row(0.0, 0.0, 9), cfg, batch=32)
    assert figs["ratio_bytes"] == pytest.approx(600 * 100 / (600 * 10 + 240 * 10))
    assert figs["ratio_wall_s"] == pytest.approx(600 * 1.0 / (600 * 0.1 + 240 * 0.2))
    assert figs["direct_rounds"] == 19 * 50 and figs["ours_rounds"] == 19 * 5 + 8 * 7  # ceil(600/32), ceil(240/32)
    assert figs["floor_bytes"] == pytest.approx(840 * 1.0)
    assert 1.0 < figs["ratio_delay_s"] < figs["floor_bound_delay"]  # proxies cost more than no model at all


def test_sequence_transformer_shapes(bench):
    same = bench.SequenceTransformer(16, n_blocks=2)
    assert {k: v.shape for k, v in same.params.items()} == {k: v.shape for k, v in TinyTransformer(2).params.items()}
    proxy = bench.SequenceTransformer(24, n_blocks=1, emulator_width=3)
    assert proxy.params["pos"].shape == (24, 32) and proxy.params["b0_softmax_w1"].shape == (24, 3)
    tokens = torch.rand(2, 24, 4)
    assert proxy.forward_with(dict(proxy.params), tokens).shape == (2, 10)
    with pytest.raises(argparse.ArgumentTypeError, match="blocks x tokens"):
        bench.parse_shapes("4x")


def test_tiny_run_writes_result_file(bench, tmp_path, capsys):
    bench.main(["--shapes", "3x16", "--batch", "2", "--repeats", "1", "--no-margin", "--results", str(tmp_path)])
    record = json.loads((tmp_path / "mpc_selection_3x16_b2.json").read_text())
    assert tuple(record) == RESULT_KEYS and record["target"] == 10.0 and record["comparison"] == ">="
    details = record["details"]
    assert set(details["entropy"]["per_example"]) == {"target", "p1", "p2", "floor"}
    assert record["ratio"] == details["entropy"]["ratios"]["ratio_delay_s"]["median"]
    assert details["sieve"]["phase_sizes"] == [240, 100] and "margin" not in details
    assert ("entropy + top-k alone" in details["reason"]) != record["holds"]
    assert list(details)[:2] == ["reason", "median_ratios"]  # the report's first rows
    assert details["median_ratios"]["entropy"]["ratio_delay_s"] == record["ratio"]
    assert "direct / ours" in capsys.readouterr().out
