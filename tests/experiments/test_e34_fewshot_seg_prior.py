"""34-fewshot-seg-prior: no novel class reaches training (pool, episodes), test episodes are novel-only and
shared by the 1- and 5-shot scores, bad configs refused."""
from dataclasses import replace

import pytest
import torch

from honed.core.errors import ConfigError
from honed.experiments.e34_fewshot_seg_prior import (BASE, NOVEL, FewShotPriorConfig, chance_miou, episode_batch,
                                                     make_data)
from honed.vision.query_prior_fss import sample_episode


@pytest.fixture(scope="module")
def data():
    cfg = replace(FewShotPriorConfig.smoke(), n_base=40, n_test_pool=40, test_episodes=12)
    return make_data(cfg, torch.device("cpu"))


def test_training_never_sees_a_novel_class(data):
    assert set(torch.unique(data["base_y"]).tolist()) <= {0, *BASE}
    assert set(data["train_index"]) == set(BASE)
    gen = torch.Generator().manual_seed(0)
    assert all(sample_episode(data["train_index"], 1, gen)[0] in BASE for _ in range(50))
    assert data["segments"]["slic"].shape == data["base_y"].shape


def test_test_episodes_are_novel_and_one_shot_uses_the_first_support(data):
    assert all(c in NOVEL and q not in s and len(set(s)) == 5 for c, q, s in data["episodes"])
    feats = torch.randn(len(data["test_x"]), 4, 8, 8)
    one = episode_batch(feats, data["test_y"], None, data["episodes"], 1)
    five = episode_batch(feats, data["test_y"], None, data["episodes"], 5)
    assert torch.equal(one[1][:, 0], five[1][:, 0]) and torch.equal(one[3], five[3])
    assert bool((five[2].flatten(2).sum(-1) > 0).all())  # every support mask holds its class
    assert 0 < chance_miou(data) < 1


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="multiple of 4"):
        replace(FewShotPriorConfig(), size=50).validate()
    with pytest.raises(ConfigError, match="negatives"):
        replace(FewShotPriorConfig(), extractor_batch=1).validate()
