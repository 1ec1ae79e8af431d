"""Synthetic long-tailed IMU windows standing in for A*HAR (arXiv:2101.04859)."""
import numpy as np
import pytest
import torch

from honed.core.errors import InputError
from honed.sequence.har_data import make_synthetic_har, zipf_counts


def test_shapes_dtypes_and_disjoint_subjects():
    d = make_synthetic_har(n_train=400, n_test=200, num_classes=8, seed=1)
    assert d.train_x.shape == (400, 9, 64) and d.test_x.shape == (200, 9, 64)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert set(d.train_y.tolist()) == set(range(8)) and torch.isfinite(d.train_x).all()
    assert not set(d.train_subject.tolist()) & set(d.test_subject.tolist())


def test_seeded_determinism():
    a, b = make_synthetic_har(300, 100, seed=5), make_synthetic_har(300, 100, seed=5)
    c = make_synthetic_har(300, 100, seed=6)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_imbalance_ratio_is_twenty_and_counts_decrease():
    d = make_synthetic_har(n_train=6000, n_test=2000, num_classes=10, imbalance=20.0, seed=0)
    counts = torch.bincount(d.train_y, minlength=10)
    assert torch.equal(counts, d.class_counts)
    assert counts.sum() == 6000 and (counts[:-1] >= counts[1:]).all()
    assert float(counts.max() / counts.min()) == pytest.approx(20.0, rel=0.05)
    test_counts = torch.bincount(d.test_y, minlength=10)
    assert float(test_counts.max() / test_counts.min()) == pytest.approx(20.0, rel=0.1)


def test_zipf_counts_and_balanced_test():
    counts = zipf_counts(1000, 4, 8.0)  # s = log 8 / log 4 = 1.5: p ~ 1, 0.354, 0.192, 0.125
    p = np.arange(1, 5) ** -1.5
    assert counts.sum() == 1000 and abs(counts[3] - 1000 * p[3] / p.sum()) < 1
    d = make_synthetic_har(200, 100, num_classes=4, balanced_test=True)
    assert torch.equal(torch.bincount(d.test_y), torch.full((4,), 25))


def test_pairs_share_a_posture_but_differ_in_motion():
    d = make_synthetic_har(600, 100, num_classes=4, noise=0.0, seed=2)
    gravity = torch.stack([d.train_x[d.train_y == k, :3].mean((0, 2)) for k in range(4)])
    assert torch.dist(gravity[0], gravity[1]) < 0.05  # classes 0 and 1 share a posture by design
    assert torch.dist(gravity[0], gravity[2]) > 0.05
    motion = torch.stack([d.train_x[d.train_y == k].std(2).mean(0) for k in range(4)])  # (4, 9) energy
    assert torch.cdist(motion, motion).fill_diagonal_(9).min() > 0.05


def test_bad_arguments():
    with pytest.raises(InputError):
        make_synthetic_har(num_classes=30)
    with pytest.raises(InputError):
        make_synthetic_har(imbalance=0.5)
    with pytest.raises(InputError):
        make_synthetic_har(n_subjects=4, test_subjects=4)
