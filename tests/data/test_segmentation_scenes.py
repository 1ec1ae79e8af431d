"""Segmentation scenes with domain styles (cards 05 and 34): seeded, in spec, styles as documented, bad
arguments refused in one line."""
import colorsys

import pytest
import torch

from honed.core.errors import InputError
from honed.data.segmentation_scenes import (FEWSHOT_SHAPES, SOURCE_STYLE, SSDA_SHAPES, TARGET_STYLE, TEXTURED_STYLE,
                                            SceneStyle, check_label_maps, make_segmentation_scenes, make_ssda_splits,
                                            texture)


def test_scenes_are_seeded_and_in_spec():
    a = make_segmentation_scenes(10, seed=3, style=TARGET_STYLE)
    b = make_segmentation_scenes(10, seed=3, style=TARGET_STYLE)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.x.shape == (10, 3, 32, 32) and a.y.shape == (10, 32, 32) and a.y.dtype == torch.long
    assert 0 <= float(a.x.min()) and float(a.x.max()) <= 1 and a.num_classes == len(SSDA_SHAPES) + 1
    assert int(a.y.min()) >= 0 and int(a.y.max()) <= len(SSDA_SHAPES)
    assert all(int((y > 0).sum()) > 0 for y in a.y)  # every scene shows at least one object
    assert not torch.equal(a.x, make_segmentation_scenes(10, seed=4, style=TARGET_STYLE).x)


def test_source_objects_wear_their_class_hue_and_target_hues_are_rotated():
    for style, shift in ((SOURCE_STYLE, 0.0), (TARGET_STYLE, 90.0)):
        scenes = make_segmentation_scenes(30, seed=0, style=style)
        for label, hue in zip((1, 2, 3), (0.0, 120.0, 240.0)):
            # pixels well inside an object of this class (not on an edge: plain fill, no blur there in source)
            pixels = scenes.x.permute(0, 2, 3, 1)[scenes.y == label].mean(0).tolist()
            measured = colorsys.rgb_to_hsv(*pixels)[0] * 360
            gap = abs((measured - (hue + shift) + 180) % 360 - 180)
            assert gap < 35, (style, label, measured)


def test_class_subset_and_shape_list():
    scenes = make_segmentation_scenes(20, seed=1, style=TEXTURED_STYLE, shapes=FEWSHOT_SHAPES, size=48,
                                      objects=(1, 3), classes=(0, 1, 2))
    assert scenes.x.shape == (20, 3, 48, 48) and int(scenes.y.max()) <= 3 and scenes.num_classes == 11
    assert torch.equal(scenes.subset([2, 0]).y, scenes.y[[2, 0]])


def test_ssda_splits_have_their_sizes_and_independent_streams():
    splits = make_ssda_splits(0, n_source=4, n_target_labeled=3, n_target_unlabeled=5, n_target_test=2, n_source_test=3,
                              n_target_val=6)
    assert {k: len(v) for k, v in splits.items()} == {"source": 4, "target_labeled": 3, "target_unlabeled": 5,
                                                      "target_test": 2, "source_test": 3, "target_val": 6}
    assert not torch.equal(splits["source"].x[:3], splits["source_test"].x)


def test_textures_by_hand():
    gen = torch.Generator().manual_seed(0)
    red, blue = torch.tensor([1.0, 0, 0]).view(3, 1, 1), torch.tensor([0, 0, 1.0]).view(3, 1, 1)
    assert torch.equal(texture(gen, "plain", 4, red, blue), red.expand(3, 4, 4))
    for kind in ("stripes", "checker"):  # two-colour patterns use only the two colours
        fill = texture(gen, kind, 16, red, blue)
        assert set(fill[0].unique().tolist()) <= {0.0, 1.0} and torch.equal(fill[0] + fill[2], torch.ones(16, 16))


def test_bad_arguments_and_label_maps_are_refused():
    with pytest.raises(InputError, match="n must be"):
        make_segmentation_scenes(0, seed=0)
    with pytest.raises(InputError, match="objects"):
        make_segmentation_scenes(2, seed=0, objects=(0, 2))
    with pytest.raises(InputError, match="radius"):
        make_segmentation_scenes(2, seed=0, radius=(0.2, 0.7))
    with pytest.raises(InputError, match="class hues"):
        make_segmentation_scenes(2, seed=0, style=SOURCE_STYLE, shapes=FEWSHOT_SHAPES)
    with pytest.raises(InputError, match="textures"):
        SceneStyle(backgrounds=("marble",))
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(InputError, match=r"lie in \[0, 4\)"):
        check_label_maps(torch.full((2, 8, 8), 4), 4, x)
    with pytest.raises(InputError, match="integer"):
        check_label_maps(torch.zeros(2, 8, 8), 4, x)
    with pytest.raises(InputError, match="do not match"):
        check_label_maps(torch.zeros(2, 8, 9, dtype=torch.long), 4, x)
