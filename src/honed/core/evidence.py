"""Evidence for claims: a claim's statistic as an expression over measured quantities, its 95%
interval, and the verdict that interval gives against a threshold.

A statistic is built from :class:`Term` leaves (one arm's metric, or one extra value, as measured per
seed and, where the experiment kept them, per test example) with ordinary arithmetic::

    gain = result.metric("smoothout", "test_acc") - result.metric("sgd", "test_acc")

:func:`estimate` gives its value (computed on the seed means) and a 95% interval:

- **paired bootstrap** when every term has per-example outcomes: each of ``BOOTSTRAP_DRAWS`` replicates
  draws the test examples with replacement (one draw shared by every arm, metric and seed that has the
  same number of examples, so arms are compared example by example) and, with two or more seeds, the
  seeds with replacement (one draw shared by every term); the interval is the 2.5-97.5 percentile of
  the replicated statistic. With three or more seeds it is widened to also cover the seed-t interval
  below, so neither source of variation is under-counted, and clipped to :func:`attainable_range`.
- **seed t** when some term has no per-example outcomes and the run has at least ``MIN_SEEDS_FOR_T``
  seeds: the statistic per seed, value +- t(0.975, S-1) * sd / sqrt(S).
- **exact** for a value measured once with no sampling error (a byte count, a modelled op count): the
  interval is the value itself, and the claim says so.
- otherwise **no interval**, and a claim built on it is inconclusive.

A statistic of no measured term (a ratio of two config constants) is refused as evidence: it holds by
construction and belongs among the invariants.
"""
import math
import operator
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_DRAWS = 2000
MIN_SEEDS_FOR_T = 3
COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
VERDICTS = ("holds", "fails", "inconclusive")


class Stat:
    """An expression over measured terms; supports + - * / with numbers and other Stats, ``abs``
    and unary minus. Evaluate it with :func:`estimate`."""

    def terms(self) -> list["Term"]:
        raise NotImplementedError

    def evaluate(self, env: Callable[["Term"], np.ndarray]) -> np.ndarray:
        """The statistic with each term replaced by ``env(term)`` (arrays broadcast together)."""
        raise NotImplementedError

    def _op(self, other: "Stat | float", fn: Callable, symbol: str, swap: bool = False) -> "Stat":
        other = other if isinstance(other, Stat) else Const(float(other))
        return Apply(fn, (other, self) if swap else (self, other), symbol)

    def __add__(self, o): return self._op(o, np.add, "+")
    def __radd__(self, o): return self._op(o, np.add, "+", swap=True)
    def __sub__(self, o): return self._op(o, np.subtract, "-")
    def __rsub__(self, o): return self._op(o, np.subtract, "-", swap=True)
    def __mul__(self, o): return self._op(o, np.multiply, "*")
    def __rmul__(self, o): return self._op(o, np.multiply, "*", swap=True)
    def __truediv__(self, o): return self._op(o, np.divide, "/")
    def __rtruediv__(self, o): return self._op(o, np.divide, "/", swap=True)
    def __neg__(self): return Apply(np.negative, (self,), "-")
    def __abs__(self): return Apply(np.abs, (self,), "abs")


@dataclass(frozen=True, eq=False)
class Term(Stat):
    """One measured quantity: ``values[s]`` per seed and, optionally, ``outcomes[s]`` the per-example
    values (e.g. 0/1 correctness on each test image) whose mean is ``values[s]``."""

    label: str
    values: tuple[float, ...]
    outcomes: tuple[np.ndarray, ...] | None = None

    def terms(self) -> list["Term"]:
        return [self]

    def evaluate(self, env):
        return env(self)

    def __repr__(self) -> str:
        return self.label


@dataclass(frozen=True, eq=False)
class Const(Stat):
    value: float

    def terms(self) -> list[Term]:
        return []

    def evaluate(self, env):
        return np.asarray(self.value)

    def __repr__(self) -> str:
        return f"{self.value:g}"


@dataclass(frozen=True, eq=False)
class Apply(Stat):
    fn: Callable
    args: tuple[Stat, ...]
    symbol: str

    def terms(self) -> list[Term]:
        seen: dict[int, Term] = {}
        for arg in self.args:
            for term in arg.terms():
                seen.setdefault(id(term), term)
        return list(seen.values())

    def evaluate(self, env):
        with np.errstate(all="ignore"):  # 0/0 and x/0 give nan / inf, which estimate() reports as such
            return self.fn(*(a.evaluate(env) for a in self.args))

    def __repr__(self) -> str:
        if len(self.args) == 2 and self.symbol in "+-*/":
            return f"({self.args[0]!r} {self.symbol} {self.args[1]!r})"
        return f"{self.symbol}({', '.join(map(repr, self.args))})"


