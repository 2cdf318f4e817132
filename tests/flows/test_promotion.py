"""Promotion and rollback: versioned router configurations, history kept, atomic changes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import grpc
import pytest
from alembic import command

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.domain import RouterSpec
from banditd.store import Database
from banditd.store.engine import alembic_config
from banditd.store.routers import Routers
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config


async def test_promote_and_rollback_round_trip(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    admin = server.admin
    v1 = (await admin.PutRouter(pb.PutRouterRequest(router=router_config()))).router
    d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="a b"))
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    )
    candidate = router_config(
        tenant="",
        name="",
        policy="thompson",
        exploration=0.3,
        shadows=[pb.ShadowPolicy(name="old", policy="linucb")],
    )
    promoted = await admin.PromoteRouter(
        pb.PromoteRouterRequest(tenant="acme", name="chat", candidate=candidate, expected_version=1)
    )
    assert promoted.previous_version == 1 and promoted.router.version == 2
    assert promoted.router.policy == "thompson" and promoted.router.tenant == "acme"
    assert [s.name for s in promoted.router.shadows] == ["old"]
    live = (await admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))).router
    assert live == promoted.router

    # A promotion over a stale version changes nothing.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.PromoteRouter(
            pb.PromoteRouterRequest(
                tenant="acme", name="chat", candidate=router_config(), expected_version=1
            )
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert "no longer at version 1" in (err.value.details() or "")

    back = await admin.RollbackRouter(pb.RollbackRouterRequest(tenant="acme", name="chat"))
    assert back.restored_version == 1 and back.router.version == 3
    restored = pb.RouterConfig()
    restored.CopyFrom(back.router)
    restored.version = 1
    assert restored == v1  # exactly the first configuration again
    again = await admin.RollbackRouter(
        pb.RollbackRouterRequest(tenant="acme", name="chat", to_version=2)
    )
    assert again.router.policy == "thompson" and again.router.version == 4

    history = await admin.ListRouterVersions(
        pb.ListRouterVersionsRequest(tenant="acme", name="chat")
    )
    assert [(v.version, v.action) for v in history.versions] == [
        (1, "put"),
        (2, "promote"),
        (3, "rollback"),
        (4, "rollback"),
    ]
    assert history.versions[1].router == promoted.router
    assert all(v.created_at_unix > 0 for v in history.versions)

    # The router serves on, its learning kept: the posterior is a function of prior + events.
    stats = await admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 1 and stats.applied_event_id == stats.log_event_id
    d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="a b"))
    assert d.arm in {"cheap", "mid", "strong"}


async def test_promotion_and_rollback_refusals(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    admin = server.admin

    async def refused(call: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call  # type: ignore[misc]
        return err.value.code(), err.value.details() or ""

    unknown = await refused(
        admin.PromoteRouter(
            pb.PromoteRouterRequest(tenant="acme", name="chat", candidate=router_config())
        )
    )
    assert unknown == (grpc.StatusCode.NOT_FOUND, "unknown tenant 'acme'")
    await admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    first = await refused(
        admin.RollbackRouter(pb.RollbackRouterRequest(tenant="acme", name="chat"))
    )
    assert first == (
        grpc.StatusCode.NOT_FOUND,
        "router acme/chat has no version before its live version 1",
    )
    missing = await refused(
        admin.RollbackRouter(pb.RollbackRouterRequest(tenant="acme", name="chat", to_version=7))
    )
    assert missing == (
        grpc.StatusCode.NOT_FOUND,
        "router acme/chat has no stored version 7 (stored: 1..1)",
    )
    live = await refused(
        admin.RollbackRouter(pb.RollbackRouterRequest(tenant="acme", name="chat", to_version=1))
    )
    assert live == (grpc.StatusCode.INVALID_ARGUMENT, "to_version: version 1 is the live version")
    bad = router_config(tenant="", name="", policy="nope")
    invalid = await refused(
        admin.PromoteRouter(pb.PromoteRouterRequest(tenant="acme", name="chat", candidate=bad))
    )
    assert invalid[0] == grpc.StatusCode.INVALID_ARGUMENT and invalid[1].startswith("router.policy")
    versions = await admin.ListRouterVersions(
        pb.ListRouterVersionsRequest(tenant="acme", name="chat")
    )
    assert [v.version for v in versions.versions] == [1]  # refusals wrote nothing


def test_upgrade_starts_the_history_of_existing_routers(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    config = alembic_config(url, DEFAULT_MIGRATIONS_DIR)
    command.upgrade(config, "0004")
    with sqlite3.connect(path) as con:
        con.execute(
            "insert into routers (tenant, name, policy, exploration, default_cost_weight, "
            "embedding_dim, feedback_ttl_seconds, prior_output_tokens, version, created_at, "
            "updated_at) values ('t', 'r', 'thompson', 0.3, 5.0, 8, 100, 300, 3, 1.0, 2.0)"
        )
        con.execute("insert into arms values (1, 'a', 0, 1.0, 2.0, 0)")
        con.execute("insert into arms values (1, 'b', 1, 3.0, 4.0, 1)")
    command.upgrade(config, "head")

    async def read() -> tuple[RouterSpec, list[tuple[int, str, float, RouterSpec]]]:
        db = Database(url)
        try:
            routers = Routers(db)
            return (await routers.get("t", "r")).spec, await routers.versions(1)
        finally:
            await db.close()

    live, versions = asyncio.run(read())
    assert versions == [(3, "put", 2.0, live)]
    assert live.policy == "thompson" and [a.disabled for a in live.arms] == [False, True]


async def test_versions_written_by_a_newer_banditd_are_read(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A version stored by a later banditd (a rolling upgrade, or one rolled back) may hold
    keys this one does not know, on the router, an arm or a shadow: they are left out, so the
    versions are listed and rolled back to, not an INTERNAL error."""
    server = await start_server(sqlite_url)
    admin = server.admin
    shadow = pb.ShadowPolicy(name="s", policy="thompson")
    await admin.PutRouter(pb.PutRouterRequest(router=router_config(shadows=[shadow])))
    await admin.PutRouter(pb.PutRouterRequest(router=router_config(policy="thompson")))
    with sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///")) as db:
        (config,) = db.execute("SELECT config FROM router_versions WHERE version = 1").fetchone()
        stored = json.loads(config)
        stored["later_key"] = 1
        for part in stored["arms"] + stored["shadows"]:
            part["later_key"] = "x"
        db.execute("UPDATE router_versions SET config = ? WHERE version = 1", (json.dumps(stored),))
    request = pb.ListRouterVersionsRequest(tenant="acme", name="chat")
    versions = await admin.ListRouterVersions(request)
    assert [v.router.policy for v in versions.versions] == ["linucb", "thompson"]
    rolled = await admin.RollbackRouter(
        pb.RollbackRouterRequest(tenant="acme", name="chat", to_version=1)
    )
    assert (rolled.router.version, rolled.router.policy) == (3, "linucb")
    assert [s.name for s in rolled.router.shadows] == ["s"]
    assert [a.name for a in rolled.router.arms] == ["cheap", "mid", "strong"]
