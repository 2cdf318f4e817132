"""A banditd process (`banditd serve`, `banditd gateway`): start, serve until a stop, drain.

A stop is SIGINT or SIGTERM, or EOF on ``parent_fd`` (`serve --workers`). One that comes while
the process starts (for serve: migrations, loading routers, Numba warm-up) ends the start-up at
its next await: what was started is stopped as in a drain, a migration under way runs to its
end first (it runs in a thread, which the process waits for), nothing is served, and the
process exits 0 after ``stopped_while_starting``, as after a drain. ``run`` does this for any
start-up; ``serve`` is banditd's server, and banditd.gateway.app the gateway.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from banditd.config import Settings

if TYPE_CHECKING:  # the gateway runs through ``run`` without the server's modules
    from banditd.edge.server import App

log = structlog.get_logger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)  # banditd.__main__ blocks them (its STOPS) until run()
S = TypeVar("S")


async def serve(
    settings: Settings,
    on_started: Callable[[App], Awaitable[None]] | None = None,
    parent_fd: int | None = None,
) -> None:
    """banditd's server: run until SIGINT/SIGTERM, or until ``parent_fd`` reads EOF (the read
    end of a pipe whose write end a parent holds: it has exited; see
    banditd.commands.workers), then drain."""
    await run(
        _start(settings),
        stop=lambda app: app.stop(),
        # In-flight calls are cancelled, the rest of the drain still runs.
        cut=lambda app: app.server.stop(0),
        grace_seconds=settings.grace_seconds,
        on_started=on_started,
        parent_fd=parent_fd,
    )


async def run(
    start: Coroutine[Any, Any, S],
    *,
    stop: Callable[[S], Awaitable[None]],
    cut: Callable[[S], Awaitable[None]],
    grace_seconds: float,
    on_started: Callable[[S], Awaitable[None]] | None = None,
    parent_fd: int | None = None,
) -> None:
    """Run ``start`` as a task a stop cancels (cancelled, it stops what it had started), then
    serve until a stop and ``stop`` (the drain); a second stop meanwhile runs ``cut`` (cut the
    drain short)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    starting = asyncio.create_task(start, name="start-up")

    def stopped() -> None:
        if not stopping.is_set():
            stopping.set()
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
        service = await starting
    except asyncio.CancelledError:
        if not stopping.is_set():  # run itself was cancelled
            raise
        log.info("stopped_while_starting")
        return
    if on_started is not None and not stopping.is_set():
        await on_started(service)
    await stopping.wait()
    log.info("stopping", grace_seconds=grace_seconds)
    cuts: list[asyncio.Task[None]] = []

    async def cutting() -> None:
        await cut(service)

    for sig in SIGNALS:
        loop.add_signal_handler(sig, lambda: cuts.append(asyncio.create_task(cutting())))
    await stop(service)


async def _start(settings: Settings) -> App:
    """The app, serving; cancelled, whatever it had started is stopped again."""
    from banditd.edge.server import build_app  # imported here: see TYPE_CHECKING above

    app = await build_app(settings)
    try:
        await app.start()
    except asyncio.CancelledError:
        await app.stop(grace=0)
        raise
    return app
