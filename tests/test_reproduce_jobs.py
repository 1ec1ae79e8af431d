"""`honed reproduce --jobs 2` gives the same result files as a sequential run (timings aside), and a
crash in one job does not stop the others."""
import json
import re

from honed.cli import main

IDS = ["22-hyperlista", "35-psrr-maxpool-nms"]
TIMING = re.compile(r"(_s$|_s_|seconds|latency|speed|faster|time|^ms_|_ms$|^environment$|^runtime_s$|^non_finite$|^notes$)")


def stable(value):
    """A result without wall-clock measurements, the claims and verdicts that rest on them included."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [stable(v) for v in value if not (isinstance(v, dict) and TIMING.search(str(v.get("name", ""))
                                                                                     + str(v.get("metric", ""))))]
    return value


def results(root):
    found = {}
    for file in sorted(root.glob("*/*/result*.json")):
        data = stable(json.loads(file.read_text()))
        data.pop("verdicts", None), data.pop("status", None)
        found[file.parent.parent.name] = data
    return found


def test_parallel_reproduce_matches_the_sequential_one(tmp_path, capsys):
    assert main(["reproduce", *IDS, "--preset", "smoke", "--jobs", "1", "--out", str(tmp_path / "seq")]) == 0
    assert main(["reproduce", *IDS, "--preset", "smoke", "--jobs", "2", "--out", str(tmp_path / "par")]) == 0
    out = capsys.readouterr().out
    assert "2 at a time" in out and "Over 2 experiment(s)" in out
    seq, par = results(tmp_path / "seq"), results(tmp_path / "par")
    assert set(seq) == set(IDS) and seq == par


def test_a_crashing_job_does_not_stop_the_others(tmp_path, capsys):
    from honed.core.config import preset
    from honed.core.experiment import load_experiments
    from honed.core.runner import run_dir

    exp = load_experiments().get("22-hyperlista")
    bad = run_dir(tmp_path / "par", exp.id, preset(exp.Config, "smoke"))
    bad.mkdir(parents=True)
    (bad / "config.json").write_text('{"id": "22-hyperlista", "config": {"other": 1}}')  # a foreign folder
    code = main(["reproduce", *IDS, "--preset", "smoke", "--jobs", "2", "--out", str(tmp_path / "par")])
    captured = capsys.readouterr()
    assert code == 1 and "22-hyperlista crashed" in captured.out and "1 experiment(s) crashed" in captured.err
    assert list((tmp_path / "par" / "35-psrr-maxpool-nms").glob("*/result*.json"))


def test_reproduce_records_its_wall_time_for_the_report(tmp_path, capsys):
    from honed.core.report import reproduce_line

    assert main(["reproduce", "35-psrr-maxpool-nms", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    line = reproduce_line(tmp_path)
    assert "1 experiment(s) at preset smoke" in line and "min wall time" in line
    assert line in (tmp_path / "report.md").read_text()
