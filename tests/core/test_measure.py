"""honed.core.measure: Stopwatch sums wall and CPU seconds over the blocks run under it."""
import time

from honed.core.measure import Stopwatch


def test_stopwatch_sums_its_blocks_and_ignores_time_outside(monkeypatch):
    ticks = iter([0.0, 2.0, 10.0, 13.0])  # perf_counter: block 1 = 2 s, block 2 = 3 s
    cpu = iter([1.0, 1.5, 5.0, 5.25])     # process_time: 0.5 s + 0.25 s
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(time, "process_time", lambda: next(cpu))
    clock = Stopwatch()
    with clock:
        pass
    with clock as same:
        assert same is clock
    assert (clock.wall, clock.cpu) == (5.0, 0.75)


def test_stopwatch_counts_a_block_that_raises_and_lets_the_error_through(monkeypatch):
    ticks, cpu = iter([0.0, 4.0]), iter([0.0, 1.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(time, "process_time", lambda: next(cpu))
    clock = Stopwatch()
    try:
        with clock:
            raise ValueError("inside")
    except ValueError:
        pass
    else:
        raise AssertionError("the error was swallowed")
    assert (clock.wall, clock.cpu) == (4.0, 1.0)
