"""Per-layer and per-operator profiles (issue 15's measuring tool for GDP, arXiv:2109.02220, and Force
Regularization, arXiv:1703.09746): rows cover every leaf module, the bookkeeping rows add up, modes are
restored, bad input is refused. No timed asserts."""
import pytest
import torch
from torch import nn

from honed.compress.layer_profile import (OUTSIDE, TOTAL, by_block, format_profile, layer_macs, layer_times,
                                          operator_times)
from honed.core.errors import InputError


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def test_layer_rows_cover_every_leaf_and_add_up_to_the_total():
    a, b = tiny(), tiny()
    b.train()
    times = layer_times({"a": a, "b": b}, torch.randn(2, 1, 4, 4), rounds=3, warmup=1, clock="wall")
    leaves = {"0", "1", "2", "3", "4"}
    assert set(times) == {"a", "b"}
    for row in times.values():
        assert set(row) == leaves | {OUTSIDE, TOTAL}
        assert all(row[k] >= 0 for k in leaves) and row[TOTAL] > 0
    assert b.training and all(m.training for m in b.modules())  # modes restored


def test_single_round_rows_sum_exactly():
    times = layer_times({"m": tiny()}, torch.randn(2, 1, 4, 4), rounds=1, warmup=0)
    row = times["m"]
    assert sum(v for k, v in row.items() if k != TOTAL) == pytest.approx(row[TOTAL])


def test_operator_rows_name_aten_ops():
    times = operator_times({"m": tiny()}, torch.randn(2, 1, 4, 4), rounds=1, warmup=0)
    assert any("conv" in k for k in times["m"]) and times["m"][TOTAL] > 0


def test_format_profile_puts_each_model_in_a_column():
    text = format_profile({"dense": {"conv": 2.0, TOTAL: 3.0}, "pruned": {"conv": 1.0, TOTAL: 2.0}})
    lines = text.splitlines()
    assert "dense" in lines[0] and "pruned/dense" in lines[0]
    assert lines[1].split()[0] == "conv" and lines[1].split()[-1] == "0.50"
    assert lines[-1].split()[0] == TOTAL


@pytest.mark.parametrize("models, example, match", [
    ({}, torch.randn(1, 1, 4, 4), "non-empty dict"),
    ({"m": "model"}, torch.randn(1, 1, 4, 4), "non-empty dict"),
    ({"m": tiny()}, torch.randn(0, 1, 4, 4), "example"),
])
def test_refuses_bad_input(models, example, match):
    with pytest.raises(InputError, match=match):
        layer_times(models, example)
    with pytest.raises(InputError, match="clock"):
        layer_times({"m": tiny()}, torch.randn(1, 1, 4, 4), clock="sundial")


def test_layer_macs_by_hand_and_with_channel_blocks():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Flatten(), nn.Linear(5 * 16, 2))
    macs = layer_macs(model, torch.randn(2, 3, 4, 4))
    assert macs == {"0": 2 * 16 * 5 * 3 * 9, "2": 2 * 2 * 80}
    blocked = layer_macs(model, torch.randn(2, 3, 4, 4), channel_block=16)
    assert blocked == {"0": 2 * 16 * 16 * 3 * 9, "2": 2 * 2 * 80}  # 3 inputs (< 16) stay unpadded, 5 outputs -> 16
    wide = layer_macs(nn.Conv2d(18, 20, 1), torch.randn(1, 18, 2, 2), channel_block=16)
    assert wide == {"": 4 * 32 * 32}
    depthwise = layer_macs(nn.Conv2d(4, 4, 3, groups=4), torch.randn(1, 4, 5, 5))
    assert depthwise == {"": 9 * 4 * 9}


def test_by_block_sums_layers_and_keeps_bookkeeping_rows():
    rows = {"stages.1.0.conv1": 1.0, "stages.1.1.conv2": 2.0, "stem.0": 0.5, TOTAL: 4.0}
    assert by_block(rows, lambda n: ".".join(n.split(".")[:2])) == {"stages.1": 3.0, "stem.0": 0.5, TOTAL: 4.0}