def smin(*stats: Stat | float) -> Stat:
    """Element-wise minimum of statistics (e.g. the worst of several arms)."""
    args = tuple(s if isinstance(s, Stat) else Const(float(s)) for s in stats)
    return Apply(lambda *a: np.minimum.reduce(np.broadcast_arrays(*a)), args, "min")


def smax(*stats: Stat | float) -> Stat:
    """Element-wise maximum of statistics (e.g. the best of several baselines)."""
    args = tuple(s if isinstance(s, Stat) else Const(float(s)) for s in stats)
    return Apply(lambda *a: np.maximum.reduce(np.broadcast_arrays(*a)), args, "max")


def attainable_range(stat: Stat) -> tuple[float, float]:
    """The values ``stat`` can take at all: a term with per-example outcomes is a mean of them, so it
    lies within their min and max (0/1 outcomes: [0, 1]); constants are themselves; + - * /, unary
    minus, abs, min and max combine ranges by interval arithmetic; anything else is unbounded. A seed-t
    widening is clipped to this range (an accuracy interval never reaches above 1)."""
    unbounded = (-math.inf, math.inf)
    if isinstance(stat, Const):
        return (stat.value, stat.value)
    if isinstance(stat, Term):
        if not stat.outcomes or not all(len(o) for o in stat.outcomes):
            return unbounded
        values = np.concatenate([np.asarray(o, dtype=float).ravel() for o in stat.outcomes])
        return (float(values.min()), float(values.max())) if np.all(np.isfinite(values)) else unbounded
    if not isinstance(stat, Apply):
        return unbounded
    ranges = [attainable_range(a) for a in stat.args]
    if stat.symbol in ("min", "max"):
        pick = min if stat.symbol == "min" else max
        return (pick(r[0] for r in ranges), pick(r[1] for r in ranges))
    if len(ranges) == 1:
        (lo, hi), = ranges
        if stat.symbol == "-":
            return (-hi, -lo)
        if stat.symbol == "abs":
            return (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))
        return unbounded
    if len(ranges) != 2 or stat.symbol not in "+-*/":
        return unbounded
    (a, b), (c, d) = ranges
    if stat.symbol == "+":
        return (a + c, b + d)
    if stat.symbol == "-":
        return (a - d, b - c)
    if stat.symbol == "/" and c <= 0 <= d:
        return unbounded
    if stat.symbol == "/":
        c, d = 1 / d, 1 / c
    with np.errstate(all="ignore"):
        corners = [x * y for x in (a, b) for y in (c, d)]
    return unbounded if any(math.isnan(v) for v in corners) else (min(corners), max(corners))


@dataclass(frozen=True)
class Estimate:
    """A statistic's value, its 95% interval (None when it has none), how the interval was computed,
    and, when value or interval is missing, why."""

    value: float | None
    interval: tuple[float, float] | None
    method: str
    reason: str = ""


def estimate(stat: "Stat | float | None", exact: bool = False, key: str = "",
             draws: int = BOOTSTRAP_DRAWS) -> Estimate:
    """Value and 95% interval of ``stat`` (see the module docstring for the three methods). ``key``
    seeds the bootstrap so the same claim on the same data gives the same interval."""
    if stat is None:
        return Estimate(None, None, "none", "not measured")
    if not isinstance(stat, Stat):
        value = finite_or_none(stat)
        if exact:
            return _exact(value, stat)
        return Estimate(value, None, "none", "a plain number with no per-seed or per-example data: no interval")
    terms = stat.terms()
    if not terms:
        return Estimate(finite_or_none(stat.evaluate(lambda t: None)), None, "none",
                        "depends on no measurement (holds or fails by construction): record it as an invariant")
    with np.errstate(all="ignore"):
        point = float(stat.evaluate(lambda t: np.asarray(np.mean(t.values))))
    if not math.isfinite(point):
        return Estimate(None, None, "none", f"measured value is {point}")
    if exact:
        return _exact(point, point)
    seeds = len(terms[0].values)
    if any(len(t.values) != seeds for t in terms):
        raise ValueError(f"terms of {stat!r} have different seed counts")
    if all(t.outcomes is not None for t in terms):
        return _bootstrap_estimate(stat, terms, point, seeds, key, draws)
    if seeds >= MIN_SEEDS_FOR_T:
        lo, hi = seed_t_interval(stat, point, seeds)
        return Estimate(point, (lo, hi), f"t over {seeds} seeds (paired per seed)")
    missing = ", ".join(t.label for t in terms if t.outcomes is None)
    return Estimate(point, None, "none", f"no interval: {seeds} seed(s) and no per-example outcomes for {missing}")


