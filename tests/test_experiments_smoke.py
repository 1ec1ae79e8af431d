"""Every registered experiment runs end to end at its smoke preset and writes a sound result."""
import math

import pytest

from honed.core.config import preset
from honed.core.experiment import load_experiments
from honed.core.runner import run_experiment

REGISTRY = load_experiments()


@pytest.mark.parametrize("exp_id", REGISTRY.names())
def test_smoke_preset_runs_and_reports_claims(exp_id, tmp_path):
    exp = REGISTRY.get(exp_id)
    cfg = preset(exp.Config, "smoke")
    result = run_experiment(exp(), cfg, "smoke", tmp_path, "cpu", progress=False)
    assert result.claims, f"{exp_id} states no claim"
    assert any(result.is_method_arm(arm) for arm in result.arms), f"{exp_id}: no arm of the method"
    for claim in result.claims:
        if claim.measured is None or math.isnan(claim.measured):
            assert not claim.passed, f"{exp_id}: an unmeasured claim passed: {claim}"
    assert (tmp_path / exp_id / "default").exists() or any((tmp_path / exp_id).iterdir())
    assert (next((tmp_path / exp_id).iterdir()) / "result.json").exists()


def test_every_experiment_module_is_registered_once():
    import pkgutil

    import honed.experiments as pkg

    modules = [m.name for m in pkgutil.iter_modules(pkg.__path__)]
    assert len(modules) == len(REGISTRY), (modules, REGISTRY.names())
