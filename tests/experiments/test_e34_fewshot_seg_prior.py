"""34-fewshot-seg-prior: no novel class reaches training (pool, episodes), test episodes are novel-only and
shared by the 1- and 5-shot scores, bad configs refused."""
from dataclasses import replace

import pytest
import torch

from honed.core.errors import ConfigError
from honed.core.experiment import Result
from honed.experiments.e34_fewshot_seg_prior import (ARMS, BASE, NOVEL, SHOTS, TRAINED_ARMS, FewShotPriorConfig,
                                                     FewShotPriorExperiment, chance_miou, episode_batch,
                                                     fixed_batch_loss, make_data)
from honed.vision.prior_extractor import PriorExtractor
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


def test_fixed_batch_loss_is_repeatable_and_leaves_the_extractor_alone(data):
    cfg = replace(FewShotPriorConfig.smoke(), n_base=40)
    net = PriorExtractor(width=cfg.extractor_width, dim=cfg.extractor_dim)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    first = fixed_batch_loss(net, cfg, data, "full", seed=0)
    assert first == fixed_batch_loss(net, cfg, data, "full", seed=0)  # the same views every call
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN running stats untouched


def test_an_extractor_that_did_not_train_makes_its_claims_inconclusive():
    """Every claim on a trained arm requires '<arm> extractor trained'; with the fixed-batch loss unchanged by
    training, that precondition fails."""
    exp = FewShotPriorExperiment()
    cfg = FewShotPriorConfig.smoke()
    trained = [p for p in exp.preconditions(cfg, fake_result(before=2.0, after=2.0)) if "extractor trained" in p.name]
    assert {p.name for p in trained} == {f"{a} extractor trained" for a in TRAINED_ARMS}
    assert all(p.verdict == "fails" for p in trained)
    assert all(p.verdict == "holds" for p in exp.preconditions(cfg, fake_result(before=2.0, after=1.5))
               if "extractor trained" in p.name)
    for claim in exp.claims(cfg, fake_result(before=2.0, after=2.0)):
        assert any(r.endswith("extractor trained") for r in claim.requires)


def fake_result(before: float, after: float) -> Result:
    """One seed: every arm at mIoU 0.5 (chance 0.1), trained arms with the given fixed-batch losses."""
    def value(v: float) -> dict:
        return {"values": [v], "mean": v}
    arms = {arm: {f"{part}{shots}_c{c}": value(0.5 if part == "inter" else 1.0)
                  for part in ("inter", "union") for shots in SHOTS for c in NOVEL} for arm in ARMS}
    for arm in TRAINED_ARMS:
        arms[arm] |= {"extractor_fixed_batch_before": value(before), "extractor_fixed_batch_after": value(after)}
    return Result(id="34-fewshot-seg-prior", title="t", family="vision", preset="small", seeds=[0], config={},
                  environment={}, runtime_s=0.0, method=["full"], baselines=[], arms=arms,
                  extra={"all_foreground_miou": value(0.1)}, curves={}, claims=[], notes=[])
