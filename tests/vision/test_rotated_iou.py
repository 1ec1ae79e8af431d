"""Rotated BEV IoU: 1 for identical boxes, 0 for disjoint, equal to shapely's polygon IoU on random pairs."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.vision.rotated_iou import box_corners, rotated_iou

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402


def shapely_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    pa, pb = (Polygon(box_corners(x[None].double())[0].tolist()) for x in (a, b))
    return pa.intersection(pb).area / pa.union(pb).area


box = st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(0.2, 5), st.floats(0.2, 5),
                st.floats(-math.pi, math.pi)).map(lambda v: torch.tensor(v, dtype=torch.float64))


@settings(max_examples=150, deadline=None)
@given(box, box)
def test_matches_shapely_on_random_pairs(a, b):
    assert float(rotated_iou(a[None], b[None])[0, 0]) == pytest.approx(shapely_iou(a, b), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(box, st.integers(0, 3))
def test_identical_and_quarter_turned_boxes_give_one(a, quarter):
    turned = a.clone()
    if quarter % 2:  # a quarter turn with length and width swapped is the same rectangle
        turned[2], turned[3] = a[3], a[2]
    turned[4] = a[4] + quarter * math.pi / 2
    assert float(rotated_iou(a[None], turned[None])[0, 0]) == pytest.approx(1.0, abs=1e-6)


def test_by_hand_and_disjoint():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 2.0, 2.0, 0.0], [10.0, 0.0, 2.0, 2.0, 0.3], [0.0, 0.0, 2.0, 2.0, math.pi / 4]])
    iou = rotated_iou(a, b)[0]
    assert iou[0].item() == pytest.approx(2 / 6)
    assert iou[1].item() == 0.0
    octagon = 8 * (math.sqrt(2) - 1)  # a square and itself turned by 45 degrees overlap in a regular octagon
    assert iou[2].item() == pytest.approx(octagon / (8 - octagon), rel=1e-6)


def test_pairwise_shape_and_empty_inputs():
    a, b = torch.rand(3, 5) + 0.5, torch.rand(4, 5) + 0.5
    assert rotated_iou(a, b).shape == (3, 4)
    assert rotated_iou(a, torch.zeros(0, 5)).shape == (3, 0)
    assert torch.allclose(rotated_iou(a, b), rotated_iou(b, a).T, atol=1e-6)


@pytest.mark.parametrize("bad, words", [(torch.zeros(2, 4), r"\(N, 5\)"), (torch.tensor([[0, 0, 1.0, -1, 0]]), "positive"),
                                        (torch.tensor([[0, 0, 1.0, float("nan"), 0]]), "NaN")])
def test_bad_boxes_are_refused_in_one_line(bad, words):
    with pytest.raises(InputError, match=words):
        rotated_iou(bad, torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]))
