"""Group commit of decisions: one bad row never blocks the others."""

from __future__ import annotations

from banditd.store import Repository
from banditd.v1 import banditd_pb2 as pb
from tests.conftest import StartServer, router_config


async def test_decision_of_a_vanished_router_does_not_block_the_group(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url, decision_flush_ms=60_000.0)  # flush by hand only
    for name in ("gone", "kept"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(name=name)))
        await server.router.Select(pb.SelectRequest(tenant="acme", router=name, prompt="hi"))
    # The router disappears behind the decision log's back (as a concurrent delete would).
    assert await Repository(server.app.db).delete_router("acme", "gone") is not None
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
