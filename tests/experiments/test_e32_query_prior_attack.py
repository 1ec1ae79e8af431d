"""32-query-prior-attack experiment pieces: per-image outcomes of every surrogate/victim pair are
concatenated (same images for every arm), numbers are averaged over the pairs."""
import math

import torch

from honed.experiments.e32_query_prior_attack import over_pairs, record


def test_record_keeps_success_and_queries_per_image():
    x = torch.zeros(3, 4)
    x_adv = x + torch.tensor([[0.1], [0.0], [0.2]])
    rec = record(x, x_adv, torch.tensor([True, False, True]), torch.tensor([1, 5, 2]), torch.tensor([1, -1, 2]))
    assert rec["success"] == [1.0, 0.0, 1.0] and rec["queries"] == [1.0, 5.0, 2.0]
    assert rec["mean_queries_to_success"] == 1.5
    assert math.isclose(rec["mean_linf"], 0.15, rel_tol=1e-6)


def test_over_pairs_concatenates_lists_in_pair_order_and_averages_numbers_skipping_nan():
    pairs = [{"a": {"success": [1.0, 0.0], "mean_l2": 0.5}}, {"a": {"success": [1.0], "mean_l2": float("nan")}},
             {"a": {"success": [0.0, 0.0], "mean_l2": 1.5}}]
    out = over_pairs(pairs)
    assert out["a"]["success"] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert out["a"]["mean_l2"] == 1.0
