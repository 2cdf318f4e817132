"""Retries against a server that comes back, over real gRPC on loopback (both clients)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from banditd import client as bc
from tests.client.test_client import Client, call, free_port, make_client, serving
from tests.helpers import StartServer, listening

__all__ = ["make_client"]  # test_client's fixture: sync and async clients


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
