"""39-instance-search (DASR, arXiv:2002.00185): the descriptor stage is chosen on validation scenes, among
the configured candidates only."""
from types import SimpleNamespace

import pytest
import torch

import honed.experiments.e39_instance_search as e39
from honed.core.config import validate_config
from honed.core.errors import ConfigError


def fake_validation(monkeypatch, ap_by_stage: dict[int, float]) -> list[int]:
    searched, scene_seeds = [], []

    def scenes(instances, count, seed, size):
        scene_seeds.append(seed)
        return SimpleNamespace(boxes=[torch.zeros(1, 4)])

    def search(model, stage, boxes, scenes, queries, relevant):
        searched.append(stage)
        return [ap_by_stage[stage]] * len(queries)

    monkeypatch.setattr(e39, "make_instance_scenes", scenes)
    monkeypatch.setattr(e39, "search_queries", lambda instances, scenes, count, size: (torch.zeros(2, 3), None))
    monkeypatch.setattr(e39, "search", search)
    return searched, scene_seeds


def test_auto_stage_is_the_best_validation_candidate_on_unseen_scenes(monkeypatch):
    searched, scene_seeds = fake_validation(monkeypatch, {0: 90.0, 1: 80.0, 2: 70.0, 3: 20.0, 4: 30.0})
    stage, val = e39.choose_descriptor_stage(None, [], e39.InstanceSearchConfig(), seed=7)
    assert (stage, val) == (4, {3: 20.0, 4: 30.0})  # stages 0-2 score higher but are not candidates
    assert searched == [3, 4] and scene_seeds == [30_007]  # never the test database's 10_000 + seed
    wide = e39.InstanceSearchConfig(descriptor_candidates=(0, 1, 2, 3, 4))
    assert e39.choose_descriptor_stage(None, [], wide, seed=7)[0] == 0


def test_fixed_stage_skips_validation(monkeypatch):
    searched, _ = fake_validation(monkeypatch, {})
    assert e39.choose_descriptor_stage(None, [], e39.InstanceSearchConfig(descriptor_stage=2), 0) == (2, {})
    assert searched == []


@pytest.mark.parametrize("candidates", [(), (3, 5)])
def test_bad_candidates_are_refused(candidates):
    with pytest.raises(ConfigError):
        validate_config(e39.InstanceSearchConfig(descriptor_candidates=candidates))
