"""What the in-process benches (select_in_process.py, feedback_in_process.py) share: a server as
`serve` builds it with its RouterServicer, log lines at info to /dev/null, and a timed round.

Imported by those scripts as ``in_process`` (run as ``python bench/NAME.py``, bench/ is on
sys.path).
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import os
import pstats
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from banditd.config import Settings
from banditd.edge import server as edge_server
from banditd.edge.servicer import RouterServicer
from banditd.logs import configure_logging


@contextlib.contextmanager
def logs_to_devnull() -> Iterator[None]:
    """Log lines at info, rendered and written as `serve` writes them, to /dev/null."""
    with open(os.devnull, "w") as null:
        configure_logging("info", cache=True, stream=null)
        yield


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Any, RouterServicer]]:
    """The app `serve` builds, started, and its RouterServicer to call in process."""
    app = await edge_server.build_app(settings)
    # The one build_app registered (no public handle; before start's gc.freeze hides it).
    servicer = next(o for o in gc.get_objects() if isinstance(o, RouterServicer))
    await app.start()
    try:
        yield app, servicer
    finally:
        await app.stop()


async def timed_round(
    work: Callable[[], Awaitable[str]], n: int, unit: str, profile: bool, top: int
) -> None:
    """Run one round of ``work`` (n units: calls or events; it returns a note for the line) and
    print the microseconds of wall time and of process CPU per unit, with the load average.
    ``profile``: cProfile's ``top`` functions after, by own time (or by $SORT)."""
    load_avg = os.getloadavg()[0]
    profiler = cProfile.Profile() if profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    note = await work()
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"{n} {unit}s{note}: {wall / n * 1e6:.1f} us wall, {cpu / n * 1e6:.1f} us CPU per {unit} "
        f"(load {load_avg:.2f}-{os.getloadavg()[0]:.2f})"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(top)
