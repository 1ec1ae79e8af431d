"""The report's performance section: each benchmarks/results/*.json as its measured rows, environment
and target; an unreadable file is named, an empty folder says how to fill it."""
import json

from honed.core.bench_report import flatten, performance_html, performance_markdown, read_benchmark


def write_bench(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_loop.json").write_text(json.dumps({
        "benchmark": "loop_overhead", "median_epoch_s": {"bare": 0.0125, "honed": 0.0131}, "ratio": 1.048,
        "target": 1.03, "met": False, "sizes": [1000, 5000],
        "environment": {"torch": "2.13.0", "threads": 1, "machine": "x86_64", "honed_source": "abc"}}))
    (folder / "bench_broken.json").write_text("{not json")
    (folder / "nms_speedup.json").write_text(json.dumps({  # honed.core.benchmark's shape
        "name": "nms_speedup", "ratio": 3.25, "target": 1.0, "comparison": ">=", "holds": True, "unit": "x",
        "measured_on": {"machine": "x86_64", "threads": 1, "load_average": 2.5}, "details": {"wall_ratio": 2.9}}))


def test_flatten_gives_key_paths_and_joins_number_lists():
    assert flatten({"a": {"b": 1.5, "c": [1, 2]}, "d": [{"e": True}]}) == [
        ["a.b", "1.5"], ["a.c", "1, 2"], ["d[0].e", "True"]]


def test_markdown_section_reads_every_value_from_the_files(tmp_path):
    write_bench(tmp_path / "results")
    text = "\n".join(performance_markdown(tmp_path / "results"))
    assert "### bench_loop" in text and "| median_epoch_s.honed | 0.0131 |" in text and "| ratio | 1.048 |" in text
    assert "target 1.03: NOT met" in text and "torch 2.13.0" in text and "honed_source" not in text
    assert "### bench_broken" in text and "unreadable (JSONDecodeError)" in text
    assert "ratio 3.25 x (target >= 1): holds; machine x86_64, threads 1, load_average 2.5" in text
    assert "| details.wall_ratio | 2.9 |" in text


def test_html_section_escapes_and_an_empty_folder_says_how_to_fill_it(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "bench_x.json").write_text(json.dumps({"note": "<script>alert(1)</script>"}))
    page = "\n".join(performance_html(tmp_path / "r"))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "make bench" in "\n".join(performance_markdown(tmp_path / "missing"))


def test_long_benchmarks_are_cut_with_a_count(tmp_path):
    (tmp_path / "bench_big.json").write_text(json.dumps({f"k{i}": i for i in range(100)}))
    rows = read_benchmark(tmp_path / "bench_big.json").rows
    assert len(rows) == 61 and rows[-1] == ["...", "40 more rows in bench_big.json"]


def test_the_report_has_the_performance_section(tmp_path, monkeypatch):
    from honed.core.report import write_report
    from honed.core.runner import run_experiment
    from tests.core.toy_experiment import ToyConfig, ToyExperiment

    write_bench(tmp_path / "bench")
    monkeypatch.setenv("HONED_BENCHMARKS", str(tmp_path / "bench"))
    run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", tmp_path / "runs", "cpu", progress=False)
    md, page, _ = write_report(tmp_path / "runs")
    assert "## Performance (benchmarks/results)" in md.read_text() and "<h3 class='benchmark'>bench_loop</h3>" in page.read_text()
