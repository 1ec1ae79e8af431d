"""Tests of honed.data.aerial_tiles (synthetic tiles for the arXiv:2012.02264 reproduction)."""
import pytest
import torch

from honed.core.errors import InputError
from honed.data.aerial_tiles import (NUM_CLASSES, REFLECTANCE, SOURCE_STYLE, TARGET_STYLE, draw_layouts,
                                       make_aerial_domains, make_tiles, render_tiles)


def test_tiles_have_the_documented_shapes_and_ranges():
    tiles = make_tiles(20, SOURCE_STYLE, seed=3)
    assert tiles.x.shape == (20, 3, 32, 32) and tiles.y.shape == (20, 32, 32)
    assert tiles.y.dtype == torch.long and 0 <= int(tiles.y.min()) and int(tiles.y.max()) < NUM_CLASSES
    assert float(tiles.x.min()) >= 0 and float(tiles.x.max()) <= 1


def test_seeded_and_every_class_occurs():
    a, b = make_tiles(50, TARGET_STYLE, seed=5), make_tiles(50, TARGET_STYLE, seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert torch.bincount(a.y.flatten(), minlength=NUM_CLASSES).min() > 0
    assert not torch.equal(a.y, make_tiles(50, TARGET_STYLE, seed=6).y)


def test_roof_shade_only_on_buildings_roads_or_cars_and_cars_exist():
    labels, shade = draw_layouts(100, 32, seed=0)
    # shade marks half of each roof: a shaded pixel is a building unless a road cut through it
    assert set(labels[shade > 0].unique().tolist()) <= {1, 2, 4}
    cars = labels == 4
    assert cars.any()


def test_target_is_the_false_colour_channel_swap_of_the_same_layout():
    labels, shade = draw_layouts(4, 32, seed=1)
    flat = TARGET_STYLE.__class__(TARGET_STYLE.bands, texture_scale=8, brightness=0.0, blur=False, noise_std=0.0)
    target = render_tiles(labels, torch.zeros_like(shade), flat, seed=0)
    veg = labels == 0
    # first displayed target channel is NIR: vegetation pixels show its NIR reflectance (texture aside)
    assert abs(float(target.x[:, 0][veg].mean()) - float(REFLECTANCE[0, 3])) < 0.05
    source = make_tiles(4, SOURCE_STYLE, seed=1)
    assert torch.equal(source.y, labels)
    assert abs(float(source.x[:, 0][veg].mean()) - float(REFLECTANCE[0, 2])) < 0.05


def test_domains_differ_and_splits_are_disjoint_layouts():
    d = make_aerial_domains(40, 40, 20, 20)
    assert len(d.source) == 40 and len(d.target_test) == 20
    assert (d.source.x.mean() - d.target_train.x.mean()).abs() > 0.05
    assert not torch.equal(d.target_train.y[:20], d.target_test.y)


def test_bad_input_raises():
    with pytest.raises(InputError):
        draw_layouts(0)
    with pytest.raises(InputError):
        render_tiles(torch.full((1, 32, 32), 7), torch.zeros(1, 32, 32), SOURCE_STYLE)


def test_tiles_have_no_cpu_default():
    """Issue 18: tiles are painted by a CPU generator and land on ``device``; without one they stay put."""
    from honed.data.aerial_tiles import SOURCE_STYLE, make_tiles
    tiles = make_tiles(2, SOURCE_STYLE, 0, size=12, device="meta")
    assert tiles.x.device.type == tiles.y.device.type == "meta"
    assert make_tiles(2, SOURCE_STYLE, 0, size=12).x.device.type == "cpu"
