"""Routers as stored: rows that today's checks refuse."""

from __future__ import annotations

import sqlite3

import grpc
import pytest

from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config


async def test_a_stored_router_that_no_longer_validates_does_not_stop_the_others(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A name ending in a newline was accepted once (the name check's $ passed it): a server
    over such a row still starts and serves the other routers; the row is left out."""
    first = await start_server(sqlite_url)
    for name in ("chat", "old"):
        await first.admin.PutRouter(pb.PutRouterRequest(router=router_config(name=name)))
    await first.stop()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///")) as db:
        db.execute("UPDATE routers SET name = 'old' || char(10) WHERE name = 'old'")
    server = await start_server(sqlite_url)
    listed = await server.admin.ListRouters(pb.ListRoutersRequest(tenant="acme"))
    assert [r.name for r in listed.routers] == ["chat"]
    d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="q"))
    assert d.arm in {"cheap", "mid", "strong"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="old\n"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
