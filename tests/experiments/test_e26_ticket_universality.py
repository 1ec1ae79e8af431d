"""26-ticket-universality experiment (arXiv:2110.03210): the per-seed margin statistics its claims use."""
import math

from honed.experiments.e26_ticket_universality import _nan_if_none, _unrelated_margin, pair_names


def test_unrelated_margin_against_hand_computed_values():
    pairs = pair_names(("a", "b", "gaussian"))  # a->b, a->g, b->a, b->g, g->a, g->b
    values = [1.0, 5.0, 3.0, 7.0, 5.0, 7.0]
    # pairs with gaussian: 5, 7, 5, 7 -> 6; other tasks over related pairs: a {1, 3} -> 2, b {1, 3} -> 2
    assert _unrelated_margin(pairs, values) == 4.0


def test_unrelated_margin_is_missing_without_the_unrelated_task():
    assert _unrelated_margin(pair_names(("a", "b")), [1.0, 2.0]) is None
    assert math.isnan(_nan_if_none(None)) and _nan_if_none(0.5) == 0.5
