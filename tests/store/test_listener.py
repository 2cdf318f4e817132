"""The Postgres LISTEN connection: one that stays open but no longer answers (a frozen server,
a network partition, a failover that left the socket dead) is found by its ping and replaced."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial

import pytest
from sqlalchemy import make_url
from structlog.testing import capture_logs

from banditd.v1 import banditd_pb2 as pb
from tests.helpers import EMBEDDING, StartServer, router_config, wait_until


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()  # one side hung up: so does the other


class FreezingProxy:
    """A loopback TCP proxy to Postgres. ``freeze`` stops every connection open so far from
    passing anything, without closing it (a half-open connection); later ones pass."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._pipes: list[asyncio.Future[None]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += (writer, up_writer)
        self._pipes += (
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer)),
        )

    def freeze(self) -> None:
        for pipe in self._pipes:
            pipe.cancel()
        self._pipes.clear()

    async def close(self) -> None:
        self.freeze()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[FreezingProxy]:
    """Request it before ``start_server``: servers stop before it closes."""
    url = make_url(postgres_url)
    proxy = FreezingProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.mark.postgres
async def test_a_listen_connection_that_stops_answering_is_replaced(
    postgres_url: str, proxy: FreezingProxy, start_server: StartServer
) -> None:
    a = await start_server(postgres_url)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    # Replica b reaches Postgres through the proxy and hears of new events only by NOTIFY (its
    # poll is an hour away). Its pooled connections freeze too: they fail after 2 s.
    via_proxy = make_url(postgres_url).set(
        host="127.0.0.1", port=proxy.port, query={"command_timeout": "2"}
    )
    b = await start_server(
        via_proxy.render_as_string(hide_password=False), tail_interval_s=3600.0, notify_ping_s=0.2
    )

    async def feedback() -> int:
        """A new event in the log, written on replica a (which NOTIFYs it)."""
        d = await a.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING)
        )
        reply = await a.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
        )
        event_id: int = reply.event_id
        return event_id

    async def b_has(event_id: int) -> bool:
        """Whether b applied the log up to event_id (from its memory: no database call)."""
        state = await b.app.catalog.get("acme", "chat")
        return state.posterior.last_event_id >= event_id

    await wait_until(partial(b_has, await feedback()), "b to hear of an event by NOTIFY")

    with capture_logs() as logs:
        proxy.freeze()
        await wait_until(
            lambda: "listen_connection_restored" in {e["event"] for e in logs},
            "b to replace its frozen LISTEN connection",
            60,
        )
        after = await feedback()  # made after the freeze and the reconnect

        async def b_sees_it() -> bool:
            if await b_has(after):
                return True
            # A tail round on a pooled connection frozen too fails (after 2 s): the next
            # event's NOTIFY wakes b again.
            await feedback()
            return False

        await wait_until(b_sees_it, "b to hear of an event after the freeze", 60)
    events = [e["event"] for e in logs]
    assert "listen_ping_failed" in events
    assert events.index("listen_ping_failed") < events.index("listen_connection_restored")
