"""What every command prints: messages and progress bars on stderr, so stdout stays clean for
data. Messages name files and options as the user typed them: no emoji codes (":smile:") and no
markup, in every print and progress column."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.progress import ProgressColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.text import Text

__all__ = ["err_console", "error_line", "echo", "download_progress", "count_progress", "rate_progress", "RateColumn"]

err_console = Console(stderr=True, emoji=False)


def error_line(message: str) -> None:
    """The one line of an error, on stderr."""
    err_console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)


def echo(message: str) -> None:
    """A line for the user on stderr, so stdout stays clean for data."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def download_progress(label: str = "VGG19") -> Iterator:
    """A rich progress bar for a download, shown from the first byte; yields `progress(done, total)`."""
    columns = (TextColumn("downloading {task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    bar = Progress(*columns, console=err_console)
    task = None

    def update(done: int, total: int | None) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(label, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        bar.stop()


@contextlib.contextmanager
def count_progress(label: str, *, transient: bool = True) -> Iterator:
    """A rich progress bar over a count of items; yields `update(done, total)`."""
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=transient) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextlib.contextmanager
def rate_progress(label: str, *, unit: str = "tiles", transient: bool = True) -> Iterator:
    """A rich progress bar over a count, with the rate and the time left; yields `update(done, total)`."""
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=transient) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


class RateColumn(ProgressColumn):
    """Items per second of a task."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s")
