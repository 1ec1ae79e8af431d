"""A thin progress bar over rich that costs nothing when disabled (tests, pipes, --json).

Components draw their own bars on long loops with ``progress_bar(n, desc)``; the runner turns every
bar of a seed off with ``bars_allowed(False)`` when the run is not shown (``--json``, ``--jobs N``,
Ray tasks), so parallel workers never draw over each other.
"""
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

BARS_ALLOWED: ContextVar[bool] = ContextVar("honed_bars_allowed", default=True)


@contextmanager
def bars_allowed(allowed: bool) -> Iterator[None]:
    """Inside this block, ``progress_bar`` draws only if ``allowed`` (and stderr is a terminal)."""
    token = BARS_ALLOWED.set(allowed)
    try:
        yield
    finally:
        BARS_ALLOWED.reset(token)


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)


@contextmanager
def progress_bar(total: int | None, desc: str, enabled: bool = True) -> Iterator[_Bar]:
    """``with progress_bar(n, "train") as bar: bar.advance()``; silent unless stderr is a terminal."""
    if not (enabled and BARS_ALLOWED.get() and sys.stderr.isatty()):
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*cols, console=Console(stderr=True), transient=True) as progress:
        yield _Bar(progress, progress.add_task(desc, total=total, info=""))
