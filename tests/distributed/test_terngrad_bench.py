"""benchmarks/bench_terngrad.py (issue 15): the traffic pattern and the cost model on hand values, the
result files' shape on synthetic rounds, and one tiny real run whose counted bytes match the wire
formats. No timing is asserted."""
import json
import math

import pytest

from honed.core.benchmark import RESULT_KEYS

from tests.benchmark_scripts import load_benchmark



@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("bench_terngrad")
    return module


def test_ring_traffic_and_modelled_step_oracles(bench):
    assert bench._wire_bytes("all_reduce", 100, world=2) == 100  # 2 (W-1)/W M
    assert bench._wire_bytes("all_reduce", 100, world=4) == 150
    assert bench._wire_bytes("all_gather", 100, world=4) == 300  # (W-1) m
    # 2 ms of CPU + 1 MB at 1 Gbit/s (8 ms) = 10 ms
    assert math.isclose(bench.modelled({"cpu": 0.002, "wire_bytes": 1e6}, 1.0), 0.010)


def _measure(cpu_ms: float, wire: float) -> dict:
    return {"wall": 2 * cpu_ms / 1e3, "cpu": cpu_ms / 1e3, "wire_bytes": wire, "handed_bytes": wire,
            "collectives": 1.0, "codec_cpu": {"shared_scalers": 1e-4, "encode": 2e-4, "decode": 1e-4}}


def test_report_writes_one_result_per_link_with_the_worst_peer_and_the_reason(bench, tmp_path, capsys):
    # fp32: 1 ms CPU + 1 MB (8 ms at 1 Gbit/s: link-bound); TernGrad 3 ms CPU + 0.06 MB; fp16 1 ms + 0.5 MB
    arms = {"local": _measure(0.5, 0), "fp32": _measure(1.0, 1e6), "fp16": _measure(1.0, 5e5),
            "powersgd": _measure(1.5, 1e4), "terngrad": _measure(3.0, 6e4)}
    records = bench.report([arms, arms, arms], 2, (4, 4), tmp_path, 1e-4)
    one, ten = (json.loads((tmp_path / f"terngrad_step_{g}gbit_h4x4.json").read_text()) for g in ("1", "10"))
    assert tuple(one) == RESULT_KEYS and [r["name"] for r in records] == ["terngrad_step_1gbit_h4x4", "terngrad_step_10gbit_h4x4"]
    # at 1 Gbit/s: terngrad 3.48 ms, fp32 9 ms, fp16 5 ms, powersgd 1.58 ms -> worst peer powersgd
    assert math.isclose(one["ratio"], 3.48 / 1.58, rel_tol=1e-9) and not one["holds"]
    assert one["details"]["links"]["1"]["worst_peer"] == "powersgd" and one["details"]["target_applies"]
    assert not ten["details"]["target_applies"]  # fp32's 0.8 ms of wire < its 1 ms CPU at 10 Gbit/s
    assert ten["applies"] is False and ten["holds"] is None and one["applies"] is True
    assert "MODELLED" in one["notes"]
    out = capsys.readouterr().out
    assert "measured reason vs powersgd at 1 Gbit/s" in out and "measured reason vs fp16 at 1 Gbit/s" not in out


@pytest.mark.slow
def test_a_tiny_real_run_counts_the_bytes_of_each_wire_format(bench):
    import torch._dynamo  # noqa: F401  (DDP imports it lazily: load once so forked workers share it)

    from honed.distributed.launch import run_workers

    hidden = (8,)
    per_rank = run_workers(bench.bench_worker, 2, (1, 1, 3, 0, hidden), start_method="fork", timeout_s=120)
    rounds = bench._slower_worker(per_rank)
    sizes = [(8, 64), (8,), (10, 8), (10,)]
    numel = sum(math.prod(s) for s in sizes)
    measured = rounds[0]
    assert measured["fp32"]["wire_bytes"] == 4 * numel and measured["fp16"]["wire_bytes"] == 2 * numel
    # packed codes of every tensor (ceil(n/4)) through the all-gather + 4 tensors' fp32 scalers (W = 2)
    assert measured["terngrad"]["wire_bytes"] == math.ceil(numel / 4) + 4 * len(sizes)
    assert measured["terngrad"]["collectives"] == 2 and measured["local"]["wire_bytes"] == 0
