"""40-astar-3d: attribute slices of equal size with exact shares; the frame plan covers every pool once."""
from dataclasses import replace

import pytest

from honed.core.errors import ConfigError
from honed.experiments.e40_astar_3d import AStar3DConfig, arm_plans, frame_plan

CFG = replace(AStar3DConfig(), n_train=20, n_test=10)


def test_every_arm_has_n_train_frames_with_the_asked_shares():
    plans, pools = arm_plans(CFG), frame_plan(CFG)
    assert all(len(p) == 20 for p in plans.values())
    assert all(i in pools["train_low"] for i, _ in plans["lidar/low"])
    assert all(i in pools["train_high"] for i, _ in plans["lidar/high"])
    mix = plans["lidar/mix"]
    assert sum(a == "low" for _, a in mix) == 10 and len({i for i, _ in mix}) == 20
    for arm in ("fusion/day", "fusion/night", "fusion/both"):  # the same scenes, only the camera differs
        assert [i for i, _ in plans[arm]] == [i for i, _ in mix]
    assert {a for _, a in plans["fusion/day"]} == {"day"} and {a for _, a in plans["fusion/night"]} == {"night"}
    assert sum(a == "day" for _, a in plans["fusion/both"]) == 10


def test_frame_plan_is_disjoint_and_complete():
    pools = frame_plan(CFG)
    flat = [i for ids in pools.values() for i in ids]
    assert sorted(flat) == list(range(2 * 20 + 10))


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="even"):
        replace(CFG, n_train=21).validate()
    with pytest.raises(ConfigError, match="claim_level"):
        replace(CFG, claim_level="Medium").validate()
