"""The experiment protocol: an Experiment runs one seed at a time; the runner aggregates seeds into a
Result whose claims, preconditions and invariants are judged from the measured values.

Result schema ``honed-result-v2`` (``result.json``; see docs/results.md):
  id, title, family, preset, seeds, config, environment, runtime_s, method, baselines,
  arms: {arm: {metric: {mean, std, values, examples?}}}, extra, curves,
  claims / preconditions: [{name, metric, comparison, threshold, paper, measured, interval,
  interval_method, requires, verdict, reason}], invariants: [{name, measured, comparison, threshold,
  description, holds}], notes, status, verdicts, non_finite.
Verdicts are derived: whenever a result is built or loaded they are recomputed from the stored
measurements and intervals, never trusted from the file.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from honed.core.config import ExperimentConfig
from honed.core.evidence import COMPARISONS, VERDICTS, Estimate, Stat, Term, estimate, finite_or_none, judge
from honed.core.registry import Registry

SCHEMA = "honed-result-v2"
SMOKE_REASON = "smoke preset: a plumbing check, never evidence"


@dataclass
class Claim:
    """A claim of the paper tested on measured values: ``measured <comparison> threshold``, judged on
    the measured value's 95% interval (see :mod:`honed.core.evidence`).

    Build it with :meth:`check`. ``requires`` names the preconditions the claim depends on (None: all
    of the experiment's preconditions). ``verdict`` and ``reason`` are filled by :meth:`Result.rejudge`.
    """

    name: str
    metric: str
    comparison: str
    threshold: float
    paper: str
    measured: float | None
    interval: tuple[float, float] | None = None
    interval_method: str = "none"
    requires: tuple[str, ...] | None = None
    verdict: str = "inconclusive"
    reason: str = ""
    missing: str = ""  # why measured or interval is absent (kept so a loaded result can say it)

    @classmethod
    def check(cls, name: str, measured: "Stat | float | None", comparison: str, threshold: float,
              paper: str, metric: str | None = None, *, exact: bool = False,
              requires: tuple[str, ...] | list[str] | None = None) -> "Claim":
        """A claim on ``measured`` (a :class:`~honed.core.evidence.Stat` built from
        ``result.metric(...)``, or a plain number, which gets no interval unless ``exact``)."""
        if comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {list(COMPARISONS)}, got {comparison!r}")
        est = estimate(measured, exact=exact, key=name)
        claim = cls(name, metric or name, comparison, float(threshold), paper, est.value,
                    est.interval, est.method, None if requires is None else tuple(requires), missing=est.reason)
        claim.verdict, claim.reason = claim.intrinsic()
        return claim

    def intrinsic(self) -> tuple[str, str]:
        """The verdict of the interval alone (before preconditions and preset are considered)."""
        est = Estimate(finite_or_none(self.measured), _interval(self.interval), self.interval_method, self.missing)
        return judge(est, self.comparison, self.threshold)

    @property
    def passed(self) -> bool:
        """True only when the verdict is ``holds``."""
        return self.verdict == "holds"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["interval"] = list(self.interval) if self.interval else None
        data["requires"] = list(self.requires) if self.requires is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Claim":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["interval"] = _interval(kw.get("interval"))
        if kw.get("requires") is not None:
            kw["requires"] = tuple(kw["requires"])
        return cls(**kw)


@dataclass
class Precondition(Claim):
    """What the setting must show for the claims to mean anything (every trained arm above chance by a
    margin, the Oracle above Random, a teacher confident enough...): judged like a claim; a claim that
    requires it is inconclusive unless it holds. ``paper`` holds the reason it is needed."""


@dataclass
class Invariant:
    """A check true by construction of the method or config (a MACs cut enforced by the pruner, a
    byte count fixed by the code width): shown as a test of the plumbing, never counted as a claim."""

    name: str
    measured: float | None
    comparison: str
    threshold: float
    description: str
    holds: bool = False

    @classmethod
    def check(cls, name: str, measured: float | None, comparison: str, threshold: float,
              description: str) -> "Invariant":
        inv = cls(name, finite_or_none(measured), comparison, float(threshold), description)
        inv.holds = inv.recompute()
        return inv

    def recompute(self) -> bool:
        value = finite_or_none(self.measured)
        return value is not None and COMPARISONS[self.comparison](value, self.threshold)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Invariant":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def arms_above_chance(result: "Result", arms: list[str] | tuple[str, ...], metric: str, chance: float,
                      margin: float) -> list[Precondition]:
    """One precondition per arm: its ``metric`` is above ``chance + margin`` (on the interval), so a
    comparison between arms is not a comparison of coin flips."""
    return [Precondition.check(f"{arm} above chance", result.metric(arm, metric), ">", chance + margin,
                               f"an arm at chance ({chance:.3g}) cannot show the effect; bar = chance + {margin:.3g}")
            for arm in arms]


def _interval(raw: Any) -> tuple[float, float] | None:
    if raw is None:
        return None
    lo, hi = (finite_or_none(v) for v in raw)
    if lo is None or hi is None:  # an unbounded side (a seed-t of non-finite per-seed values)
        return (-math.inf if lo is None else lo, math.inf if hi is None else hi)
    return (lo, hi)


@dataclass
class SeedOutput:
    """What one seed of an experiment measured.

    arms: {arm name: {metric: value}} - the method and each baseline. A value is a float, or a list of
      per-example outcomes (e.g. 0/1 correctness per test image, in the same example order for every
      arm), whose mean is the metric: claims on it then get a paired bootstrap interval.
    extra: scalar or small JSON values that belong to no arm (e.g. a variance table).
    curves: {curve name: {arm: [floats]}} for plots (e.g. per-epoch test accuracy).
    """

    arms: dict[str, dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    runtime_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SeedOutput":
        out = cls(**data)
        out.arms = {arm: {m: _nan_for_none(v) for m, v in by.items()} for arm, by in out.arms.items()}
        return out


def _nan_for_none(value: Any) -> Any:
    """Strict JSON stores a non-finite float as null: read it back as NaN (lists element-wise)."""
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [math.nan if v is None else v for v in value]
    return value


@dataclass
class Result:
    """The aggregate of a run over its seeds; the one thing written to ``result.json``."""

    id: str
    title: str
    family: str
    preset: str
    seeds: list[int]
    config: dict[str, Any]
    environment: dict[str, Any]
    runtime_s: float
    method: list[str]
    baselines: list[str]
    arms: dict[str, dict[str, dict[str, Any]]]
    extra: dict[str, Any]
    curves: dict[str, Any]
    claims: list[Claim]
    notes: list[str]
    preconditions: list[Precondition] = field(default_factory=list)
    invariants: list[Invariant] = field(default_factory=list)
    schema: str = SCHEMA
    non_finite: dict[str, str] = field(default_factory=dict)  # path -> "nan"/"inf" of values stored as null
    # per-example outcomes {(arm, metric): [array per seed]}: in memory only (the seed files keep them)
    outcomes: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict, repr=False)

    def rejudge(self) -> "Result":
        """Recompute every verdict from the measurements: preconditions on their intervals; claims on
        theirs, then inconclusive at the smoke preset, under an old schema, or when a precondition they
        require does not hold; invariants by their plain comparison."""
        for pre in self.preconditions:
            pre.verdict, pre.reason = pre.intrinsic()
        state = {p.name: p for p in self.preconditions}
        for claim in self.claims:
            claim.verdict, claim.reason = claim.intrinsic()
            names = claim.requires if claim.requires is not None else tuple(state)
            unknown = [n for n in names if n not in state]
            blocked = [state[n] for n in names if n in state and state[n].verdict != "holds"]
            if self.schema != SCHEMA:
                claim.verdict, claim.reason = "inconclusive", f"written by {self.schema} (no interval): rerun with --force"
            elif self.preset == "smoke":
                claim.verdict, claim.reason = "inconclusive", SMOKE_REASON
            elif unknown:
                claim.verdict, claim.reason = "inconclusive", f"requires unknown precondition(s) {', '.join(unknown)}"
            elif blocked:
                first = blocked[0]
                claim.verdict = "inconclusive"
                claim.reason = (f"precondition '{first.name}' {first.verdict} (measured "
                                f"{_short(first.measured)} {first.comparison} {_short(first.threshold)})")
        for inv in self.invariants:
            inv.holds = inv.recompute()
        return self

    @property
    def verdicts(self) -> dict[str, int]:
        """How many claims hold, fail and are inconclusive (invariants never count)."""
        counts = {v: 0 for v in VERDICTS}
        for claim in self.claims:
            counts[claim.verdict] += 1
        return counts

    @property
    def status(self) -> str:
        """``"2 hold, 1 fail, 3 inconclusive"`` (or ``"no claims"``)."""
        return status_text(self.verdicts) if self.claims else "no claims"

    def to_json(self) -> dict[str, Any]:
        from honed.core.strict_json import strict

        plain = ("outcomes", "claims", "preconditions", "invariants")
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in plain}
        data["claims"] = [c.to_json() for c in self.claims]
        data["preconditions"] = [p.to_json() for p in self.preconditions]
        data["invariants"] = [dataclasses.asdict(i) for i in self.invariants]
        data["status"], data["verdicts"], data["schema"] = self.status, self.verdicts, self.schema
        clean, non_finite = strict(data)
        clean["non_finite"] = non_finite
        return clean

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Result":
        """Load a stored result (v2 or the older v1) and recompute every verdict."""
        names = {f.name for f in dataclasses.fields(cls)} - {"outcomes"}
        kw = {k: v for k, v in data.items() if k in names}
        kw["schema"] = data.get("schema", "honed-result-v1")
        kw["claims"] = [Claim.from_json(c) for c in data.get("claims", [])]
        kw["preconditions"] = [Precondition.from_json(c) for c in data.get("preconditions", [])]
        kw["invariants"] = [Invariant.from_json(i) for i in data.get("invariants", [])]
        result = cls(**kw)
        if result.schema != SCHEMA:
            result.notes = list(result.notes) + [
                f"this result was written by {result.schema}, before claims carried intervals; its verdicts "
                f"are shown as inconclusive: rerun with --force to judge it"]
        return result.rejudge()

    def is_method_arm(self, arm: str) -> bool:
        """True for the method's own arms: a name in ``method``, or one ending in ``/<method arm>``
        (experiments that sweep settings name arms like ``large/smoothout`` or ``b50/gcw``)."""
        return arm in self.method or any(arm.endswith("/" + m) for m in self.method)

    def mean(self, arm: str, metric: str) -> float:
        """The seed mean of an arm's metric (NaN when it was not finite)."""
        value = self.arms[arm][metric]["mean"]
        return math.nan if value is None else value

    def metric(self, arm: str, metric: str) -> Term:
        """An arm's metric as a :class:`~honed.core.evidence.Term` for claims: per-seed values and, when
        the experiment kept them, per-example outcomes (so the claim gets a paired bootstrap interval)."""
        if arm not in self.arms or metric not in self.arms[arm]:
            raise KeyError(f"{self.id}: no metric '{metric}' for arm '{arm}'")
        values = tuple(math.nan if v is None else float(v) for v in self.arms[arm][metric]["values"])
        outcomes = self.outcomes.get((arm, metric))
        return Term(f"{arm}.{metric}", values, None if outcomes is None else tuple(outcomes))

    def extra_metric(self, key: str) -> Term:
        """A numeric ``extra`` value as a Term (per-seed values, no per-example outcomes)."""
        entry = self.extra.get(key)
        if not isinstance(entry, dict) or "values" not in entry:
            raise KeyError(f"{self.id}: no extra value '{key}'")
        values = tuple(math.nan if v is None else float(v) for v in entry["values"])
        return Term(key, values)


def status_text(counts: dict[str, int]) -> str:
    """``"2 hold, 1 fails, 3 inconclusive"`` from verdict counts."""
    return f"{counts['holds']} hold, {counts['fails']} fail, {counts['inconclusive']} inconclusive"


def _short(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


class Experiment:
    """Base of every reproduction. Subclasses set the class attributes and implement ``run_seed``
    and ``claims``; the runner owns seeding, folders, resume, aggregation and writing.

    ``reconstructed`` lists the steps of the method card marked (R): they are printed with the
    result so a reader knows which parts are our reconstruction rather than the paper's text.
    ``components`` names the method's drop-in pieces ("honed.compress.slimming:BNScaleL1") so a user
    finds what to import without reading the experiment.
    """

    id: ClassVar[str]
    title: ClassVar[str]
    family: ClassVar[str]
    paper: ClassVar[str]  # short title + arXiv id
    summary: ClassVar[str]
    Config: ClassVar[type[ExperimentConfig]]
    method: ClassVar[tuple[str, ...]]
    baselines: ClassVar[tuple[str, ...]]
    reconstructed: ClassVar[tuple[str, ...]] = ()
    claims_tested: ClassVar[tuple[str, ...]] = ()  # the card's claims in words, shown by `honed show`
    # the drop-in pieces a user imports for their own code, as "module:Name" (shown by `honed show`)
    components: ClassVar[tuple[str, ...]] = ()

    def run_seed(self, cfg: Any, seed: int, ctx: "Any") -> SeedOutput:
        raise NotImplementedError

    def claims(self, cfg: Any, result: Result) -> list[Claim]:
        """The paper's claims, each a :meth:`Claim.check` on a statistic built from ``result.metric``."""
        raise NotImplementedError

    def preconditions(self, cfg: Any, result: Result) -> list[Precondition]:
        """Measured checks that this run's setting can show the effect at all (arms above chance, the
        reference at its expected accuracy...); a claim that requires one is inconclusive unless it holds."""
        return []

    def invariants(self, cfg: Any, result: Result) -> list[Invariant]:
        """Checks that hold by construction (shown as plumbing tests, never counted as claims)."""
        return []

    def notes(self, cfg: Any, result: Result) -> list[str]:
        """Extra sentences for the report (e.g. why a claim did not hold); measured, not typed."""
        return []

    def plot(self, result: Result, fig: Any) -> bool:
        """Draw on a matplotlib Figure; return False when there is nothing to draw. The default
        draws every curve of ``result.curves``, one axis per curve, one line per arm."""
        from honed.core.plots import plot_curves

        return plot_curves(result, fig)


EXPERIMENTS: Registry[type[Experiment]] = Registry("experiment")


def register_experiment(cls: type[Experiment]) -> type[Experiment]:
    """Class decorator: registers an Experiment under its ``id`` (e.g. ``"16-smoothout"``)."""
    for attr in ("id", "title", "family", "paper", "summary", "Config", "method", "baselines"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} must define '{attr}'")
    return EXPERIMENTS.register(cls.id)(cls)


def load_experiments() -> Registry[type[Experiment]]:
    """Import every module of ``honed.experiments`` so their decorators run; returns the registry."""
    from honed.core.registry import import_submodules

    import_submodules("honed.experiments")
    return EXPERIMENTS
