# -*- test-case-name: tests.test_bench -*-
"""
What the bench is running and what is left: a rich progress bar on a
terminal, one line per run otherwise (a CI log keeps every line; a bar
redrawn in place would leave it one final frame).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec


class LineProgress:
    """
    C{[3/12] pingpong: myserver...} on standard error, one line per run.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def start(self, description: str) -> None:
        line = f"[{self.done + 1}/{self.total}] {description}..."
        print(line, file=sys.stderr, flush=True)

    def finish(self) -> None:
        self.done += 1


class BarProgress(LineProgress):
    """
    A rich progress bar on standard error: the run in progress, runs done
    out of all, time spent and an estimate of the time left.
    """

    def __init__(self, total: int) -> None:
        super().__init__(total)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task("starting", total=total)

    def start(self, description: str) -> None:
        self.bar.update(self.task, description=description)

    def finish(self) -> None:
        super().finish()
        self.bar.advance(self.task)


@contextmanager
def progress(total: int) -> Iterator[LineProgress]:
    """
    A bar when standard error is a terminal and rich (the C{[bench]} extra)
    is installed, lines otherwise; the bar is shown while the block runs.
    """
    if sys.stderr.isatty() and find_spec("rich") is not None:
        shown = BarProgress(total)
        with shown.bar:
            yield shown
    else:
        yield LineProgress(total)
