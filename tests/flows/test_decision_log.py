"""Group commit of decisions: one bad row never blocks the others."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from banditd.errors import Unavailable
from banditd.store.probe import RequestIdProbe
from banditd.store.routers import Routers
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, meanwhile, router_config, table_away


async def test_decision_of_a_vanished_router_does_not_block_the_group(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url, decision_flush_ms=60_000.0)  # flush by hand only
    for name in ("gone", "kept"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(name=name)))
        await server.router.Select(pb.SelectRequest(tenant="acme", router=name, prompt="hi"))
    # The router disappears behind the decision log's back (as a concurrent delete would).
    assert await Routers(server.app.db).delete("acme", "gone") is not None
    await server.app.decisions.flush()
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="kept"))
    assert stats.decisions == 1
    assert server.app.decisions.pending == 0  # the orphan was dropped, not kept for retry


async def test_a_full_buffer_drops_the_oldest_decision_never_the_request(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url, decision_flush_ms=60_000.0, decision_log_max_pending=3)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    answers = [
        await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", prompt="hi", request_id=f"r{i}")
        )
        for i in range(5)
    ]
    log = server.app.decisions
    assert (log.pending, log.dropped) == (3, 2)
    # A kept decision still answers its request id; a dropped one is decided afresh.
    again = [
        await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", prompt="hi", request_id=f"r{i}")
        )
        for i in (4, 0)
    ]
    assert again[0].decision_id == answers[4].decision_id
    assert again[1].decision_id != answers[0].decision_id
    await log.flush()
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 3 and log.dropped == 3


async def test_a_full_buffer_never_drops_a_decision_being_written(
    sqlite_url: str, start_server: StartServer
) -> None:
    """Decisions made while a full group is being written make room among the decisions that
    wait, not in the group: what commits is never counted unlogged, and keeps answering its
    request id meanwhile. A group that fails goes back to the front, its oldest dropped."""
    server = await start_server(sqlite_url, decision_flush_ms=60_000.0, decision_log_max_pending=3)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    log = server.app.decisions

    async def select(request_id: str) -> str:
        request = pb.SelectRequest(tenant="acme", router="chat", prompt="hi", request_id=request_id)
        response: pb.SelectResponse = await server.router.Select(request)
        return response.decision_id

    async def more_while_writing() -> list[str]:
        return [await select(r) for r in ("r3", "r4", "r5", "r6", "r0")]

    first = [await select(f"r{i}") for i in range(3)]
    _, during = await meanwhile(
        server.app.db, "INSERT INTO decisions", more_while_writing, log.flush(), moment=60.0
    )
    assert during[4] == first[0]  # r0, being written, still answered its request id
    assert (log.pending, log.dropped) == (3, 1)  # r3 made room for r6; r0..r2 committed
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 6 and log.dropped == 1

    # The database fails the group: it waits again, oldest first, and makes room then.
    before = [await select(f"s{i}") for i in range(3)]
    async with table_away(server.app.db, "decisions"):
        with pytest.raises(Unavailable):
            await meanwhile(
                server.app.db,
                "INSERT INTO decisions",
                partial(select, "s3"),
                log.flush(),
                moment=60.0,
            )
        assert (log.pending, log.dropped) == (3, 2)  # s0 dropped, never written
    assert await select("s1") == before[1] and await select("s0") != before[0]
    await log.flush()
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 6 + 3 and log.dropped == 3


async def test_request_id_probe_sees_what_is_committed_on_sqlite_only(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url, decision_flush_ms=60_000.0)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    request = pb.SelectRequest(tenant="acme", router="chat", prompt="hi", request_id="r1")
    first = await server.router.Select(request)
    router_id = (await server.app.catalog.get("acme", "chat")).router_id
    probe = RequestIdProbe(sqlite_url)  # its own connection, as another process would have
    assert probe.has_decision(router_id, "r1") is False  # pending: in memory only
    await server.app.decisions.flush()
    assert probe.has_decision(router_id, "r1") is True
    assert probe.has_decision(router_id, "r2") is False
    assert probe.has_decision(router_id + 1, "r1") is False
    assert (await server.router.Select(request)).decision_id == first.decision_id
    probe.close()
    # Where it cannot tell, the database is asked the usual way.
    assert RequestIdProbe("sqlite+aiosqlite://").has_decision(router_id, "r1") is None
    assert RequestIdProbe("postgresql+asyncpg://u@h/db").has_decision(router_id, "r1") is None
    absent = sqlite_url.replace("banditd.db", "absent.db")
    assert RequestIdProbe(absent).has_decision(router_id, "r1") is None


async def test_a_twin_of_a_request_answers_what_the_claim_holder_logs(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url, decision_flush_ms=60_000.0)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    router_id = (await server.app.catalog.get("acme", "chat")).router_id
    log = server.app.decisions

    async def select(request_id: str) -> pb.SelectResponse:
        request = pb.SelectRequest(tenant="acme", router="chat", prompt="hi", request_id=request_id)
        response: pb.SelectResponse = await server.router.Select(request)
        return response

    # A Select holding the claim on "r1" logs its decision: its twin answers that one.
    held = await log.claim(router_id, "r1")
    assert held.earlier is None
    twin = asyncio.create_task(select("r1"))
    made = await select("r0")
    decision = (await log.claim(router_id, "r0")).earlier  # a repeat: the decision of "r0"
    assert decision is not None and decision.token == made.decision_id
    log.add(replace(decision, decision_id="d-r1", request_id="r1", token="t-r1"))
    assert (await twin).decision_id == "t-r1"
    # A holder that fails releases the claim: its twin decides for itself, once.
    held = await log.claim(router_id, "r2")
    twin = asyncio.create_task(select("r2"))
    log.release(held)
    answer = await twin
    assert answer.decision_id not in ("t-r1", made.decision_id)
    log.release(held)  # a no-op once the claim went to the twin
    assert (await select("r2")).decision_id == answer.decision_id


def test_request_id_probe_answers_again_once_the_file_is_there(tmp_path: Path) -> None:
    path = tmp_path / "later.db"
    probe = RequestIdProbe(f"sqlite+aiosqlite:///{path}", retry_after_s=0.0)
    assert probe.has_decision(1, "r1") is None
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE decisions (router_id INTEGER, request_id TEXT)")
        conn.execute("INSERT INTO decisions VALUES (1, 'r1')")
    assert probe.has_decision(1, "r1") is True
    assert probe.has_decision(1, "r2") is False
    probe.close()
