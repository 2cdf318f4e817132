"""Progress bars for long CLI work (replay, ingest, warm-start, evaluate): rich, on stderr only.

A command wraps its work in ``shown(quiet=args.quiet)``; the code doing the work reports with
``update(label, done, total)`` (or a ``Progress``, the callable replay passes around) and need
not know whether anything is drawn. Bars are drawn only while a command shows them, stderr is a
terminal and --quiet is off: pipes, log files and CI get nothing, and stdout (--json) is never
touched. The display is one per process, like the logging set-up, because the work it follows
runs deep in library code that has no parameter to pass it down.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bars

UPDATE_EVERY_S = 0.1  # a bar's updates closer together are dropped (replay reports every prompt)


@dataclass
class _Bar:
    task: TaskID
    updated: float
    finished: bool


@dataclass
class _Display:
    bars: Bars
    by_label: dict[str, _Bar] = field(default_factory=dict)


_display: _Display | None = None


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    """The --quiet flag every command with progress takes."""
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar on stderr (none is drawn either when stderr is not a terminal)",
    )


@contextmanager
def shown(*, quiet: bool = False) -> Iterator[None]:
    """Draw the bars of the work inside on stderr, unless quiet or stderr is not a terminal.
    The last state stays on the terminal; nested calls share the outer display."""
    global _display
    # isatty, not rich's guess: FORCE_COLOR and the like must not draw bars into a pipe.
    if quiet or not sys.stderr.isatty() or _display is not None:
        yield
        return
    bars = Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        redirect_stdout=False,  # stdout is the command's output (--json): never through rich
        redirect_stderr=False,
    )
    with bars:
        _display = _Display(bars)
        try:
            yield
        finally:
            _display = None


def active() -> bool:
    """Whether bars are drawn now (callers skip work done only for a bar, like counting)."""
    return _display is not None


def update(label: str, done: int, total: int | None = None) -> None:
    """Set the bar ``label`` to ``done`` of ``total`` (None: unknown); a new label adds a bar,
    and makes room by removing the bars that reached their total."""
    display = _display
    if display is None:
        return
    now = time.monotonic()
    finished = total is not None and done >= total
    bar = display.by_label.get(label)
    if bar is None:
        for old, stale in list(display.by_label.items()):
            if stale.finished:
                display.bars.remove_task(stale.task)
                del display.by_label[old]
        task = display.bars.add_task(label, total=total, completed=done)
        display.by_label[label] = _Bar(task, now, finished)
    elif finished or now - bar.updated >= UPDATE_EVERY_S:
        display.bars.update(bar.task, completed=done, total=total)
        bar.updated, bar.finished = now, finished


class Progress:
    """``update`` as an object: what replay's code passes around (label, done, total)."""

    def __call__(self, label: str, done: int, total: int) -> None:
        update(label, done, total)


def lines_in(path: Path) -> int | None:
    """Non-empty lines of a text file (gzipped when the name ends in .gz), read only while bars
    are drawn (None otherwise): the total of a bar over the file's records."""
    if not active():
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as lines:
        return sum(1 for line in lines if line.strip())
