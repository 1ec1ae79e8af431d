"""13-smoothing-regularizer experiment pieces: per-point certified outcomes whose means are the
certified accuracy and the ACR."""
import numpy as np

from honed.experiments.e13_smoothing_regularizer import RADII, arm_metrics, certified_correct, correct_radii
from honed.robust.certify import ABSTAIN

POINTS = {  # 4 points: right with radius 0.6, right with 0.2, wrong class, abstained
    "y": [1, 2, 3, 4], "vote": [1, 2, 0, 4],
    "cohen_class": [1, 2, 0, ABSTAIN], "cohen_radius": [0.6, 0.2, 0.9, 0.0],
    "cohen_half_class": [1, 2, 0, ABSTAIN], "cohen_half_radius": [0.55, 0.15, 0.85, 0.0],
    "tight_class": [1, 2, 0, ABSTAIN], "tight_radius": [0.7, 0.3, 1.0, 0.0],
}


def test_certified_correct_needs_the_true_class_and_a_large_enough_radius():
    assert certified_correct(POINTS, "cohen", 0.0) == [1.0, 1.0, 0.0, 0.0]
    assert certified_correct(POINTS, "cohen", 0.5) == [1.0, 0.0, 0.0, 0.0]
    assert certified_correct(POINTS, "tight", 0.25) == [1.0, 1.0, 0.0, 0.0]


def test_acr_per_point_counts_zero_for_wrong_or_abstained_points():
    assert correct_radii(POINTS, "cohen").tolist() == [0.6, 0.2, 0.0, 0.0]


def test_arm_metrics_are_per_point_lists_whose_means_are_the_paper_metrics():
    m = arm_metrics(POINTS, sigma=0.25)
    assert all(isinstance(v, list) and len(v) == 4 for v in m.values())
    assert np.mean(m["acr_cohen"]) == np.mean([0.6, 0.2, 0.0, 0.0])
    assert np.mean(m["acr_tight"]) == np.mean([0.7, 0.3, 0.0, 0.0])
    assert m["cert_acc_at_sigma"] == [1.0, 0.0, 0.0, 0.0]
    assert m["abstain_cohen"] == [0.0, 0.0, 0.0, 1.0]
    assert m["smoothed_acc"] == [1.0, 1.0, 0.0, 1.0]
    assert {f"cert_acc_r{r:g}" for r in RADII} <= set(m)
