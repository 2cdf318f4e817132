"""A `banditd serve` process: start the app, serve until a stop, drain.

A stop is SIGINT or SIGTERM, or EOF on ``parent_fd`` (`serve --workers`). One that comes while
the app starts (migrations, loading routers, Numba warm-up) ends the start-up at its next await:
what was started is stopped as in a drain, a migration under way runs to its end first (it runs
in a thread, which the process waits for), nothing is served, and the process exits 0 after
``stopped_while_starting``, as after a drain.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

from banditd.config import Settings
from banditd.edge.server import App, build_app

log = structlog.get_logger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve(
    settings: Settings,
    on_started: Callable[[App], Awaitable[None]] | None = None,
    parent_fd: int | None = None,
) -> None:
    """Run until SIGINT/SIGTERM, or until ``parent_fd`` reads EOF (the read end of a pipe whose
    write end a parent holds: it has exited; see banditd.commands.workers), then drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    starting = asyncio.create_task(_start(settings), name="start-up")

    def stopped() -> None:
        if not stop.is_set():
            stop.set()
            starting.cancel()  # once started, nothing to cancel

    for sig in SIGNALS:
        loop.add_signal_handler(sig, stopped)
    # `serve --workers` starts its workers with these blocked, so that one forwarded while a
    # worker imports is not lost to the default action (death): it is delivered here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    if parent_fd is not None:

        def parent_gone() -> None:
            loop.remove_reader(parent_fd)  # EOF stays readable: once is enough
            log.warning("parent_exited")
            stopped()

        loop.add_reader(parent_fd, parent_gone)  # nothing is ever written: readable means EOF
    try:
        app = await starting
    except asyncio.CancelledError:
        if not stop.is_set():  # serve itself was cancelled
            raise
        log.info("stopped_while_starting")
        return
    if on_started is not None and not stop.is_set():
        await on_started(app)
    await stop.wait()
    log.info("stopping", grace_seconds=settings.grace_seconds)
    # A second signal cuts the drain short: in-flight calls are cancelled, the rest still runs.
    cut: list[asyncio.Task[None]] = []
    for sig in SIGNALS:
        loop.add_signal_handler(sig, lambda: cut.append(asyncio.create_task(app.server.stop(0))))
    await app.stop()


async def _start(settings: Settings) -> App:
    """The app, serving; cancelled, whatever it had started is stopped again."""
    app = await build_app(settings)
    try:
        await app.start()
    except asyncio.CancelledError:
        await app.stop(grace=0)
        raise
    return app
