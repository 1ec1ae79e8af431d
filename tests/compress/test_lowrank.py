"""Low-rank approximation of Force Regularization (arXiv:1703.09746): rank selection against a
hand-made spectrum, exact reconstruction at full rank, the MACs formula against counted MACs, and
errors naming the layer."""
import pytest
import torch
from torch import nn

from honed.compress.lowrank import (decompose_conv, decompose_linear, decompose_model, energy_in_top,
                                    lowrank_mac_ratio, pca_energy, pca_factors, plan_ranks, select_rank)
from honed.core.errors import InputError
from honed.core.measure import count_macs, count_params


def matrix_with_singular_values(values: list[float], cols: int, seed: int = 0) -> torch.Tensor:
    """U diag(values) V^T with random orthonormal U (n x n) and V (cols x n)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(values)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, n, generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


def test_pca_energy_is_uncentred_sigma_squared():
    w = matrix_with_singular_values([3.0, 2.0, 1.0], cols=5)
    assert torch.allclose(pca_energy(w), torch.tensor([9.0, 4.0, 1.0], dtype=torch.float64))
    # every filter shifted by the same vector: centring would remove it, uncentred PCA keeps it
    shifted = torch.ones(4, 6) * 5.0
    assert pca_energy(shifted)[0] == pytest.approx(4 * 6 * 25.0)


@pytest.mark.parametrize("energy, expected", [
    (0.5, 1),     # 16/30 = 0.533 >= 0.5
    (0.54, 2),    # 0.533 < 0.54 <= (16+9)/30 = 0.833
    (25 / 30, 2),  # exactly on the boundary: smallest K that reaches it
    (0.9, 3),     # (16+9+4)/30 = 0.967
    (0.97, 4),
    (1.0, 4),
])
def test_select_rank_is_smallest_k_reaching_the_energy(energy, expected):
    # singular values 4, 3, 2, 1 -> energies 16, 9, 4, 1 (total 30)
    w = matrix_with_singular_values([4.0, 3.0, 2.0, 1.0], cols=7).float().reshape(4, 7, 1, 1)
    assert select_rank(w, energy) == expected


def test_energy_in_top_matches_the_spectrum():
    w = matrix_with_singular_values([4.0, 3.0, 2.0, 1.0], cols=7)
    assert energy_in_top(w, 2) == pytest.approx(25 / 30)


def test_factors_reconstruct_the_projection():
    w = matrix_with_singular_values([4.0, 3.0, 2.0, 1.0], cols=7, seed=3)
    basis, coefficients = pca_factors(w, 2)
    assert basis.shape == (4, 2) and coefficients.shape == (2, 7)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-12)
    # best rank-2 approximation: residual energy = 2^2 + 1^2
    assert float((w - basis @ coefficients).pow(2).sum()) == pytest.approx(5.0)


@pytest.mark.parametrize("stride, padding, dilation, bias", [(1, 1, 1, True), (2, 0, 1, False), (1, 2, 2, True)])
def test_conv_at_full_rank_reproduces_the_original(stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride, padding, dilation, bias=bias)
    x = torch.randn(2, 3, 9, 9)
    low = decompose_conv(conv, rank=5)
    assert isinstance(low, nn.Sequential) and low[0].out_channels == 5 and low[1].kernel_size == (1, 1)
    assert (low(x) - conv(x)).abs().max() < 1e-5


def test_linear_at_full_rank_reproduces_the_original():
    torch.manual_seed(0)
    linear = nn.Linear(12, 6)
    x = torch.randn(4, 12)
    assert (decompose_linear(linear, 6)(x) - linear(x)).abs().max() < 1e-5


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 16), nn.ReLU(), nn.Linear(16, 3))


def test_model_at_energy_one_matches_and_the_original_is_untouched():
    net = small_net()
    x = torch.rand(3, 1, 8, 8)
    low, plan = decompose_model(net, energy=1.0, only_if_cheaper=False)
    assert [p.rank for p in plan] == [4, 8, 16, 3]
    assert (low(x) - net(x)).abs().max() < 1e-5
    assert isinstance(net[2], nn.Conv2d) and isinstance(low[2], nn.Sequential)


def test_low_rank_model_is_physically_smaller_and_mac_formula_matches_counted_macs():
    net = small_net()
    x = torch.rand(1, 1, 8, 8)
    low, plan = decompose_model(net, layers=["2", "6"], ranks={"2": 2, "6": 3})
    conv, fc = plan
    assert conv.rank == 2 and fc.rank == 3 and conv.decomposed and fc.decomposed
    saved_conv = 64 * conv.filters * conv.depth * (1 - conv.mac_ratio)  # 8x8 output pixels
    saved_fc = fc.filters * fc.depth * (1 - fc.mac_ratio)
    assert count_macs(net, x) - count_macs(low, x) == pytest.approx(saved_conv + saved_fc)
    assert count_params(low) == count_params(net) - 8 * 36 - 16 * 128 + (2 * 36 + 8 * 2) + (3 * 128 + 16 * 3)
    assert lowrank_mac_ratio(8, 36, 2) == pytest.approx((2 * 36 + 8 * 2) / (8 * 36))


def test_only_if_cheaper_keeps_layers_that_would_cost_more():
    net = small_net()
    plan = plan_ranks(net, energy=1.0, layers=["0"])  # 4 filters of depth 9 at rank 4: 4*13 > 36
    assert not plan[0].decomposed and plan[0].mac_ratio == 1.0
    low, _ = decompose_model(net, energy=1.0, layers=["0"])
    assert isinstance(low[0], nn.Conv2d)


@pytest.mark.parametrize("energy", [0.0, -0.1, 1.5, float("nan")])
def test_energy_outside_unit_interval_is_rejected(energy):
    with pytest.raises(InputError, match="energy"):
        decompose_model(small_net(), energy=energy)


def test_unsupported_layers_are_named():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.BatchNorm2d(4))
    with pytest.raises(InputError, match="'0'.*groups=2"):
        decompose_model(net, layers=["0"])
    with pytest.raises(InputError, match="'1'.*BatchNorm2d"):
        decompose_model(net, layers=["1"])
    with pytest.raises(InputError, match="'nope' not found"):
        decompose_model(net, layers=["nope"])
    with pytest.raises(InputError, match="rank must lie"):
        decompose_conv(nn.Conv2d(2, 3, 1), rank=4)
    with pytest.raises(InputError, match="NaN"):
        select_rank(torch.full((3, 3), float("nan")))
