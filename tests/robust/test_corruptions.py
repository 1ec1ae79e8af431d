"""Corruption test set (honed.robust.corruptions): shape, range, identity, determinism, monotone severity."""
import pytest
import torch

from honed.core.errors import InputError
from honed.data import create_dataset
from honed.robust.corruptions import CORRUPTIONS, contrast, corrupt, corruption_set


@pytest.fixture(scope="module")
def digits16():
    return create_dataset("digits", size=16).test.x[:64]


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_range_identity_and_determinism(digits16, name):
    for s in range(1, 6):
        out = corrupt(digits16, name, s, seed=3)
        assert out.shape == digits16.shape and out.dtype == digits16.dtype
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        assert torch.equal(out, corrupt(digits16, name, s, seed=3))
    assert torch.equal(corrupt(digits16, name, 0), digits16)


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_mean_distortion_grows_with_severity(name, size):
    x = create_dataset("digits", size=size).test.x[:64]
    dist = [float((corrupt(x, name, s) - x).abs().mean()) for s in range(6)]
    assert dist[0] == 0
    assert all(b > a for a, b in zip(dist, dist[1:])), dist


def test_contrast_oracle():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    # mean 0.5, factor 0.5 at severity 1: 0.5 +- 0.25
    assert torch.allclose(contrast(x, 1, None), torch.tensor([[[[0.25, 0.75], [0.25, 0.75]]]]))


def test_noise_changes_with_seed(digits16):
    assert not torch.equal(corrupt(digits16, "gaussian_noise", 2, seed=0), corrupt(digits16, "gaussian_noise", 2, seed=1))


def test_corruption_set_keys(digits16):
    out = corruption_set(digits16[:4], ("contrast", "pixelate"), (1, 3))
    assert sorted(out) == ["contrast/1", "contrast/3", "pixelate/1", "pixelate/3"]


@pytest.mark.parametrize("bad, severity, name", [
    (torch.rand(4, 16, 16), 1, "contrast"),
    (torch.rand(2, 1, 4, 4) * 2, 1, "contrast"),
    (torch.full((1, 1, 4, 4), float("nan")), 1, "contrast"),
    (torch.randint(0, 2, (1, 1, 4, 4)), 1, "contrast"),
    (torch.rand(1, 1, 4, 4), 6, "contrast"),
    (torch.rand(1, 1, 4, 4), -1, "contrast"),
    (torch.rand(1, 1, 4, 4), 1, "snow"),
])
def test_bad_input(bad, severity, name):
    with pytest.raises(InputError):
        corrupt(bad, name, severity)
