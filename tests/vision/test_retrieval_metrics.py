"""Tests of the DASR (arXiv:2002.00185) instance-search metrics against hand-computed values."""
import pytest
import torch

from honed.core.errors import InputError
from honed.vision.retrieval_metrics import average_precision, localisation_recall, mean_average_precision


def test_average_precision_matches_hand_computed_ranking():
    # ranking by score: items 2, 0, 3, 1, 4 -> relevance 1, 0, 1, 0, 1
    scores = torch.tensor([0.8, 0.3, 0.9, 0.5, 0.1])
    relevant = torch.tensor([False, False, True, True, True])
    expected = (1 / 1 + 2 / 3 + 3 / 5) / 3
    assert average_precision(scores, relevant) == pytest.approx(expected)


def test_mean_average_precision_averages_queries_and_ties_share_a_threshold():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.5, 1.0]])
    relevant = torch.tensor([[True, False, False], [True, False, False]])
    # query 0: the relevant item ties with an irrelevant one at the top -> precision 1/2 whichever comes
    # first; query 1: relevant last -> 1/3
    assert mean_average_precision(scores, relevant) == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_perfect_and_bad_inputs():
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, True, False])) == 1.0
    with pytest.raises(InputError):
        average_precision(torch.tensor([1.0, 2.0]), torch.tensor([False, False]))
    with pytest.raises(InputError):
        mean_average_precision(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.bool))


def test_localisation_recall_counts_best_box_per_ground_truth():
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    pred = [torch.tensor([[0.0, 0.0, 10.0, 8.0], [50.0, 50.0, 60.0, 60.0]]),  # IoU 0.8 with gt 0; gt 1 missed
            torch.zeros(0, 4)]
    assert localisation_recall(pred, gt, 0.5) == pytest.approx(1 / 3)
    assert localisation_recall(pred, gt, 0.85) == 0.0
