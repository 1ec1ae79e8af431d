"""28-gdp experiment (GDP, arXiv:2109.02220): the cost table's per-round speedups (deployed forms) and
the equal-budget dense reference."""
import torch
from torch import nn

from honed.data import Split
from honed.experiments.e28_gdp import GDPConfig, cost_table, train_dense_equal_budget


def test_cost_table_keeps_one_speedup_per_interleaved_round():
    models = {"dense": nn.Linear(8, 4), "small": nn.Linear(8, 2)}
    table = cost_table(models, torch.randn(64, 8), rounds=5)
    assert table["dense"]["speedup_b64_rounds"] == [1.0] * 5
    assert len(table["small"]["speedup_b64_rounds"]) == 5
    assert table["small"]["macs_fraction"] == 0.5
    assert table["small"]["deployed_max_abs_logit_diff"] < 1e-6  # no BN to fold: the same function


def test_dense_equal_budget_trains_a_copy_for_the_gated_epochs():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    data = Split(torch.rand(32, 1, 2, 2), torch.randint(0, 10, (32,)))
    before = [p.clone() for p in dense.parameters()]
    model, curve = train_dense_equal_budget(dense, data, data, GDPConfig(gdp_epochs=2, batch_size=16), seed=0)
    assert len(curve) == 2 and model is not dense
    assert all(torch.equal(a, b) for a, b in zip(before, dense.parameters()))  # the dense arm is untouched
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
