"""Toy-GAN metrics for the arXiv:2008.12463 reproduction: RBF MMD^2 (oracle values, identical samples,
growth with a shift), mode coverage / high-quality fraction, and the 8-Gaussian ring sampler."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.generative.gan_metrics import mode_quality, rbf_mmd2, ring_centers, sample_gaussian_ring


def test_mmd_of_two_points_matches_the_closed_form():
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    assert rbf_mmd2(x, y, (1.0,)) == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-5)
    assert rbf_mmd2(x, y, (1.0, 2.0)) == pytest.approx(2 - math.exp(-0.5) - math.exp(-1 / 8), rel=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_mmd_of_identical_samples_is_zero_and_grows_with_a_shift(seed):
    gen = torch.Generator().manual_seed(seed)
    x = sample_gaussian_ring(300, gen)
    assert rbf_mmd2(x, x.clone()) == pytest.approx(0.0, abs=1e-6)
    shifted = [rbf_mmd2(x, x + torch.tensor([shift, 0.0])) for shift in (0.01, 0.1, 0.5, 2.0)]
    assert all(a < b for a, b in zip(shifted, shifted[1:])) and shifted[0] > 0


def test_independent_samples_of_one_distribution_are_close_and_a_gaussian_blob_is_far():
    gen = torch.Generator().manual_seed(0)
    x, y = sample_gaussian_ring(1000, gen), sample_gaussian_ring(1000, gen)
    blob = torch.randn(1000, 2, generator=gen) * math.sqrt(2)
    assert rbf_mmd2(x, y) < 0.01 < 10 * rbf_mmd2(x, y) < rbf_mmd2(x, blob)


def test_mode_quality_counts_on_hand_placed_points():
    centers = ring_centers(8, 2.0)
    near0 = centers[0] + torch.full((20, 2), 0.01)
    near1 = centers[1] + torch.full((19, 2), -0.01)
    far = torch.zeros(5, 2)
    modes, quality = mode_quality(torch.cat([near0, near1, far]), centers, std=0.02)
    assert modes == 1 and quality == pytest.approx(39 / 44)


def test_ring_sampler_covers_every_mode_at_the_right_radius():
    x = sample_gaussian_ring(4000, torch.Generator().manual_seed(1))
    assert x.shape == (4000, 2)
    assert ((x.norm(dim=1) - 2.0).abs() < 0.15).all()
    assert mode_quality(x, ring_centers(), std=0.02) == (8, pytest.approx(0.99, abs=0.01))
    assert torch.allclose(ring_centers(4, 1.0), torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]), atol=1e-6)


def test_bad_inputs_raise_one_line_errors():
    x = torch.zeros(4, 2)
    with pytest.raises(InputError, match="shape"):
        rbf_mmd2(torch.zeros(4), x)
    with pytest.raises(InputError, match="same dimension"):
        rbf_mmd2(x, torch.zeros(4, 3))
    with pytest.raises(InputError, match="NaN"):
        rbf_mmd2(x, torch.full((4, 2), float("nan")))
    with pytest.raises(InputError, match="bandwidths"):
        rbf_mmd2(x, x, (0.0,))


def test_ring_samples_are_drawn_on_the_generator_device_and_land_where_asked():
    """Issue 18: a CPU generator draws on the CPU (same points everywhere) and the points move to ``device``."""
    a = sample_gaussian_ring(20, torch.Generator().manual_seed(0), device="meta")
    b = sample_gaussian_ring(20, torch.Generator().manual_seed(0))
    assert a.device == torch.device("meta") and b.device == torch.device("cpu")
    with torch.device("meta"):
        assert ring_centers().device == torch.device("meta")
