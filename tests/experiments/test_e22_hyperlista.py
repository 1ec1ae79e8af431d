"""22-hyperlista experiment (HyperLISTA, arXiv:2110.15900): per-instance NMSE outcomes and the dB claims."""
import math

import numpy as np
import torch

import honed.experiments.e22_hyperlista as e22
from honed.core.evidence import Term, estimate
from honed.sequence.hyperlista import ISTA, gaussian_sensing_matrix, measure, sample_sparse_signals


def test_per_instance_errors_average_to_the_settings_nmse():
    gen = torch.Generator().manual_seed(0)
    A = gaussian_sensing_matrix(10, 20, gen)
    x = sample_sparse_signals(32, 20, 0.2, generator=gen)
    out = e22.layer_curves(ISTA(A, 3, 0.1), {"seen": (measure(A, x), x)})
    assert len(out["final"]["seen"]) == 32 and len(out["curves"]["seen"]) == 3
    assert math.isclose(10 * math.log10(np.mean(out["final"]["seen"])), out["curves"]["seen"][-1], abs_tol=1e-4)


def test_decibel_gap_is_the_log_ratio_of_mean_errors():
    a = Term("a", (0.02,), (np.array([0.01, 0.03]),))
    b = Term("b", (0.2,), (np.array([0.1, 0.3]),))
    est = estimate(e22.decibels(a) - e22.decibels(b), key="gap")
    assert math.isclose(est.value, -10.0, abs_tol=1e-9)  # 10 log10(0.02 / 0.2)


def test_win_count_counts_settings_at_or_below_the_bound():
    diffs = [Term(f"d{i}", (v,)) for i, v in enumerate((-1.0, 0.0, 2.0))]
    count = sum((e22.at_most(d, 0.0) for d in diffs[1:]), e22.at_most(diffs[0], 0.0))
    assert estimate(count).value == 2.0
