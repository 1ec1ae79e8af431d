"""Run folders that survive: locks, seed sets and devices that never overwrite each other, stray temp
files, lost plots, odd result files, permissions, runtime after a resume, and a report that is safe HTML."""
import json
import os
import threading
import time

import pytest
from filelock import FileLock

from honed.core.config import override
from honed.core.report import find_runs, write_report
from honed.core.runner import RunContext, compute_seed, run_dir, run_experiment
from tests.core.toy_experiment import ToyConfig, ToyExperiment


def test_a_second_identical_run_waits_for_the_first_and_loads_its_result(runs):
    folder = run_dir(runs, "99-toy", ToyConfig())
    folder.parent.mkdir(parents=True)
    lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
    lock.acquire()
    lines, results = [], []
    worker = threading.Thread(target=lambda: results.append(
        run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu", log=lines.append)))
    worker.start()
    for _ in range(100):
        if lines:
            break
        time.sleep(0.05)
    assert lines and "waiting" in lines[0] and not results
    lock.release()
    worker.join(timeout=30)
    assert results and results[0].status == "2 hold, 1 fail, 0 inconclusive"


def test_another_seed_set_never_overwrites_the_default_result(runs):
    full = run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    one = run_experiment(ToyExperiment(), override(ToyConfig(), {"seeds": [1]}), "small", runs, "cpu")
    folder = runs / "99-toy" / "default"
    assert json.loads((folder / "result.json").read_text())["seeds"] == [0, 1, 2]
    assert json.loads((folder / "result_seeds_1.json").read_text())["seeds"] == [1]
    assert full.seeds == [0, 1, 2] and one.seeds == [1]
    again = run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    assert again.seeds == [0, 1, 2]


def test_the_device_is_part_of_the_run_identity(runs):
    assert run_dir(runs, "99-toy", ToyConfig(), "cpu").name == "default"
    assert run_dir(runs, "99-toy", ToyConfig(), "cuda").name == "default-cuda"


def test_stray_temp_files_are_swept_and_a_lost_plot_is_redrawn(runs):
    run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    folder = runs / "99-toy" / "default"
    stray = folder / "seed_0" / ".part_ours.json.abc.tmp"
    stray.write_text("half")
    (folder / "plot.png").unlink()
    run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    assert not stray.exists() and (folder / "plot.png").stat().st_size > 1000


def test_files_get_the_usual_permissions_not_private_ones(runs):
    old = os.umask(0o022)
    try:
        import importlib

        import honed.core.atomic as atomic

        importlib.reload(atomic)
        path = atomic.atomic_write_text(runs / "x.txt", "x")
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    finally:
        os.umask(old)


def test_runtime_counts_work_restored_from_an_earlier_process(runs, tmp_path):
    seed_dir = tmp_path / "seed_0"
    seed_dir.mkdir()
    (seed_dir / "part_ours.json").write_text(json.dumps({"acc": 1.0, "correct": [1.0]}))
    from honed.core.store import write_checked_json

    write_checked_json(seed_dir / "part_ours.json", {"acc": 1.0, "correct": [1.0]}, runtime_s=42.0)
    out = compute_seed(ToyExperiment(), ToyConfig.smoke(), 0, seed_dir, "cpu", False, None)
    assert out.runtime_s >= 42.0


@pytest.mark.parametrize("content", ["", "{", "{}", "[]", "null", '{"id": "99-toy"}',
                                     '{"id": "99-toy", "claims": [{"name": "x"}]}'])
def test_odd_result_files_are_listed_as_such_not_crashing(runs, content):
    run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    (runs / "99-toy" / "default" / "result.json").write_text(content)
    entry = find_runs(runs)["99-toy"]
    assert entry.result is None and "rerun" in entry.problem
    md, _, count = write_report(runs)
    assert count == 0 and "No finished result" in md.read_text()


def test_interrupted_runs_are_shown_and_an_empty_folder_says_so(runs):
    md, _, count = write_report(runs)
    assert count == 0 and "No runs found" in md.read_text()
    ToyExperiment.fail_on_seed = 1
    try:
        with pytest.raises(RuntimeError):
            run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    finally:
        ToyExperiment.fail_on_seed = -1
    md, _, _ = write_report(runs)
    assert "interrupted (1 seed(s) finished)" in md.read_text()


def test_report_html_never_puts_result_text_into_attributes(runs):
    run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    file = runs / "99-toy" / "default" / "result.json"
    data = json.loads(file.read_text())
    data["claims"][0]["paper"] = "it's \"quoted\"' onmouseover='alert(1)"
    data["claims"][0]["name"] = "<script>alert(1)</script>"
    file.write_text(json.dumps(data))
    page = write_report(runs)[1].read_text()
    assert "<script>alert" not in page and "onmouseover='alert" not in page
    assert "&lt;script&gt;" in page
