import json
import subprocess
import sys

import pytest

from honed.cli import main


def test_run_json_prints_the_result_and_list_shows_status(runs, toy_registered, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells to the terminal width
    assert main(["run", "99-toy", "--preset", "smoke", "--json", "--set", "offset=3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == "99-toy" and data["arms"]["ours"]["acc"]["mean"] == 3.0
    assert data["config"]["offset"] == 3.0 and data["claims"][0]["measured"] == 3.0
    assert data["claims"][0]["verdict"] == "inconclusive"  # smoke: a plumbing check, never evidence
    assert main(["list"]) == 0
    assert "0 hold, 0 fail, 3 inconclusive (smoke)" in capsys.readouterr().out


def test_seed_yaml_and_report(runs, toy_registered, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("offset: 0.25\n")
    assert main(["run", "99-toy", "-c", str(cfg), "--seed", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["seeds"] == [4] and data["arms"]["ours"]["acc"]["mean"] == 4.25
    assert main(["report"]) == 0
    assert "99-toy" in (runs / "report.md").read_text()


@pytest.mark.parametrize("argv, words", [
    (["run", "99-toy", "--set", "ofset=1"], "did you mean offset"),
    (["run", "99-toy", "--set", "offset=abc"], "must be a number"),
    (["run", "99-tyo"], "unknown experiment"),
    (["run", "99-toy", "--device", "cuda"], "no CUDA"),
    (["show", "nope"], "unknown experiment"),
])
def test_bad_input_is_one_line_and_exit_2(runs, toy_registered, capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_entry_point_usage_error_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "honed.cli", "run"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "required: id" in proc.stderr


def test_show_lists_the_components_to_import(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["show", "28-gdp"]) == 0
    assert "component: honed.compress.gdp:GDP" in capsys.readouterr().out
