"""Postgres LISTEN for committed feedback events, kept alive across database restarts.

The listening connection is held outside the pool. When it drops (Postgres restarted, network
cut) the listener reconnects with exponential backoff (tenacity) and, once back, wakes the tail
once: NOTIFYs sent while it was away are lost, so the tail must look for itself.

A connection can also stay open and be dead (a frozen server, a network partition, a failover
that left the socket): no error ever comes, and no NOTIFY either. So the listener pings it every
``ping_s`` and replaces one that does not answer within as long, as if it had dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

log = structlog.get_logger(__name__)
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0


def _is_connection_error(exc: BaseException) -> bool:
    return not isinstance(exc, asyncio.CancelledError)


class EventListener:
    """Calls ``wake`` on every NOTIFY on ``channel``, and after every reconnect."""

    def __init__(
        self, engine: AsyncEngine, channel: str, wake: Callable[[], None], ping_s: float
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._wake = wake
        self._ping_s = ping_s
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connects = 0

    async def start(self) -> None:
        """Connect once (a failure here is raised: the server is not up yet), then keep it."""
        conn, lost = await self._connect()
        self._task = asyncio.create_task(self._run(conn, lost), name="listen-events")

    async def _connect(self) -> tuple[AsyncConnection, asyncio.Event]:
        conn = await self._engine.connect()
        try:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            lost = asyncio.Event()
            await driver.add_listener(self._channel, lambda *_: self._wake())
            driver.add_termination_listener(lambda *_: lost.set())
        except BaseException:
            await _close_quietly(conn)
            raise
        self.connects += 1
        return conn, lost

    async def _run(self, conn: AsyncConnection, lost: asyncio.Event) -> None:
        while True:
            await self._hold(conn, lost)
            await _close_quietly(conn)
            if self._closing.is_set():
                return
            log.warning("listen_connection_lost", channel=self._channel)
            reconnected = await self._reconnect()
            if reconnected is None:
                return
            conn, lost = reconnected
            log.info("listen_connection_restored", channel=self._channel)
            self._wake()  # notifications sent meanwhile are gone: let the tail look

    async def _hold(self, conn: AsyncConnection, lost: asyncio.Event) -> None:
        """Return when the connection is gone or does not answer, or the listener closes."""
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        while True:
            await _until_set(self._ping_s, self._closing, lost)
            if self._closing.is_set() or lost.is_set() or driver.is_closed():
                return
            try:
                await driver.execute("SELECT 1", timeout=self._ping_s)
            except Exception as exc:  # no answer in time, or the connection broke under it
                log.warning(
                    "listen_ping_failed",
                    channel=self._channel,
                    error=repr(exc),
                    timeout_s=self._ping_s,
                )
                return

    async def _reconnect(self) -> tuple[AsyncConnection, asyncio.Event] | None:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_connection_error),
            wait=wait_exponential_jitter(
                multiplier=RETRY_INITIAL_S, max=RETRY_MAX_S, jitter=RETRY_INITIAL_S
            ),
            stop=lambda _: self._closing.is_set(),
            sleep=self._pause,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._connect()
        except Exception:  # only when closing
            return None
        return None  # pragma: no cover - tenacity either returns or raises

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            await self._task


async def _until_set(seconds: float, *events: asyncio.Event) -> None:
    """Sleep ``seconds``, but wake at once when any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _log_retry(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    log.warning(
        "listen_reconnect_failed",
        error=repr(outcome.exception()) if outcome is not None else "",
        attempt=retry_state.attempt_number,
    )


async def _close_quietly(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):  # the connection may already be gone
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()
