"""Tests of honed.data.shape_scenes (ComplexMix reproduction data, arXiv:2101.10156)."""
import pytest
import torch

from honed.core.errors import InputError
from honed.data.shape_scenes import NUM_CLASSES, make_shape_scenes, make_shape_splits


def test_shapes_ranges_and_determinism():
    a, b = make_shape_scenes(6, seed=3), make_shape_scenes(6, seed=3)
    assert a.x.shape == (6, 3, 32, 32) and a.y.shape == (6, 32, 32) and a.y.dtype == torch.long
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert 0 <= float(a.x.min()) and float(a.x.max()) <= 1
    assert int(a.y.min()) >= 0 and int(a.y.max()) < NUM_CLASSES
    assert not torch.equal(a.x, make_shape_scenes(6, seed=4).x)


def test_scenes_hold_objects_and_every_class_occurs():
    s = make_shape_scenes(40, seed=0)
    per_image = [(img > 0).float().mean() for img in s.y]
    assert min(per_image) > 0  # every scene has at least one visible object
    assert set(torch.unique(s.y).tolist()) == set(range(NUM_CLASSES))


def test_split_sizes_and_independence():
    splits = make_shape_splits(0, n_labeled=5, n_unlabeled=7, n_test=3)
    assert [len(splits[k].x) for k in ("labeled", "unlabeled", "test")] == [5, 7, 3]
    assert not torch.equal(splits["labeled"].x[:3], splits["test"].x)


def test_bad_sizes_raise():
    with pytest.raises(InputError):
        make_shape_scenes(0)
    with pytest.raises(InputError):
        make_shape_scenes(2, size=4)


def test_scene_builders_have_no_cpu_default():
    """Issue 18: data is drawn by a CPU generator (the same tensors on every device) and lands on ``device``;
    without one it stays where it was built."""
    from honed.data.shape_scenes import make_shape_scenes
    assert make_shape_scenes(2, size=8, device="meta").x.device.type == "meta"
    assert make_shape_scenes(2, size=8).x.device.type == "cpu"
