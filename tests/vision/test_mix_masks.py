"""Tests of honed.vision.mix_masks (ComplexMix, arXiv:2101.10156): the card's honest unit tests."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.sequence.mean_teacher import ema_update
from honed.vision.mix_masks import (batch_masks, choose_classes, classmix_mask, complexmix_mask, confidence_weight,
                                    cutmix_mask, grid_cells, mix, mix_unlabeled, sample_grid_size)


def random_labels(seed, h=16, w=16, classes=5):
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (h // 4, w // 4), generator=gen)
    return coarse.repeat_interleave(4, 0).repeat_interleave(4, 1)


@given(st.integers(0, 10_000))
@settings(max_examples=15, deadline=None)
def test_k1_equals_classmix_with_same_rng_state(seed):
    labels = random_labels(seed)
    a = complexmix_mask(labels, k=1, generator=torch.Generator().manual_seed(seed))
    b = classmix_mask(labels, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@given(st.integers(0, 10_000), st.sampled_from([2, 3, 4]))
@settings(max_examples=15, deadline=None)
def test_each_cell_selects_half_its_classes_as_whole_regions(seed, k):
    labels = random_labels(seed, 12 * 2, 12 * 2)
    mask = complexmix_mask(labels, k=k, generator=torch.Generator().manual_seed(seed))
    cells = grid_cells(*labels.shape, k)
    for cell in range(k * k):
        inside = cells == cell
        cell_labels, cell_mask = labels[inside], mask[inside]
        present = torch.unique(cell_labels)
        chosen = torch.unique(cell_labels[cell_mask == 1])
        for c in present:  # every class region of the cell is wholly in or wholly out
            values = cell_mask[cell_labels == c]
            assert bool((values == values[0]).all())
        if len(present) > 1:
            assert len(chosen) == len(present) // 2
        else:
            assert len(chosen) in (0, 1)


def test_mask_binary_and_same_spatial_shape():
    labels = torch.stack([random_labels(s, 16, 24) for s in range(3)])
    for method in ("cutmix", "classmix", "complexmix"):
        m = batch_masks(labels, method, k=4, generator=torch.Generator().manual_seed(0))
        assert m.shape == labels.shape
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}


def test_cutmix_box_covers_half_area():
    m = cutmix_mask(32, 32, 0.5, torch.Generator().manual_seed(1))
    rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
    assert m.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # one solid box
    assert m.sum() == 23 * 23  # round(32 * sqrt(0.5)) = 23


def test_grid_cells_by_hand():
    cells = grid_cells(4, 4, 2)
    assert cells.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_single_class_copied_with_probability():
    present = torch.tensor([3])
    assert choose_classes(present, single_class_prob=1.0).tolist() == [3]
    assert choose_classes(present, single_class_prob=0.0).tolist() == []
    gen = torch.Generator().manual_seed(0)
    hits = sum(len(choose_classes(present, gen, 0.5)) for _ in range(2000))
    assert 900 < hits < 1100


def test_ignore_pixels_never_selected():
    labels = torch.tensor([[0, 1], [250, 250]])
    for seed in range(10):
        m = classmix_mask(labels, torch.Generator().manual_seed(seed), ignore_index=250)
        assert m[1].sum() == 0 and m[0].sum() == 1


def test_mixed_label_and_image_follow_mask():
    gen = torch.Generator().manual_seed(0)
    y_a, y_b = torch.randint(0, 5, (2, 8, 8), generator=gen), torch.randint(0, 5, (2, 8, 8), generator=gen)
    x_a, x_b = torch.rand(2, 3, 8, 8, generator=gen), torch.rand(2, 3, 8, 8, generator=gen)
    m = batch_masks(y_a, "complexmix", k=2, generator=gen)
    y_m, x_m = mix(m, y_a, y_b), mix(m, x_a, x_b)
    assert y_m.dtype == torch.long
    assert torch.equal(y_m[m == 1], y_a[m == 1]) and torch.equal(y_m[m == 0], y_b[m == 0])
    keep = m.bool().unsqueeze(1).expand_as(x_a)
    assert torch.equal(x_m[keep], x_a[keep]) and torch.equal(x_m[~keep], x_b[~keep])


def test_mix_rejects_bad_masks():
    with pytest.raises(InputError):
        mix(torch.full((4, 4), 0.5), torch.zeros(4, 4), torch.ones(4, 4))
    with pytest.raises(InputError):
        mix(torch.ones(3, 3), torch.zeros(4, 4), torch.ones(4, 4))


def test_confidence_weight_is_exact_fraction_above_tau():
    conf = torch.tensor([[0.99, 0.968, 0.5], [0.97, 0.2, 1.0]])
    assert confidence_weight(conf, 0.968) == pytest.approx(3 / 6)  # 0.968 itself is not above
    assert confidence_weight(conf, 0.0) == pytest.approx(1.0)
    with pytest.raises(InputError):
        confidence_weight(torch.tensor([float("nan")]), 0.5)


def test_mix_unlabeled_pairs_image_i_with_next():
    probs = torch.zeros(2, 3, 2, 2)
    probs[0, 1], probs[1, 2] = 1.0, 0.9
    probs[1, 0] = 0.1
    images = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    masks = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]]]).float()
    x_m, y_m, w = mix_unlabeled(images, probs, masks, tau=0.95)
    assert x_m[0, 0].tolist() == [[0, 1], [1, 1]]
    assert y_m[0].tolist() == [[1, 2], [2, 2]] and y_m[1].tolist() == [[2, 2], [1, 1]]
    assert w == pytest.approx(3 / 8)  # confident: pixels taken from image 0 (prob 1.0): 1 + 2 of 8


def test_ema_update_formula():
    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = teacher.weight.detach().clone()
    ema_update(teacher, student, 0.99)
    assert torch.allclose(teacher.weight, 0.99 * before + 0.01 * student.weight)


def test_bad_inputs_raise():
    with pytest.raises(InputError):
        complexmix_mask(torch.rand(4, 4), k=2)
    with pytest.raises(InputError):
        complexmix_mask(torch.zeros(4, 4, dtype=torch.long), k=5)
    with pytest.raises(InputError):
        batch_masks(torch.zeros(1, 4, 4, dtype=torch.long), "gridmask")
    with pytest.raises(InputError):
        sample_grid_size(())
    assert sample_grid_size((1, 2, 4), torch.Generator().manual_seed(0)) in (1, 2, 4)


def test_masks_follow_the_labels_device_with_a_cpu_generator(device):
    """Issue 18: draws happen on the generator's device (the same masks everywhere) and the masks lie on
    the labels' device; the builders have no CPU default."""
    labels = torch.randint(0, 4, (3, 8, 8), generator=torch.Generator().manual_seed(0))
    for method in ("cutmix", "classmix", "complexmix"):
        on_cpu = batch_masks(labels, method, generator=torch.Generator().manual_seed(1))
        moved = batch_masks(labels.to(device), method, generator=torch.Generator().manual_seed(1))
        assert moved.device == torch.device(device) and torch.equal(moved.cpu(), on_cpu)
    with torch.device("meta"):
        assert grid_cells(8, 8, 2).device.type == cutmix_mask(8, 8).device.type == "meta"
