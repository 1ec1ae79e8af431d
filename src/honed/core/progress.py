"""A thin progress bar over rich that costs nothing when disabled (tests, pipes, --json)."""
import sys
from contextlib import contextmanager
from typing import Iterator


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)


@contextmanager
def progress_bar(total: int | None, desc: str, enabled: bool = True) -> Iterator[_Bar]:
    """``with progress_bar(n, "train") as bar: bar.advance()``; silent unless stderr is a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*cols, console=Console(stderr=True), transient=True) as progress:
        yield _Bar(progress, progress.add_task(desc, total=total, info=""))
