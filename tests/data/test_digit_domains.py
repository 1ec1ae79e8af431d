"""Digits -> coloured digits (Compact DNN, arXiv:1703.04071): rendering options and the held-out
target-validation split used for setting choices."""
import pytest
import torch

from honed.core.errors import InputError
from honed.data.digit_domains import contrasting_colour, make_digit_domains, render_target_domain


def test_colour_gap_bounds_the_circular_distance_from_the_background():
    base = torch.rand(500, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    fg = contrasting_colour(base, torch.Generator().manual_seed(1), gap=(0.3, 0.7))
    dist = (fg - base) % 1.0
    assert bool(((dist >= 0.3 - 1e-6) & (dist <= 0.7 + 1e-6)).all())


def test_rendering_options_change_the_images_and_are_checked():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    default = render_target_domain(x, seed=3)
    assert torch.equal(default, render_target_domain(x, seed=3, colour_gap=(0.25, 0.75), texture_amplitude=0.3))
    assert not torch.equal(default, render_target_domain(x, seed=3, texture_amplitude=0.0))
    with pytest.raises(InputError):
        render_target_domain(x, colour_gap=(0.8, 0.2))
    with pytest.raises(InputError):
        render_target_domain(x, texture_amplitude=-1.0)


def test_target_validation_split_is_disjoint_and_test_is_unchanged():
    plain = make_digit_domains()
    with_val = make_digit_domains(target_val_fraction=0.2)
    assert plain.target_val is None
    assert torch.equal(plain.target_test.x, with_val.target_test.x)
    key = lambda split: set(split.x.flatten(1).sum(1).tolist())  # noqa: E731
    assert not key(with_val.target_val) & key(with_val.target_adapt)
    assert not key(with_val.target_val) & key(with_val.target_test)
    assert len(with_val.target_val) + len(with_val.target_adapt) == len(plain.target_adapt)
    with pytest.raises(InputError):
        make_digit_domains(target_val_fraction=0.7)
