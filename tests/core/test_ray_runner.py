"""`honed reproduce --ray`: on a local Ray instance the test starts (2 CPUs), two experiments at smoke
give the local runner's results; a task whose worker is killed mid-seed is retried and resumes from the
part it had finished; without Ray installed the option is refused in one line."""
import os
import signal
import sys
from dataclasses import replace

import pytest

from honed.cli import main
from honed.core.experiment import SeedOutput
from tests.core.toy_experiment import ToyConfig, ToyExperiment
from tests.test_reproduce_jobs import IDS, results

RAY_MISSING = "Ray is not installed (extra cluster: `make install` adds it)"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    from ray import cloudpickle

    for module in (sys.modules[__name__], sys.modules[ToyExperiment.__module__]):
        cloudpickle.register_pickle_by_value(module)  # the workers need not import the tests package
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_ray_reproduce_matches_the_local_runner(local_ray, tmp_path, capsys):
    assert main(["reproduce", *IDS, "--preset", "smoke", "--jobs", "1", "--out", str(tmp_path / "local")]) == 0
    assert main(["reproduce", *IDS, "--preset", "smoke", "--ray", "auto", "--out", str(tmp_path / "ray")]) == 0
    out = capsys.readouterr().out
    assert "on Ray (auto), one task per seed" in out and "Over 2 experiment(s)" in out
    local, on_ray = results(tmp_path / "local"), results(tmp_path / "ray")
    assert set(local) == set(IDS) and local == on_ray
    assert (tmp_path / "ray" / "report.html").exists()


def note(folder, what):
    with open(folder / "computed.log", "a") as fh:
        fh.write(what + "\n")


class KilledOnce(ToyExperiment):
    """The toy experiment in two cached parts; the first time a seed reaches the second part, its worker
    process is killed (SIGKILL), as an out-of-memory kill or a lost machine would end it."""

    id = "98-killed-once"

    def run_seed(self, cfg, seed, ctx):
        ours = ctx.cached("ours", lambda: note(ctx.dir, "ours") or {"acc": seed + cfg.offset,
                                                                    "correct": [1.0] * 9 + [0.0]})
        if not (ctx.dir / "killed").exists():
            (ctx.dir / "killed").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        base = ctx.cached("base", lambda: note(ctx.dir, "base") or {"acc": float(seed),
                                                                    "correct": [1.0] * 5 + [0.0] * 5})
        return SeedOutput(arms={"ours": ours, "base": base}, extra={"n": seed})


def test_a_killed_task_is_retried_and_resumes_from_its_finished_parts(local_ray, tmp_path):
    from honed.core.ray_runner import run_on_ray
    from honed.core.runner import run_dir

    cfg = replace(ToyConfig(), seeds=(0, 1))
    lines, finished = [], {}
    run_on_ray("auto", {KilledOnce.id: (KilledOnce, cfg)}, "small", tmp_path, "cpu", False,
               say=lines.append, done=lambda i, data, err: finished.update({i: (data, err)}))
    data, error = finished[KilledOnce.id]
    assert error == "" and data["arms"]["ours"]["acc"]["values"] == [1.0, 2.0]
    folder = run_dir(tmp_path, KilledOnce.id, cfg)
    for seed in (0, 1):
        assert (folder / f"seed_{seed}" / "computed.log").read_text() == "ours\nbase\n"  # ours not recomputed
        starts = [line for line in lines if f"seed {seed} on " in line]
        killed_pid = (folder / f"seed_{seed}" / "killed").read_text()
        assert len(starts) == 2 and f"(pid {killed_pid})" in starts[0] and f"(pid {killed_pid})" not in starts[1]
    assert (folder / "result_seeds_0-1.json").exists()


def test_an_experiment_that_raises_is_reported_and_not_retried(local_ray, tmp_path):
    from honed.core.ray_runner import run_on_ray

    class Raises(ToyExperiment):
        id = "97-raises"

        def run_seed(self, cfg, seed, ctx):
            raise RuntimeError("a bug in the experiment")

    finished = {}
    run_on_ray("auto", {Raises.id: (Raises, ToyConfig.smoke())}, "smoke", tmp_path, "cpu", False,
               say=lambda line: None, done=lambda i, data, err: finished.update({i: (data, err)}))
    assert finished == {Raises.id: (None, "seed 0: RuntimeError: a bug in the experiment")}


def test_without_ray_the_option_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    code = main(["reproduce", "35-psrr-maxpool-nms", "--preset", "smoke", "--ray", "auto", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install 'honed[cluster]'" in err
