"""Retries against a server that comes back, over real gRPC on loopback (both clients)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from banditd import client as bc
from tests.client.test_client import Client, call, free_port, make_client, serving
from tests.helpers import StartServer

__all__ = ["make_client"]  # test_client's fixture: sync and async clients


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def listening(port: int, target_port: int) -> AsyncIterator[None]:
    """A listener on ``port`` passing connections to ``target_port``: a server that is back, at
    once (a real restart takes longer than the retries' window)."""
    pipes: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        writers.extend((writer, up_writer))
        pipes.append(asyncio.ensure_future(_pipe(reader, up_writer)))
        pipes.append(asyncio.ensure_future(_pipe(up_reader, writer)))

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


@pytest.mark.parametrize("own_backoff", [False, True], ids=["policy's", "options'"])
async def test_a_retry_reaches_a_server_that_is_back(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    own_backoff: bool,
) -> None:
    """gRPC's channel waits its own reconnect backoff (1 s, growing to 120 s) after a failed
    connection, failing every attempt meanwhile at once with UNAVAILABLE: the retries all failed
    though the server was back. The channel now backs off as the RetryPolicy does, unless
    ``options`` set its backoff (kept: here 5 s, and the retries fail as before)."""
    server = await serving(start_server, sqlite_url)
    port = free_port()
    policy = bc.RetryPolicy(attempts=6, initial_backoff_s=0.05, max_backoff_s=0.1, jitter_s=0)
    options = [(f"grpc.{e}_reconnect_backoff_ms", 5000) for e in ("initial", "max") if own_backoff]
    client = make_client(f"127.0.0.1:{port}", tenant="acme", retry=policy, options=options)
    with pytest.raises(bc.Unavailable):  # nothing listens; one attempt (no request_id)
        await call(client, "select", router="chat", prompt="hi")
    async with listening(port, server.app.port):
        if own_backoff:
            with pytest.raises(bc.Unavailable):
                await call(client, "select", router="chat", prompt="hi", request_id="r-1")
        else:
            decision = await call(client, "select", router="chat", prompt="hi", request_id="r-1")
            assert decision.arm in ("cheap", "mid", "strong")
