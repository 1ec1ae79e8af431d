"""benchmarks/bench_nms.py writes its result in honed.core.benchmark's shape (tiny sizes, one round; no
timing is asserted)."""
import json

from honed.core.benchmark import RESULT_KEYS
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
