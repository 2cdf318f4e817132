"""Routers as stored: rows that today's checks refuse."""

from __future__ import annotations

import sqlite3
from typing import Any

import grpc
import pytest
import structlog
from sqlalchemy import event, func, select, update

from banditd.store import Database
from banditd.store.models import router_versions, routers
from banditd.store.routers import _LOGGED, Routers
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


async def test_a_stored_version_that_no_longer_validates_leaves_the_others_listed(
    database_url: str, start_server: StartServer
) -> None:
    """One version row today's checks refuse (an older policy name, here) is left out of
    ListRouterVersions with a warning; the others list, and a rollback to one works."""
    server = await start_server(database_url)
    for policy in ("linucb", "thompson", "linucb"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(policy=policy)))
    async with server.app.db.transaction() as conn:
        config = await conn.scalar(
            select(router_versions.c.config).where(router_versions.c.version == 2)
        )
        await conn.execute(
            update(router_versions)
            .where(router_versions.c.version == 2)
            .values(config={**config, "policy": "epsilon-greedy-v0"})
        )
    request = pb.ListRouterVersionsRequest(tenant="acme", name="chat")
    with structlog.testing.capture_logs() as logs:
        listed = await server.admin.ListRouterVersions(request)
    assert [v.version for v in listed.versions] == [1, 3]
    [warned] = [e for e in logs if e["event"] == "router_version_unreadable"]
    assert warned["version"] == 2 and "policy" in warned["why"]
    back = await server.admin.RollbackRouter(
        pb.RollbackRouterRequest(tenant="acme", name="chat", to_version=1)
    )
    assert back.router.version == 4 and back.restored_version == 1


async def test_a_stored_name_that_no_longer_validates_can_be_read_and_deleted(
    database_url: str, start_server: StartServer
) -> None:
    """A router stored by an older version as "old\\n": GetRouter and ListRouterVersions accept
    its name (and say why they cannot show it), DeleteRouter deletes it; new names like it stay
    refused."""
    server = await start_server(database_url)
    for name in ("chat", "old"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(name=name)))
    async with server.app.db.transaction() as conn:
        old_id = await conn.scalar(select(routers.c.id).where(routers.c.name == "old"))
        await conn.execute(update(routers).where(routers.c.id == old_id).values(name="old\n"))
        config = await conn.scalar(
            select(router_versions.c.config).where(router_versions.c.router_id == old_id)
        )
        await conn.execute(
            update(router_versions)
            .where(router_versions.c.router_id == old_id)
            .values(config={**config, "name": "old\n"})
        )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="old\n"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "delete it" in (err.value.details() or "")
    request = pb.ListRouterVersionsRequest(tenant="acme", name="old\n")
    assert list((await server.admin.ListRouterVersions(request)).versions) == []
    deleted = await server.admin.DeleteRouter(pb.DeleteRouterRequest(tenant="acme", name="old\n"))
    assert deleted.deleted
    async with server.app.db.transaction() as conn:
        assert await conn.scalar(select(routers.c.id).where(routers.c.id == old_id)) is None
        left = select(router_versions.c.version).where(router_versions.c.router_id == old_id)
        assert (await conn.execute(left)).all() == []
    listed = await server.admin.ListRouters(pb.ListRoutersRequest(tenant="acme"))
    assert [r.name for r in listed.routers] == ["chat"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(name="new\n")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_router_is_deleted_in_bounded_batches(
    database_url: str, start_server: StartServer
) -> None:
    """DeleteRouter removes a router's rows a batch at a time (a router with millions of events
    must not run one statement past the statement timeout): with batches of 2, five events take
    three DELETE statements, and nothing of the router is left; another router keeps its rows."""
    server = await start_server(database_url)
    for name in ("chat", "kept"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(name=name)))
        for _ in range(5):
            d = await server.router.Select(pb.SelectRequest(tenant="acme", router=name, prompt="q"))
            await server.router.Feedback(
                pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1)
            )
    await server.app.decisions.flush()
    ids = {s.spec.name: s.router_id for s in await Routers(server.app.db).list()}
    db = Database(database_url)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert await Routers(db).delete("acme", "chat", batch=2) == ids["chat"]
        left = {}
        async with db.transaction() as conn:
            for table in (*_LOGGED, routers):
                column = table.c.id if table is routers else table.c.router_id
                for name, router_id in ids.items():
                    count = select(func.count()).where(column == router_id)
                    left[table.name, name] = await conn.scalar(count)
    finally:
        await db.close()
    await server.tail_rounds(1)  # the server hears of the delete (as from another replica)
    deletes = [s for s in statements if s.startswith("DELETE FROM feedback_events")]
    assert len(deletes) == 3 and all("LIMIT" in s for s in deletes)
    assert {k: n for k, n in left.items() if k[1] == "chat" and n} == {}
    assert left["feedback_events", "kept"] == 5 and left["decisions", "kept"] == 5
