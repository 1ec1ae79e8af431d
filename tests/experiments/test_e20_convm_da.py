"""20-convm-da (Compact DNN DA, arXiv:1703.04071): the target rendering is chosen on target-validation
accuracy, once per run."""
from dataclasses import dataclass
from pathlib import Path

import pytest

import honed.experiments.e20_convm_da as e20
from honed.core.errors import ConfigError
from honed.core.config import validate_config


@dataclass
class FakeContext:
    dir: Path
    seed: int
    device: str = "cpu"

    def cached(self, key, compute):
        return compute()


def fake_selection(monkeypatch, val_acc: dict[str, float]) -> list[str]:
    trained = []
    monkeypatch.setattr(e20, "build_domains", lambda cfg, rendering, device: rendering)

    def run_arm(cfg, domains, arm, seed, device):
        trained.append((domains, arm, seed))
        return {"target_val_acc": val_acc[domains]}

    monkeypatch.setattr(e20, "run_arm", run_arm)
    return trained


def test_auto_picks_the_hardest_rendering_that_clears_the_validation_bar(monkeypatch, tmp_path):
    bar = e20.RENDERING_BAR
    trained = fake_selection(monkeypatch, {"card": bar - 0.05, "contrast": bar + 0.01, "mild": bar + 0.5})
    cfg = e20.ConvMDAConfig(seeds=(3, 4))
    name, tried, _ = e20.choose_rendering(cfg, FakeContext(tmp_path / "seed_3", 3))
    assert name == "contrast"
    assert tried == {"card": bar - 0.05, "contrast": bar + 0.01}
    assert trained == [("card", "convm/source_only", 3), ("contrast", "convm/source_only", 3)]


def test_auto_falls_back_to_the_easiest_and_a_fixed_rendering_is_kept(monkeypatch, tmp_path):
    fake_selection(monkeypatch, {"card": 0.1, "contrast": 0.1, "mild": 0.1})
    ctx = FakeContext(tmp_path / "seed_0", 0)
    assert e20.choose_rendering(e20.ConvMDAConfig(seeds=(0,)), ctx)[0] == "mild"
    assert e20.choose_rendering(e20.ConvMDAConfig(seeds=(0,), target_rendering="card"), ctx)[:2] == (
        "card", {"card": 0.1})


def test_later_seeds_read_the_first_seeds_selection(monkeypatch, tmp_path):
    from honed.core.runner import RunContext

    ctx = RunContext(tmp_path / "seed_5", "cpu", 5)
    first = e20.first_seed_context(ctx, 2)
    assert first.dir == tmp_path / "seed_2" and first.dir.is_dir() and first.seed == 5
    same = RunContext(tmp_path / "seed_2", "cpu", 2)
    assert e20.first_seed_context(same, 2) is same


def test_unknown_rendering_is_refused():
    with pytest.raises(ConfigError):
        validate_config(e20.ConvMDAConfig(target_rendering="bright"))
