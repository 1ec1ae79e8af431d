"""Intervals and verdicts (honed.core.evidence) against hand-computed cases."""
import json
import math

import numpy as np
import pytest

from honed.core.evidence import Const, Term, attainable_range, estimate, judge, smax, smin
from honed.core.experiment import Claim, Invariant, Precondition, Result


def test_seed_t_interval_of_a_paired_difference_matches_the_hand_computed_one():
    # per-seed differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3)
    a, b = Term("a", (11.0, 12.0, 13.0)), Term("b", (10.0, 10.0, 10.0))
    est = estimate(a - b)
    half = 4.302653 / math.sqrt(3)
    assert est.value == pytest.approx(2.0)
    assert est.interval == pytest.approx((2 - half, 2 + half), abs=1e-5)
    assert est.method.startswith("t over 3 seeds")


def test_bootstrap_interval_of_a_binomial_mean_is_close_to_the_normal_one():
    outcomes = np.array([1.0] * 80 + [0.0] * 20)  # p = 0.8 on 100 examples, one seed
    est = estimate(Term("acc", (0.8,), (outcomes,)), key="binomial")
    half = 1.959964 * math.sqrt(0.8 * 0.2 / 100)  # 0.0784
    assert est.value == pytest.approx(0.8)
    assert est.interval[0] == pytest.approx(0.8 - half, abs=0.012)
    assert est.interval[1] == pytest.approx(0.8 + half, abs=0.012)
    assert "paired bootstrap over 100 examples" in est.method


def test_bootstrap_is_paired_over_examples():
    rng = np.random.default_rng(0)
    base = (rng.random(400) < 0.7).astype(float)
    same = Term("a", (base.mean(),), (base,))
    twin = Term("b", (base.mean(),), (base.copy(),))
    assert estimate(same - twin).interval == (0.0, 0.0)  # identical per-example outcomes: no spread
    flipped = base.copy()
    flipped[:8] = 1.0  # the method fixes a few examples, keeps the rest
    better = Term("m", (flipped.mean(),), (flipped,))
    paired = estimate(better - same, key="k")
    independent = (rng.random(400) < 0.7).astype(float)
    unpaired = estimate(better - Term("c", (independent.mean(),), (independent,)), key="k")
    assert paired.interval[1] - paired.interval[0] < 0.5 * (unpaired.interval[1] - unpaired.interval[0])


def test_bootstrap_is_reproducible_for_the_same_key():
    outcomes = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    term = Term("acc", (outcomes.mean(),), (outcomes,))
    assert estimate(term, key="x").interval == estimate(term, key="x").interval


def test_a_seed_t_widening_never_leaves_the_values_an_accuracy_can_take():
    # three seeds of 4 images: accuracies 1.0, 0.25, 1.0 -> t half width ~1.08 around 0.75 would reach 1.83
    outcomes = (np.ones(4), np.array([1.0, 0.0, 0.0, 0.0]), np.ones(4))
    acc = Term("acc", tuple(float(o.mean()) for o in outcomes), outcomes)
    est = estimate(acc, key="clip")
    assert est.interval[1] == 1.0 and est.interval[0] >= 0.0
    assert "within the values it can take" in est.method


def test_attainable_range_by_interval_arithmetic():
    acc = Term("a", (0.5,), (np.array([0.0, 1.0]),))
    other = Term("b", (0.5,), (np.array([0.0, 1.0]),))
    assert attainable_range(acc - other) == (-1.0, 1.0)
    assert attainable_range(2 * acc + 1) == (1.0, 3.0)
    assert attainable_range(abs(acc - other)) == (0.0, 1.0)
    assert attainable_range(smax(acc, Const(0.3))) == (0.3, 1.0)
    assert attainable_range(acc / other) == (-math.inf, math.inf)  # divisor range holds 0
    assert attainable_range(Term("t", (1.0, 2.0))) == (-math.inf, math.inf)  # no outcomes: unbounded


def test_min_max_and_abs_evaluate_elementwise():
    a, b = Term("a", (1.0, 2.0, 3.0)), Term("b", (3.0, 2.0, 1.0))
    assert estimate(smin(a, b)).value == pytest.approx(2.0)  # on seed means: min(2, 2)
    assert estimate(smax(a, 2.5)).value == pytest.approx(2.5)
    assert estimate(abs(b - a)).value == pytest.approx(0.0)


