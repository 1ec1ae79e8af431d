"""The experiment protocol: an Experiment runs one seed at a time; the runner aggregates seeds into a
Result whose claims are computed from the measured values.

Result schema (``result.json``; see docs/results.md):
  id, title, family, preset, seeds, config, environment, runtime_s, method, baselines,
  arms: {arm: {metric: {mean, std, values}}}, extra: {name: value}, curves: {name: {...}},
  claims: [{name, metric, comparison, threshold, paper, measured, passed}], notes: [str], status.
"""
import dataclasses
import math
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from honed.core.config import ExperimentConfig
from honed.core.registry import Registry

COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Claim:
    """A claim of the paper tested on measured values: ``measured <comparison> threshold``.

    Build it with :meth:`check`, which computes ``passed``; a NaN or missing measurement fails.
    """

    name: str
    metric: str
    comparison: str
    threshold: float
    paper: str
    measured: float | None
    passed: bool

    @classmethod
    def check(cls, name: str, measured: float | None, comparison: str, threshold: float,
              paper: str, metric: str | None = None) -> "Claim":
        if comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {list(COMPARISONS)}, got {comparison!r}")
        value = None if measured is None else float(measured)
        ok = value is not None and not math.isnan(value) and COMPARISONS[comparison](value, threshold)
        return cls(name, metric or name, comparison, float(threshold), paper, value, bool(ok))


@dataclass
class SeedOutput:
    """What one seed of an experiment measured.

    arms: {arm name: {metric: float}} - the method and each baseline.
    extra: scalar or small JSON values that belong to no arm (e.g. a variance table).
    curves: {curve name: {arm: [floats]}} for plots (e.g. per-epoch test accuracy).
    """

    arms: dict[str, dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    runtime_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SeedOutput":
        return cls(**data)


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

    @property
    def status(self) -> str:
        if not self.claims:
            return "no claims"
        n = sum(c.passed for c in self.claims)
        return "passed" if n == len(self.claims) else ("failed" if n == 0 else "partial")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status
        data["schema"] = "honed-result-v1"
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Result":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["claims"] = [Claim(**c) for c in kw["claims"]]
        return cls(**kw)

    def is_method_arm(self, arm: str) -> bool:
        """True for the method's own arms: a name in ``method``, or one ending in ``/<method arm>``
        (experiments that sweep settings name arms like ``large/smoothout`` or ``b50/gcw``)."""
        return arm in self.method or any(arm.endswith("/" + m) for m in self.method)

    def mean(self, arm: str, metric: str) -> float:
        return self.arms[arm][metric]["mean"]


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
        raise NotImplementedError

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
