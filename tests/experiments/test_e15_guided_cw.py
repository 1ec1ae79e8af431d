"""15-guided-cw experiment pieces: budgets matched in model passes (forward + backward), and the
per-example common-success outcomes the claims are built from."""
import pytest
import torch
from torch import nn

from honed.core.errors import ConfigError
from honed.experiments.e15_guided_cw import ARMS, GuidedCWConfig, arm_metrics, build_attack, steps_for_budget


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize("refresh_every", [0, 5])
@pytest.mark.parametrize("budget", [10, 25])
def test_query_budget_gives_every_arm_at_most_cws_passes_per_search_step(budget, refresh_every):
    cfg = GuidedCWConfig(binary_search_steps=2, abort_early=False, refresh_every=refresh_every)
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 2])
    queries = {}
    for arm in ARMS:
        attack = build_attack(arm, tiny_model(), cfg, budget, targeted=False)
        attack(x, y)
        queries[arm] = attack.last_stats.queries
    assert queries["cw"] == 2 * budget * cfg.binary_search_steps  # one forward + one backward per iteration
    for arm in ("gcw_a", "gcw_b"):
        assert queries["cw"] - 4 * cfg.binary_search_steps < queries[arm] <= queries["cw"], queries


def test_iteration_budget_gives_every_arm_the_same_iterations():
    cfg = GuidedCWConfig(budget_unit="iterations")
    assert {steps_for_budget(arm, 25, cfg) for arm in ARMS} == {25}
    assert steps_for_budget("gcw_b", 25, GuidedCWConfig()) == 12  # two gradient passes per iteration


def test_common_set_outcomes_are_zero_outside_the_examples_both_attacks_broke():
    record = {"success": [True, True, False], "l2": [0.5, 0.7, 0.0], "queries_to_success": [4, 6, -1],
              "iterations_to_success": [2, 3, -1], "iterations": 10, "queries": 20, "elapsed_s": 0.1}
    cw = {"success": [True, False, True], "l2": [1.0, 0.0, 0.9], "queries_to_success": [8, -1, 10],
          "iterations_to_success": [4, -1, 5], "iterations": 10, "queries": 20, "elapsed_s": 0.1}
    m = arm_metrics(record, cw)
    assert m["success"] == [1.0, 1.0, 0.0] and m["common"] == [1.0, 0.0, 0.0]
    assert m["l2_common"] == [0.5, 0.0, 0.0] and m["cw_l2_common"] == [1.0, 0.0, 0.0]
    assert m["queries_common"] == [4.0, 0.0, 0.0] and m["cw_queries_common"] == [8.0, 0.0, 0.0]
    assert m["median_l2"] == 0.6


def test_config_refuses_an_unknown_budget_unit():
    with pytest.raises(ConfigError):
        GuidedCWConfig(budget_unit="seconds").validate()
