"""Progress bars on long loops: drawn on a terminal, advanced once per step; silent inside
``bars_allowed(False)``, which the runner sets for runs that are not shown (--json, --jobs, Ray)."""
import io
from types import SimpleNamespace

import pytest
import torch

from honed.core import progress
from honed.core.progress import BARS_ALLOWED, bars_allowed, progress_bar
from honed.core.runner import run_experiment
from tests.core.toy_experiment import ToyConfig, ToyExperiment


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    # the module's own view of stderr (pytest's capture swaps sys.stderr back in for each test phase)
    monkeypatch.setattr(progress, "sys", SimpleNamespace(stderr=Terminal()))
    advances = []
    original = progress._Bar.advance
    monkeypatch.setattr(progress._Bar, "advance",
                        lambda self, n=1, **f: (advances.append(self._progress is not None), original(self, n, **f)))
    return advances


def test_a_bar_draws_on_a_terminal_and_not_where_bars_are_off(terminal):
    with progress_bar(2, "steps") as bar:
        bar.advance()
    with bars_allowed(False), progress_bar(2, "steps") as bar:
        bar.advance()
    assert terminal == [True, False]


class RecordsBars(ToyExperiment):
    id = "96-records-bars"
    seen: list[bool] = []

    def run_seed(self, cfg, seed, ctx):
        RecordsBars.seen.append(BARS_ALLOWED.get())
        return super().run_seed(cfg, seed, ctx)


@pytest.mark.parametrize("shown", [True, False])
def test_the_runner_turns_component_bars_off_when_the_run_is_not_shown(tmp_path, shown):
    RecordsBars.seen = []
    run_experiment(RecordsBars(), ToyConfig.smoke(), "smoke", tmp_path, "cpu", progress=shown)
    assert RecordsBars.seen == [shown] and BARS_ALLOWED.get() is True


def test_a_component_training_loop_advances_its_bar_once_per_step(terminal):
    from honed.vision.mvstylizer_training import fit_stylizer

    frames = torch.rand(2, 3, 12, 12)
    losses = fit_stylizer(torch.nn.Conv2d(3, 3, 1), frames, frames.flip(1), steps=3,
                          gen=torch.Generator().manual_seed(0), batch=2, crop=8)
    assert len(losses) == 3 and terminal == [True, True, True]
