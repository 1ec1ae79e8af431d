"""A tiny Experiment used to test the runner, report and CLI without training anything real."""
from dataclasses import dataclass, replace

from honed.core.config import ExperimentConfig
from honed.core.experiment import Claim, Experiment, Invariant, Precondition, SeedOutput


@dataclass(frozen=True)
class ToyConfig(ExperimentConfig):
    offset: float = 1.0
    chance: float = 0.1  # the precondition's bar for the per-example arm
    seeds: tuple[int, ...] = (0, 1, 2)

    @classmethod
    def smoke(cls):
        return replace(cls(), seeds=(0,))


class ToyExperiment(Experiment):
    id = "99-toy"
    title = "Toy"
    family = "test"
    paper = "none"
    summary = "adds an offset to the seed"
    Config = ToyConfig
    method = ("ours",)
    baselines = ("base",)
    calls: list[int] = []
    fail_on_seed = -1  # simulates a kill during that seed

    def run_seed(self, cfg, seed, ctx):
        if seed == ToyExperiment.fail_on_seed:
            raise RuntimeError("killed")
        ToyExperiment.calls.append(seed)
        part = ctx.cached("ours", lambda: {"acc": seed + cfg.offset,
                                           "correct": [1.0] * 9 + [0.0]})  # 10 examples, 90% right
        base = {"acc": float(seed), "correct": [1.0] * 5 + [0.0] * 5}
        return SeedOutput(arms={"ours": part, "base": base}, extra={"n": seed},
                          curves={"acc": {"ours": [0.0, seed + cfg.offset], "base": [0.0, float(seed)]}})

    def claims(self, cfg, result):
        gain = result.metric("ours", "acc") - result.metric("base", "acc")
        return [Claim.check("gain", gain, ">=", 0.5, "paper: +0.5", requires=()),
                Claim.check("big gain", gain, ">=", 10.0, "paper: +10", requires=()),
                Claim.check("correct above base", result.metric("ours", "correct") - result.metric("base", "correct"),
                            ">", 0.0, "paper: better per example")]

    def preconditions(self, cfg, result):
        return [Precondition.check("ours above chance", result.metric("ours", "correct"), ">", cfg.chance,
                                   "an arm at chance cannot show a gain")]

    def invariants(self, cfg, result):
        return [Invariant.check("offset as configured", cfg.offset, ">=", 0.0, "the config's offset")]