@pytest.mark.parametrize("interval, comparison, threshold, verdict", [
    ((0.6, 0.9), ">=", 0.5, "holds"), ((0.2, 0.4), ">=", 0.5, "fails"), ((0.4, 0.6), ">=", 0.5, "inconclusive"),
    ((0.5, 0.6), ">=", 0.5, "holds"), ((0.5, 0.6), ">", 0.5, "inconclusive"), ((0.1, 0.5), ">", 0.5, "fails"),
    ((0.1, 0.4), "<=", 0.5, "holds"), ((0.6, 0.7), "<=", 0.5, "fails"), ((0.4, 0.6), "<", 0.5, "inconclusive"),
])
def test_verdict_follows_where_the_interval_lies(interval, comparison, threshold, verdict):
    from honed.core.evidence import Estimate

    assert judge(Estimate(sum(interval) / 2, interval, "t"), comparison, threshold)[0] == verdict


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_measurements_never_hold(bad):
    claim = Claim.check("c", Term("a", (bad, 1.0, 1.0)) - Term("b", (0.0, 0.0, 0.0)), ">=", 0.0, "p")
    assert claim.verdict == "inconclusive" and claim.measured is None and "measured value" in claim.reason
    assert Claim.check("c", bad, ">=", 0.0, "p", exact=True).verdict == "inconclusive"


def test_a_statistic_of_no_measurement_is_refused_as_evidence():
    from honed.core.evidence import Const

    claim = Claim.check("ratio of two config constants", Const(10.0) / Const(20.0), "<=", 0.5, "p")
    assert claim.verdict == "inconclusive" and "invariant" in claim.reason


def test_a_plain_number_is_inconclusive_unless_exact():
    assert Claim.check("c", 3.0, ">=", 1.0, "p").verdict == "inconclusive"
    exact = Claim.check("bytes", 3.0, ">=", 1.0, "p", exact=True)
    assert exact.verdict == "holds" and exact.interval == (3.0, 3.0) and exact.interval_method.startswith("exact")


def test_one_seed_without_outcomes_has_no_interval():
    claim = Claim.check("c", Term("a", (2.0,)) - Term("b", (1.0,)), ">=", 0.0, "p")
    assert claim.interval is None and claim.verdict == "inconclusive" and "no interval" in claim.reason


def toy_result(preset: str = "small", pre_value: float = 0.9) -> Result:
    result = Result(id="99-toy", title="t", family="f", preset=preset, seeds=[0, 1, 2], config={},
                    environment={}, runtime_s=0.0, method=["ours"], baselines=["base"], arms={},
                    extra={}, curves={}, claims=[], notes=[])
    gain = Term("ours", (3.0, 3.1, 2.9)) - Term("base", (1.0, 1.0, 1.0))
    result.preconditions = [Precondition.check("above chance", Term("acc", (pre_value,) * 3), ">", 0.5, "needed")]
    result.claims = [Claim.check("needs it", gain, ">=", 1.0, "p"),
                     Claim.check("independent", gain, ">=", 1.0, "p", requires=())]
    result.invariants = [Invariant.check("by construction", 0.5, "<=", 0.5, "config ratio")]
    return result.rejudge()


def test_a_failed_precondition_makes_its_claims_inconclusive():
    held = toy_result(pre_value=0.9)
    assert [c.verdict for c in held.claims] == ["holds", "holds"]
    failed = toy_result(pre_value=0.2)
    assert [c.verdict for c in failed.claims] == ["inconclusive", "holds"]
    assert "precondition 'above chance' fails" in failed.claims[0].reason


def test_smoke_results_are_plumbing_checks_never_evidence():
    result = toy_result(preset="smoke")
    assert all(c.verdict == "inconclusive" and "plumbing" in c.reason for c in result.claims)


def test_invariants_never_enter_the_status():
    result = toy_result()
    result.invariants[0].measured = 99.0
    result.rejudge()
    assert result.invariants[0].holds is False and result.verdicts == {"holds": 2, "fails": 0, "inconclusive": 0}


def test_stored_verdicts_are_recomputed_on_load():
    data = json.loads(json.dumps(toy_result().to_json()))
    data["claims"][0]["verdict"] = "fails"
    data["claims"][0]["measured"] = None  # a tampered or NaN measurement must never show as holding
    data["claims"][1]["verdict"] = "fails"
    loaded = Result.from_json(data)
    assert [c.verdict for c in loaded.claims] == ["inconclusive", "holds"]


def test_result_json_is_strict_json_with_reasons_for_non_finite_values():
    result = toy_result()
    result.arms = {"ours": {"acc": {"mean": math.nan, "std": math.nan, "values": [math.nan, 1.0, math.inf]}}}
    text = json.dumps(result.to_json(), allow_nan=False)

    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    data = json.loads(text, parse_constant=refuse)
    assert data["arms"]["ours"]["acc"]["mean"] is None
    assert data["non_finite"]["arms.ours.acc.values[2]"] == "inf"


def test_an_old_schema_result_loads_with_a_note_to_rerun():
    data = json.loads(json.dumps(toy_result().to_json()))
    data["schema"] = "honed-result-v1"
    for c in data["claims"]:
        c.pop("interval"), c.pop("verdict")
        c["passed"] = True
    loaded = Result.from_json(data)
    assert all(c.verdict == "inconclusive" and "--force" in c.reason for c in loaded.claims)
    assert any("rerun with --force" in n for n in loaded.notes)
