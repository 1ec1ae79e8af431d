"""Clearly invalid input gets exit code 2 and one line on stderr, never a traceback or a silent run,
and a refused run leaves no orphan folder behind."""
import os

import pytest

from honed.cli import main
from tests.core.toy_experiment import ToyExperiment



def check_one_line_exit_2(argv, capsys, words=""):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err


@pytest.mark.parametrize("sets, words", [
    (["offset=.nan"], "finite"), (["offset=.inf"], "finite"), (["offset=-.inf"], "finite"),
    (["seeds=[]"], "at least one seed"), (["seeds=[0,0,0]"], "distinct"), (["seeds=[-1]"], "[0, 2**63)"),
    (["seeds=[36893488147419103232]"], "2**63"), (["offset=abc"], "must be a number"), (["offset=[1,2]"], "number"),
    (["ofset=1"], "did you mean offset"), (["offset"], "key=value"), (["threads=-1"], "threads"),
    (["offset={a: 1}"], "number"), (["seeds=zero"], "integer"), (["chance=true"], "number"),
])
def test_bad_set_values(runs, toy_registered, capsys, sets, words):
    check_one_line_exit_2(["run", "99-toy", *sum((["--set", s] for s in sets), [])], capsys, words)
    assert not (runs / "99-toy").exists() or not any((runs / "99-toy").iterdir())


def test_scientific_notation_without_a_dot_is_a_number(runs, toy_registered, capsys):
    assert main(["run", "99-toy", "--preset", "smoke", "--set", "offset=1e-3", "--json"]) == 0


@pytest.mark.parametrize("argv, words", [
    (["run", "99-toy", "--device", "meta"], "not supported"), (["run", "99-toy", "--device", "mps"], "not supported"),
    (["run", "99-toy", "--device", "gpu9"], "unknown device"), (["run", "99-toy", "--seed", str(2**64 + 1)], "2**63"),
    (["run", "99-toy", "--seed", "-3"], "[0, 2**63)"), (["run", "99-toy", "--preset", "huge"], "invalid choice"),
    (["run", "nope"], "unknown experiment"), (["show", "nope"], "unknown experiment"),
    (["reproduce", "99-toy", "--set", "ofset=1"], "did you mean offset"), (["reproduce", "99-tyo"], "unknown experiment"),
    (["frobnicate"], "invalid choice"), (["run"], "required"),
])
def test_bad_arguments(runs, toy_registered, capsys, argv, words):
    check_one_line_exit_2(argv, capsys, words)


def test_config_files_that_are_not_yaml_mappings(runs, toy_registered, capsys, tmp_path):
    binary = tmp_path / "b.yaml"
    binary.write_bytes(bytes(range(256)))
    listing = tmp_path / "l.yaml"
    listing.write_text("- 1\n- 2\n")
    broken = tmp_path / "x.yaml"
    broken.write_text("offset: [1,\n")
    for path, words in ((binary, "not text"), (tmp_path, "is a directory"), (listing, "mapping"),
                        (broken, "not valid YAML"), (tmp_path / "missing.yaml", "not found")):
        check_one_line_exit_2(["run", "99-toy", "-c", str(path)], capsys, words)


def test_out_under_a_regular_file_or_a_read_only_folder(runs, toy_registered, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    check_one_line_exit_2(["run", "99-toy", "--preset", "smoke", "--out", str(blocker / "runs")], capsys)
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        check_one_line_exit_2(["run", "99-toy", "--preset", "smoke", "--out", str(locked / "runs")], capsys)


def test_a_value_refused_at_run_time_leaves_no_orphan_folder(runs, toy_registered, capsys, monkeypatch):
    from honed.core.errors import ConfigError

    def refuse(self, cfg, seed, ctx):
        raise ConfigError("offset too large for this data")

    monkeypatch.setattr(ToyExperiment, "run_seed", refuse)
    check_one_line_exit_2(["run", "99-toy", "--preset", "smoke"], capsys, "offset too large")
    assert not (runs / "99-toy" / "default").exists()
