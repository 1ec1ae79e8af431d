import json

import pytest

from honed.core.bench_report import bench_dir
from honed.core.benchmark import (RESULT_KEYS, holds, interleaved_times, paired_ratio, results_folder, spread,
                                  write_result)


def test_interleaved_times_alternates_order_and_counts_rounds():
    order = []
    times = interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, warmup=0)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert set(times["a"]) == {"wall", "cpu"} and len(times["a"]["wall"]) == 3


def test_paired_ratio_is_per_round():
    r = paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])  # per-round ratios 2, 4, 3
    assert r["median"] == 3.0 and r["min"] == 2.0 and r["max"] == 4.0 and r["n"] == 3
    assert spread([5.0])["median"] == 5.0


def test_holds_by_comparison():
    assert holds(1.0, 1.03, "<=") and not holds(1.04, 1.03, "<=")
    assert holds(0.96, 0.95, ">=") and not holds(None, 1.0, ">=")


def test_write_result_stable_shape(tmp_path, capsys):
    rec = write_result("demo", 1.5, 2.0, ">=", "x", "a note", {"k": [1, 2]}, threads=1, folder=tmp_path)
    on_disk = json.loads((tmp_path / "demo.json").read_text())
    assert tuple(on_disk) == RESULT_KEYS and on_disk["holds"] is False and rec["name"] == "demo"
    assert "does NOT hold" in capsys.readouterr().out
    with pytest.raises(ValueError):
        write_result("bad", 1.0, 1.0, "<", "x", "", folder=tmp_path)


def test_results_folder_follows_honed_benchmarks_so_the_report_reads_what_the_scripts_wrote(tmp_path, monkeypatch):
    monkeypatch.delenv("HONED_BENCHMARKS", raising=False)
    assert results_folder(tmp_path / "default") == tmp_path / "default"
    monkeypatch.setenv("HONED_BENCHMARKS", str(tmp_path / "elsewhere"))
    assert results_folder(tmp_path / "default") == tmp_path / "elsewhere" == bench_dir()


def test_a_target_that_does_not_apply_gets_no_verdict_in_the_file_summary_or_report(tmp_path, capsys):
    record = write_result("x", 1.7, 1.0, "<=", "x", "link not the bottleneck", folder=tmp_path, applies=False)
    assert record["holds"] is None and record["applies"] is False
    assert "target does not apply here" in capsys.readouterr().out
    from honed.core.bench_report import performance_markdown
    assert any("target does not apply here" in line for line in performance_markdown(tmp_path))
