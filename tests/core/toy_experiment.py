"""A tiny Experiment used to test the runner, report and CLI without training anything real."""
from dataclasses import dataclass, replace

from honed.core.config import ExperimentConfig
from honed.core.experiment import Claim, Experiment, SeedOutput


@dataclass(frozen=True)
class ToyConfig(ExperimentConfig):
    offset: float = 1.0
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
        part = ctx.cached("ours", lambda: {"acc": seed + cfg.offset})
        return SeedOutput(arms={"ours": part, "base": {"acc": float(seed)}}, extra={"n": seed},
                          curves={"acc": {"ours": [0.0, seed + cfg.offset], "base": [0.0, float(seed)]}})

    def claims(self, cfg, result):
        gain = result.mean("ours", "acc") - result.mean("base", "acc")
        return [Claim.check("gain", gain, ">=", 0.5, "paper: +0.5"),
                Claim.check("big gain", gain, ">=", 10.0, "paper: +10")]
