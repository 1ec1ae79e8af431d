"""benchmarks/bench_nms.py writes its result in honed.core.benchmark's shape (tiny sizes, one round; no
timing is asserted)."""
import json

from honed.core.benchmark import RESULT_KEYS
from honed.vision.nms import greedy_nms
from tests.benchmark_scripts import load_benchmark


def test_nms_benchmark_writes_the_greedy_over_psrr_ratio(tmp_path, capsys):
    bench = load_benchmark("bench_nms")
    bench.RESULTS = tmp_path
    assert bench.main(["--sizes", "60", "120", "--rounds", "1"]) == 0
    record = json.loads((tmp_path / "nms_psrr_speedup_vs_python_greedy.json").read_text())
    assert set(RESULT_KEYS) <= set(record) and record["comparison"] == ">=" and record["ratio"] > 0
    assert set(record["details"]["median_cpu_s"]) == {"greedy", "maxpool", "psrr_no_shift", "psrr_no_rr", "psrr"}
    assert "torchvision" in record["details"]["peer"]
    assert "log-log slope" in capsys.readouterr().out


def test_without_torchvision_the_result_says_how_to_measure_it(tmp_path, capsys, monkeypatch):
    bench = load_benchmark("bench_nms")
    bench.RESULTS = tmp_path
    monkeypatch.setattr(bench, "compiled_nms", lambda: (None, "ImportError: no torchvision"))
    assert bench.main(["--sizes", "60", "--rounds", "1"]) == 0
    record = json.loads((tmp_path / "nms_psrr_speedup_vs_python_greedy.json").read_text())
    assert "make bench-torchvision" in record["details"]["peer"]
    assert not (tmp_path / "nms_psrr_speedup_vs_torchvision.json").exists()
    assert "not measured: ImportError" in capsys.readouterr().out


def test_a_compiled_peer_gets_its_own_result_and_the_keep_oracle(tmp_path, monkeypatch):
    """honed's GreedyNMS stands in for torchvision.ops.nms (same semantics): the peer branch writes the
    second result with per-size ratios and the kept-index comparison."""
    bench = load_benchmark("bench_nms")
    bench.RESULTS = tmp_path
    monkeypatch.setattr(bench, "compiled_nms", lambda: (greedy_nms, "0.0-stand-in"))
    assert bench.main(["--sizes", "60", "120", "--rounds", "1"]) == 0
    record = json.loads((tmp_path / "nms_psrr_speedup_vs_torchvision.json").read_text())
    assert record["details"]["torchvision"] == "0.0-stand-in" and record["ratio"] > 0
    assert record["details"]["greedy_keeps_equal_torchvision"] == {"60": True, "120": True}
    assert set(record["details"]["speedup_torchvision_over_psrr_by_size"]) == {"60", "120"}
    assert "torchvision" in record["details"]["median_cpu_s"]


def test_a_peer_that_keeps_other_boxes_fails_the_script(tmp_path, monkeypatch):
    bench = load_benchmark("bench_nms")
    bench.RESULTS = tmp_path
    monkeypatch.setattr(bench, "compiled_nms", lambda: (lambda b, s, t: greedy_nms(b, s, t)[:1], "bad"))
    assert bench.main(["--sizes", "60", "--rounds", "1"]) == 1
