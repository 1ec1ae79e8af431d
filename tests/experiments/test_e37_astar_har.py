"""37-astar-har experiment (A*HAR Mean Teacher, arXiv:2101.04859): per-window outcomes and batch composition."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import honed.experiments.e37_astar_har as e37
from honed.sequence.har_data import make_synthetic_har
from honed.sequence.mean_teacher import TwoStreamBatches, balanced_labeled_indices


def test_window_outcomes_average_to_the_macro_recalls():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 5])
    pred = torch.tensor([0, 0, 1, 0, 1, 0, 2, 2, 0, 3, 0, 5])
    recall = torch.tensor([3 / 4, 1 / 2, 2 / 3, 1.0, 0.0, 1.0])
    out = e37.window_outcomes(pred, y, 6)
    head, tail = e37.class_groups(6)
    assert np.mean(out["accuracy"]) == pytest.approx(8 / 12)
    assert np.mean(out["balanced_accuracy"]) == pytest.approx(float(recall.mean()))
    assert np.mean(out["head_recall"]) == pytest.approx(float(recall[head].mean()))
    assert np.mean(out["tail_recall"]) == pytest.approx(float(recall[tail].mean()))
    assert len(out["head_recall"]) == int(torch.isin(y, torch.tensor(head)).sum())


def test_mean_teacher_gets_two_stream_batches_and_the_vary_arm_the_cards_mix():
    cfg = replace(e37.AStarHARConfig(), n_train=300, steps=3, labeled_per_batch=24)
    data = make_synthetic_har(cfg.n_train, 100, cfg.num_classes, cfg.imbalance, seed=0)
    labeled = balanced_labeled_indices(data.train_y, 50, 10, torch.Generator().manual_seed(0))
    two_stream = e37.make_batches(cfg, data, labeled, "mean_teacher", 0)
    assert isinstance(two_stream, TwoStreamBatches)
    assert all(int((t >= 0).sum()) == 24 for _, t in two_stream)
    vary = e37.make_batches(cfg, data, labeled, e37.VARY_ARM, 0)
    assert not isinstance(vary, TwoStreamBatches)
    supervised = e37.make_batches(cfg, data, labeled, "supervised", 0)
    assert all(bool((t >= 0).all()) for _, t in supervised)
