"""Shape-detection scenes of the CST reproduction: seeded, boxes tight on visible pixels, in spec."""
import pytest
import torch

from honed.core.errors import InputError
from honed.data.detection_scenes import CLASSES, make_detection_scenes, make_ssod_splits, visible_box


def test_scenes_are_seeded_and_in_spec():
    a, b = make_detection_scenes(12, seed=3), make_detection_scenes(12, seed=3)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert a.images.shape == (12, 3, 64, 64) and 0 <= a.images.min() and a.images.max() <= 1
    for boxes, labels in zip(a.boxes, a.labels):
        assert 1 <= len(boxes) <= 4 and boxes.shape == (len(labels), 4) and labels.dtype == torch.long
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 64
        assert ((boxes[:, 2:] - boxes[:, :2]) <= 20).all() and set(labels.tolist()) <= set(range(len(CLASSES)))
    assert not torch.equal(a.images, make_detection_scenes(12, seed=4).images)


def test_visible_box_by_hand():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 3:7] = True
    assert visible_box(mask).tolist() == [3.0, 2.0, 7.0, 5.0]
    assert visible_box(torch.zeros(4, 4, dtype=torch.bool)) is None


def test_splits_have_the_card_sizes_and_independent_streams():
    splits = make_ssod_splits(0, n_labeled=5, n_unlabeled=7, n_test=3)
    assert [len(splits[k]) for k in ("labeled", "unlabeled", "test")] == [5, 7, 3]
    assert not torch.equal(splits["labeled"].images[:3], splits["test"].images)
    sub = splits["unlabeled"].subset([4, 0])
    assert torch.equal(sub.images[1], splits["unlabeled"].images[0]) and sub.boxes[0] is splits["unlabeled"].boxes[4]


@pytest.mark.parametrize("kwargs, words", [(dict(n=0), "n must"), (dict(n=2, size=8), "size must"),
                                           (dict(n=2, objects=(3, 1)), "objects"), (dict(n=2, side=(4.0, 40.0)), "side"),
                                           (dict(n=2, min_visible=0.0), "min_visible")])
def test_bad_arguments_are_refused_in_one_line(kwargs, words):
    with pytest.raises(InputError, match=words):
        make_detection_scenes(seed=0, **kwargs)