def _exact(value: float | None, raw) -> Estimate:
    if value is None:
        return Estimate(None, None, "exact", f"measured value is {raw}")
    return Estimate(value, (value, value), "exact (measured once, no sampling error)")


def finite_or_none(value) -> float | None:
    """``float(value)`` when it is a finite number, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def seed_t_interval(stat: Stat, point: float, seeds: int) -> tuple[float, float]:
    """``point +- t(0.975, S-1) * sd / sqrt(S)`` with sd over the statistic evaluated per seed."""
    from scipy.stats import t as student_t

    with np.errstate(all="ignore"):
        per_seed = np.asarray(stat.evaluate(lambda t: np.asarray(t.values, dtype=float)), dtype=float)
    per_seed = np.broadcast_to(per_seed, (seeds,))
    if not np.all(np.isfinite(per_seed)):
        return (-math.inf, math.inf)
    half = float(student_t.ppf(0.5 + CONFIDENCE / 2, seeds - 1) * per_seed.std(ddof=1) / math.sqrt(seeds))
    return point - half, point + half


def _bootstrap_estimate(stat: Stat, terms: list[Term], point: float, seeds: int, key: str,
                        draws: int) -> Estimate:
    reps = bootstrap_replicates(stat, terms, seeds, key, draws)
    finite = reps[np.isfinite(reps)]
    sizes = sorted({len(o) for t in terms for o in t.outcomes})  # type: ignore[union-attr]
    method = (f"paired bootstrap over {'/'.join(map(str, sizes))} examples"
              f"{f' and {seeds} seeds' if seeds > 1 else ''} ({draws} draws)")
    if len(finite) < 0.99 * len(reps):
        return Estimate(point, None, method, f"{len(reps) - len(finite)} of {len(reps)} replicates not finite")
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = (float(v) for v in np.percentile(finite, [tail, 100 - tail]))
    lo, hi = min(lo, point), max(hi, point)
    if seeds >= MIN_SEEDS_FOR_T:
        t_lo, t_hi = seed_t_interval(stat, point, seeds)
        floor, ceiling = attainable_range(stat)
        lo, hi = max(min(lo, t_lo), floor), min(max(hi, t_hi), ceiling)
        method += f", widened to cover t over {seeds} seeds (within the values it can take)"
    return Estimate(point, (lo, hi), method)


def bootstrap_replicates(stat: Stat, terms: Sequence[Term], seeds: int, key: str, draws: int,
                         block: int = 250) -> np.ndarray:
    """``draws`` bootstrap replicates of ``stat`` (see the module docstring), computed in blocks so
    memory stays at ``block x examples``."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    out = []
    for start in range(0, draws, block):
        n = min(block, draws - start)
        seed_draw = rng.integers(0, seeds, size=(n, seeds)) if seeds > 1 else np.zeros((n, 1), dtype=int)
        example_draws: dict[int, np.ndarray] = {}

        def draw(size: int) -> np.ndarray:
            if size not in example_draws:
                example_draws[size] = rng.integers(0, size, size=(n, size))
            return example_draws[size]

        def env(term: Term) -> np.ndarray:
            per_seed = np.stack([np.asarray(o, dtype=float)[draw(len(o))].mean(axis=1) for o in term.outcomes])
            return np.take_along_axis(per_seed.T, seed_draw, axis=1).mean(axis=1)  # (n,)

        for size in sorted({len(o) for t in terms for o in t.outcomes}):  # fixed draw order: reproducible
            draw(size)
        with np.errstate(all="ignore"):
            out.append(np.broadcast_to(np.asarray(stat.evaluate(env), dtype=float), (n,)))
    return np.concatenate(out)


def judge(est: Estimate, comparison: str, threshold: float) -> tuple[str, str]:
    """``(verdict, reason)``: holds when the whole interval lies on the passing side of ``threshold``,
    fails when it lies wholly on the failing side, inconclusive otherwise or without an interval."""
    passes = COMPARISONS[comparison]
    if est.value is None:
        return "inconclusive", est.reason or "not measured"
    if est.interval is None:
        return "inconclusive", est.reason or "no interval"
    lo, hi = est.interval
    near, far = (lo, hi) if comparison in (">=", ">") else (hi, lo)
    if passes(near, threshold):
        return "holds", ""
    if not passes(far, threshold):
        return "fails", ""
    return "inconclusive", f"the interval [{lo:.4g}, {hi:.4g}] reaches both sides of {threshold:.4g}"
