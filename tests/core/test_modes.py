"""eval_mode puts back every submodule's own flag, not one uniform mode."""
import torch
from torch import nn

from honed.core.measure import count_macs, median_latency
from honed.core.modes import eval_mode


def model_with_a_frozen_bn():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model.train()
    model[1].eval()  # the user froze this BN
    return model


def test_eval_mode_restores_each_submodule():
    model = model_with_a_frozen_bn()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model[1].training and model[0].training


def test_measurements_leave_the_users_modes_alone():
    model = model_with_a_frozen_bn()
    count_macs(model, torch.randn(2, 4))
    median_latency(model, torch.randn(2, 4), repeats=2, warmup=1)
    assert model.training and not model[1].training
