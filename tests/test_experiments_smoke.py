"""Every registered experiment runs end to end at its smoke preset and writes a sound result."""
import json

import pytest

from honed.core.config import preset
from honed.core.experiment import load_experiments
from honed.core.runner import result_name, run_dir, run_experiment

REGISTRY = load_experiments()


@pytest.mark.parametrize("exp_id", REGISTRY.names())
def test_smoke_preset_runs_and_reports_claims(exp_id, tmp_path):
    exp = REGISTRY.get(exp_id)
    cfg = preset(exp.Config, "smoke")
    result = run_experiment(exp(), cfg, "smoke", tmp_path, "cpu", progress=False)
    assert result.claims, f"{exp_id} states no claim"
    assert any(result.is_method_arm(arm) for arm in result.arms), f"{exp_id}: no arm of the method"
    for claim in result.claims:  # smoke is a plumbing check: never evidence either way
        assert claim.verdict == "inconclusive" and "plumbing" in claim.reason, f"{exp_id}: {claim}"
    for check in result.claims + result.preconditions:
        assert "unknown precondition" not in check.reason, f"{exp_id}: {check}"
    file = run_dir(tmp_path, exp_id, cfg) / result_name(cfg)
    json.loads(file.read_text(), parse_constant=refuse_non_json)  # strict JSON: no NaN / Infinity tokens


def refuse_non_json(token: str):
    raise ValueError(f"result.json holds the non-JSON token {token}")


def test_every_experiment_module_is_registered_once():
    import pkgutil

    import honed.experiments as pkg

    modules = [m.name for m in pkgutil.iter_modules(pkg.__path__)]  # helpers live in honed.experiment_parts
    assert len(modules) == len(REGISTRY), (modules, REGISTRY.names())


def resolve(path: str):
    import importlib

    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, attr)


@pytest.mark.parametrize("exp_id", REGISTRY.names())
def test_components_import_and_name_their_paper(exp_id):
    import re

    exp = REGISTRY.get(exp_id)
    assert exp.components, f"{exp_id} declares no drop-in component"
    arxiv = re.search(r"\d{4}\.\d{4,5}", exp.paper)
    # the paper's arXiv id, or for a paper without a verified one, its first word and year
    cite = arxiv.group(0) if arxiv else re.search(r"\((\w+) et al\. (\d{4})", exp.paper).group(1)
    for path in exp.components:
        module, obj = resolve(path)
        docs = (obj.__doc__ or "") + (module.__doc__ or "")
        assert cite in docs, f"{path}: neither it nor its module cites {cite} ({exp.paper})"


def test_readme_lists_every_experiment_with_its_components():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for exp_id in REGISTRY.names():
        row = next((line for line in readme.splitlines() if line.startswith(f"| {exp_id} |")), None)
        assert row, f"README has no row for {exp_id}"
        for path in REGISTRY.get(exp_id).components:
            assert f"`{path}`" in row, f"README row of {exp_id} lacks {path}"
