"""35-psrr-maxpool-nms experiment (PSRR-MaxpoolNMS, arXiv:2105.12990): per-repeat speed-ups and timing layout."""
from dataclasses import replace

import pytest

import honed.experiments.e35_psrr_maxpool_nms as e35


def test_speedups_pair_the_arms_of_one_repeat_at_the_largest_size():
    samples = {"greedy": [[1.0, 1.0], [10.0, 30.0]], "psrr": [[5.0, 5.0], [2.0, 3.0]]}
    assert e35.repeat_speedups(samples, "psrr") == [5.0, 10.0]
    assert e35.repeat_speedups(samples, "greedy") == [1.0, 1.0]


def test_timing_keeps_every_repeat_of_every_arm_and_size():
    cfg = replace(e35.PSRRConfig(), timing_sizes=(20, 40), timing_repeats=3, slope_from=20)
    times = e35.timing(cfg, 0)
    assert set(times) == set(e35.ARMS)
    for arm in e35.ARMS:
        assert [len(reps) for reps in times[arm]] == [3, 3]
        assert all(ms > 0 for reps in times[arm] for ms in reps)


def test_slope_of_a_linear_runtime_is_one():
    assert e35.loglog_slope([10, 100, 1000], [1.0, 10.0, 100.0]) == pytest.approx(1.0)
