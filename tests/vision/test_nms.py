"""PSRR-MaxpoolNMS (arXiv:2105.12990), MaxpoolNMS and the GreedyNMS reference: the card's honest unit
tests, hand-computed oracles, and the max_pool2d version against the loop version."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.vision.nms import (AnchorSet, greedy_nms, maxpool_nms, psrr_maxpool_nms, psrr_maxpool_nms_loop,
                              window_offsets)

IMAGE = (512, 512)


def all_methods(boxes, scores, **kw):
    """Kept indices of every implementation (MaxpoolNMS with each box as its own anchor)."""
    return {
        "greedy": greedy_nms(boxes, scores, 0.5, classes=kw.get("classes")),
        "maxpool": maxpool_nms(boxes, scores, anchors=boxes, image_size=IMAGE, **kw),
        "psrr": psrr_maxpool_nms(boxes, scores, image_size=IMAGE, **kw),
        "psrr_loop": psrr_maxpool_nms_loop(boxes, scores, image_size=IMAGE, **kw),
    }


def random_case(seed: int, n_max: int = 25, n_classes: int = 1):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, n_max + 1, (1,), generator=gen))
    side = torch.exp(torch.empty(n).uniform_(2.7, 5.6, generator=gen))  # ~15 .. 270 px
    ratio = torch.tensor([0.5, 1.0, 2.0])[torch.randint(3, (n,), generator=gen)]
    # cluster the centres so that pools and overlaps actually interact
    centre = 200 + torch.rand(n, 2, generator=gen) * 120
    wh = torch.stack([side / ratio.sqrt(), side * ratio.sqrt()], 1)
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], 1).clamp(0, 512)
    scores = torch.randperm(n, generator=gen).float() / n + 0.01  # distinct
    classes = torch.randint(n_classes, (n,), generator=gen)
    anchors = boxes + torch.randn(n, 4, generator=gen) * 10
    anchors = torch.cat([anchors[:, :2], torch.maximum(anchors[:, 2:], anchors[:, :2] + 1)], 1)
    return boxes, scores, classes, anchors


def test_one_box_is_kept_by_every_method():
    boxes, scores = torch.tensor([[10.0, 20.0, 60.0, 90.0]]), torch.tensor([0.3])
    for name, keep in all_methods(boxes, scores).items():
        assert keep.tolist() == [0], name
        assert keep.dtype == torch.int64


def test_two_identical_boxes_keep_only_the_higher_score():
    boxes = torch.tensor([[100.0, 100.0, 200.0, 180.0]] * 2)
    for scores, winner in ((torch.tensor([0.4, 0.9]), 1), (torch.tensor([0.9, 0.4]), 0)):
        for name, keep in all_methods(boxes, scores).items():
            assert keep.tolist() == [winner], name


def test_two_far_apart_boxes_are_both_kept_in_score_order():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [400.0, 400.0, 480.0, 460.0]])
    scores = torch.tensor([0.2, 0.7])
    for name, keep in all_methods(boxes, scores).items():
        assert keep.tolist() == [1, 0], name


def test_greedy_hand_example_uses_strict_iou_threshold():
    # box 1 overlaps box 0 with IoU 50/150 = 1/3; box 2 overlaps box 0 with IoU 0.81 -> suppressed
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 9.0, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert greedy_nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert greedy_nms(boxes, scores, 1 / 3).tolist() == [0, 1]  # IoU == threshold is not suppressed
    assert greedy_nms(boxes, scores, 0.3).tolist() == [0]
    # per class: the same boxes in different classes never suppress each other
    assert greedy_nms(boxes, scores, 0.3, classes=torch.tensor([0, 1, 2])).tolist() == [0, 1, 2]


def test_kernel_rule_and_channel_recovery_by_hand():
    anchors = AnchorSet()
    kernels = anchors.kernels()
    assert kernels[3 * 3 + 1] == (6, 6)  # side 128, ratio 1: round(0.75 * 128 / 16)
    assert kernels[0] == (1, 1)  # side 16, ratio 0.5: w 22.6 -> 1, h 11.3 -> max(1, 1)
    assert kernels[4 * 3 + 2] == (17, 8)  # side 256, ratio 2: h 362 -> 17, w 181 -> 8
    boxes = torch.tensor([[0.0, 0.0, 128.0, 128.0], [0.0, 0.0, 20.0, 40.0], [0.0, 0.0, 300.0, 100.0]])
    # 20x40: area 800 is nearer 32^2 than 16^2 in log, h/w = 2; 300x100: area ~173^2 -> 128 or 256?
    # |log 30000 - log 16384| = 0.605 < |log 30000 - log 65536| = 0.781 -> side 128, ratio 1/3 -> 0.5
    assert anchors.channel_of(boxes).tolist() == [10, 5, 9]
    groups = anchors.groups(("cross_ratio",))
    assert groups[3] == ((9, 10, 11), (4, 4))
    assert window_offsets((6, 6), True) == [(0, 0), (3, 3)] and window_offsets((1, 1), True) == [(0, 0)]


def test_duplicate_pair_on_a_window_border_survives_unshifted_but_not_shifted():
    # two 128x128 boxes (IoU 0.97) whose centres fall in cells 11 and 12: a border of every unshifted
    # grid (kernels 6, 4 and 1); the grid shifted by 3 cells puts both in one window of kernel 6
    boxes = torch.tensor([[127.0, 136.0, 255.0, 264.0], [129.0, 136.0, 257.0, 264.0]])
    scores = torch.tensor([0.9, 0.8])
    for impl in (psrr_maxpool_nms, psrr_maxpool_nms_loop):
        assert impl(boxes, scores, image_size=IMAGE, shift=False).tolist() == [0, 1]
        assert impl(boxes, scores, image_size=IMAGE, shift=True).tolist() == [0]
    assert greedy_nms(boxes, scores, 0.5).tolist() == [0]


def test_maxpool_maps_by_source_anchor_and_psrr_by_the_box_itself():
    # identical regressed boxes from two anchors far apart: MaxpoolNMS keeps both, PSRR one
    boxes = torch.tensor([[200.0, 200.0, 264.0, 264.0]] * 2)
    anchors = torch.tensor([[100.0, 100.0, 164.0, 164.0], [300.0, 300.0, 364.0, 364.0]])
    scores = torch.tensor([0.6, 0.9])
    assert maxpool_nms(boxes, scores, anchors=anchors, image_size=IMAGE).tolist() == [1, 0]
    assert psrr_maxpool_nms(boxes, scores, anchors=anchors, image_size=IMAGE).tolist() == [1]
    no_rr = psrr_maxpool_nms(boxes, scores, anchors=anchors, image_size=IMAGE, relationship_recovery=False)
    assert no_rr.tolist() == [1, 0]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.booleans(), st.sampled_from([1, 3]))
def test_tensor_and_loop_versions_agree(seed, shift, rr, n_classes):
    boxes, scores, classes, anchors = random_case(seed, n_classes=n_classes)
    kw = dict(classes=classes, anchors=anchors, image_size=IMAGE, shift=shift, relationship_recovery=rr)
    for levels in (("channel", "cross_ratio", "cross_scale", "all"), ("channel",), ("all", "cross_scale")):
        fast = psrr_maxpool_nms(boxes, scores, levels=levels, **kw)
        slow = psrr_maxpool_nms_loop(boxes, scores, levels=levels, **kw)
        assert fast.tolist() == slow.tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_output_is_a_score_sorted_subset_with_the_global_top_box(seed):
    boxes, scores, classes, _ = random_case(seed, n_classes=2)
    for name, keep in all_methods(boxes, scores, classes=classes).items():
        assert len(set(keep.tolist())) == len(keep) and all(0 <= i < len(boxes) for i in keep.tolist()), name
        assert int(keep[0]) == int(scores.argmax()), name
        assert (scores[keep][:-1] >= scores[keep][1:]).all(), name


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_result_is_invariant_to_input_permutation(seed):
    boxes, scores, classes, anchors = random_case(seed, n_classes=2)
    perm = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(seed + 1))
    base = all_methods(boxes, scores, classes=classes)
    moved = all_methods(boxes[perm], scores[perm], classes=classes[perm])
    for name in base:
        assert perm[moved[name]].tolist() == base[name].tolist(), name


def test_psrr_is_closer_to_greedy_than_without_relationship_recovery_on_a_cluster():
    # 9 jittered copies of one 160-px box regressed from anchors on a 3x3 lattice 80 px apart (cells
    # 11, 16, 21): MaxpoolNMS places them in different windows and keeps several, PSRR and greedy one
    gen = torch.Generator().manual_seed(0)
    gt = torch.tensor([180.0, 180.0, 340.0, 340.0])
    boxes = gt + torch.randn(9, 4, generator=gen) * 3
    lattice = torch.tensor([(dx, dy) for dx in (-80.0, 0.0, 80.0) for dy in (-80.0, 0.0, 80.0)])
    anchors = gt + lattice.repeat(1, 2)
    scores = torch.rand(9, generator=gen)
    assert len(greedy_nms(boxes, scores, 0.5)) == 1
    assert len(psrr_maxpool_nms(boxes, scores, image_size=IMAGE)) == 1
    assert len(maxpool_nms(boxes, scores, anchors=anchors, image_size=IMAGE)) >= 4


def test_bad_inputs_raise_one_line_errors():
    boxes, scores = torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([0.5])
    with pytest.raises(InputError, match="boxes must be a"):
        greedy_nms(boxes[0], scores, 0.5)
    with pytest.raises(InputError, match="scores must have shape"):
        psrr_maxpool_nms(boxes, torch.tensor([0.5, 0.4]))
    with pytest.raises(InputError, match="finite"):
        psrr_maxpool_nms(boxes, torch.tensor([float("nan")]))
    with pytest.raises(InputError, match="x1 <= x2"):
        greedy_nms(torch.tensor([[5.0, 0.0, 1.0, 5.0]]), scores, 0.5)
    with pytest.raises(InputError, match="iou_threshold"):
        greedy_nms(boxes, scores, 1.5)
    with pytest.raises(InputError, match="pass anchors"):
        psrr_maxpool_nms(boxes, scores, relationship_recovery=False)
    with pytest.raises(InputError, match="levels"):
        psrr_maxpool_nms(boxes, scores, levels=("channel", "diagonal"))
    with pytest.raises(InputError, match="channel_distance"):
        psrr_maxpool_nms(boxes, scores, channel_distance="euclid")
    with pytest.raises(InputError, match="AnchorSet"):
        AnchorSet(alpha=0.0)


def test_empty_input_gives_empty_int64():
    boxes, scores = torch.zeros(0, 4), torch.zeros(0)
    for name, keep in all_methods(boxes, scores).items():
        assert keep.shape == (0,) and keep.dtype == torch.int64, name


def test_pool_methods_refuse_an_iou_threshold_they_would_ignore():
    boxes, scores = torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.tensor([0.5])
    for call in (lambda: psrr_maxpool_nms(boxes, scores, 0.5), lambda: maxpool_nms(boxes, scores, 0.5, anchors=boxes),
                 lambda: psrr_maxpool_nms_loop(boxes, scores, 0.5)):
        with pytest.raises(InputError, match="alpha"):
            call()


def detector_output(n=1000, seed=0):
    """n boxes in [0, 1]-normalised xyxy around 20 objects of a 512 x 512 image."""
    gen = torch.Generator().manual_seed(seed)
    objects = torch.rand(20, 2, generator=gen) * 0.8 + 0.1
    side = torch.rand(20, 1, generator=gen) * 0.3 + 0.05
    pick = torch.randint(20, (n,), generator=gen)
    centre = objects[pick] + torch.randn(n, 2, generator=gen) * 0.1 * side[pick]
    half = side[pick] / 2 * (1 + 0.1 * torch.randn(n, 2, generator=gen))
    return torch.cat([centre - half, centre + half], 1).clamp(0, 1), torch.rand(n, generator=gen)


def test_normalised_boxes_are_refused_or_scaled_with_normalized_true():
    boxes, scores = detector_output()
    for outside in (boxes, boxes * 1.2 - 0.1):  # detectors overshoot [0, 1] a little
        with pytest.raises(InputError, match="normalized=True"):
            psrr_maxpool_nms(outside, scores)
    with pytest.raises(InputError, match="image_size"):
        psrr_maxpool_nms(boxes, scores, normalized=True)
    keep = psrr_maxpool_nms(boxes, scores, normalized=True, image_size=IMAGE)
    pixels = psrr_maxpool_nms(boxes * 512, scores, image_size=IMAGE)
    assert torch.equal(keep, pixels) and len(keep) > 1
    anchors_in_units = AnchorSet(sides=tuple(s / 512 for s in AnchorSet().sides), stride=16 / 512)
    assert torch.equal(psrr_maxpool_nms(boxes, scores, anchor_set=anchors_in_units), pixels)


def test_negative_coordinates_give_the_result_of_the_same_boxes_moved_into_the_image():
    boxes, scores, _, _ = random_case(3, n_max=40)
    boxes = boxes - boxes.amin(0)[:2].repeat(2)  # lowest x1 and y1 at 0
    moved = boxes - torch.tensor([1600.0, 3200.0, 1600.0, 3200.0])  # a whole number of cells
    assert (moved < 0).all()
    assert torch.equal(psrr_maxpool_nms(moved, scores), psrr_maxpool_nms(boxes, scores))
    assert torch.equal(psrr_maxpool_nms_loop(moved, scores), psrr_maxpool_nms(moved, scores))


def test_huge_coordinates_are_refused_before_allocating_and_class_ids_need_not_be_dense():
    boxes, scores, classes, _ = random_case(5, n_max=30, n_classes=3)
    with pytest.raises(InputError, match="score map would hold"):
        psrr_maxpool_nms(boxes * 1e7, scores)
    assert len(psrr_maxpool_nms(boxes * 1e7, scores, image_size=(512e7, 512e7), anchor_set=AnchorSet(
        sides=tuple(s * 1e7 for s in AnchorSet().sides), stride=16e7))) >= 1
    sparse_ids = torch.tensor([7, 1000, 123456])[classes]
    assert torch.equal(psrr_maxpool_nms(boxes, scores, classes=sparse_ids, image_size=IMAGE),
                       psrr_maxpool_nms(boxes, scores, classes=classes, image_size=IMAGE))


def test_channel_of_follows_the_boxes_device():
    """Issue 18: the anchor constants move to the boxes' device (a CUDA batch no longer meets CPU anchors)."""
    boxes = torch.tensor([[0.0, 0.0, 16.0, 32.0], [10.0, 10.0, 74.0, 42.0]])
    assert AnchorSet().channel_of(boxes.to("meta")).device == torch.device("meta")


def test_every_nms_runs_on_the_test_device_and_keeps_the_cpu_boxes(device):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 8 + torch.rand(30, 2, generator=g) * 80], 1)
    scores, classes = torch.rand(30, generator=g), torch.randint(2, (30,), generator=g)
    on = [t.to(device) for t in (boxes, scores, classes)]
    for nms in (lambda b, s, c: greedy_nms(b, s, 0.5, c), lambda b, s, c: psrr_maxpool_nms(b, s, classes=c),
                lambda b, s, c: maxpool_nms(b, s, anchors=b, classes=c),
                lambda b, s, c: psrr_maxpool_nms_loop(b, s, classes=c)):
        kept = nms(*on)
        assert kept.device == torch.device(device) and kept.tolist() == nms(boxes, scores, classes).tolist()
