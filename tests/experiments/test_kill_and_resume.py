"""Experiments killed in the middle of training and resumed end bit for bit where an uninterrupted run
ends: 16 (per-arm cached parts), 17 (with its per-batch arm, whose callback owns a generator) and 24
(augmentation generators), each at a tiny size."""
import json
import re

import pytest

import honed.core.loop as loop
from honed.core.config import override, preset
from honed.core.experiment import load_experiments
from honed.core.runner import run_dir, run_experiment

REGISTRY = load_experiments()
TINY = {
    "16-smoothout": {"epochs": 2},
    "17-mat": {"per_batch_arm": True, "epochs": 2},
    "24-augmax": {"epochs": 2},
}


TIMING = re.compile(r"(_s$|_s_|seconds|latency|speedup|time|_ms$)")


def without_timings(value):
    """A stored output without wall-clock measurements (the only values allowed to differ)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMING.search(str(k))}
    return value


def seed_outputs(folder):
    """Every seed's stored output, timings left out."""
    outputs = {}
    for file in sorted(folder.glob("seed_*/seed_result.json")):
        data = json.loads(file.read_text())
        outputs[file.parent.name] = without_timings(data.get("value", data))
    return outputs


class Killed(Exception):
    pass


@pytest.mark.parametrize("exp_id", sorted(TINY))
def test_kill_and_resume_matches_an_uninterrupted_run(exp_id, tmp_path, monkeypatch):
    exp = REGISTRY.get(exp_id)
    cfg = override(preset(exp.Config, "smoke"), TINY[exp_id])
    whole = run_experiment(exp(), cfg, "smoke", tmp_path / "whole", "cpu", progress=False)
    steps = {"n": 0}
    real_step = loop.train_step

    def counting_step(*args, **kwargs):
        steps["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", counting_step)
    run_experiment(exp(), cfg, "smoke", tmp_path / "count", "cpu", progress=False)
    total, steps["n"] = steps["n"], 0
    assert total > 4, f"{exp_id}: too few training steps to kill in the middle"

    def killing_step(*args, **kwargs):
        steps["n"] += 1
        if steps["n"] == int(total * 0.6):
            raise Killed
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", killing_step)
    with pytest.raises(Killed):
        run_experiment(exp(), cfg, "smoke", tmp_path / "killed", "cpu", progress=False)
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = run_experiment(exp(), cfg, "smoke", tmp_path / "killed", "cpu", progress=False)
    folder = run_dir(tmp_path / "whole", exp_id, cfg)
    again = run_dir(tmp_path / "killed", exp_id, cfg)
    assert seed_outputs(again) == seed_outputs(folder)
    assert without_timings(resumed.arms) == without_timings(whole.arms)
