"""Compact decision tokens (issue 20): short, signed, tenant-bound, expiring; x stays on the
server, and feedback that arrives before its decision row is visible is joined to it later."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest
from alembic import command
from prometheus_client import REGISTRY
from sqlalchemy import select, text, update

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.flows.tokens import TokenSigner
from banditd.store import Database, migrate
from banditd.store.engine import alembic_config
from banditd.store.events import EventLog
from banditd.store.models import decisions, feedback_events, feedback_pending
from banditd.store.pending import PendingStore
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import SIGNING_KEY, Running, StartServer, router_config, wait_until

C = grpc.StatusCode
SIGNER = TokenSigner(SIGNING_KEY.encode())
HELD = 600_000.0  # decision_flush_ms that keeps a replica's decisions in memory (unflushed)


def embedding(dim: int = 4, seed: int = 0) -> pb.Embedding:
    return pb.Embedding(values=np.random.default_rng(seed).normal(size=dim).tolist())


async def choose(server: Running, **fields: Any) -> pb.SelectResponse:
    request = {"tenant": "acme", "router": "chat", "embedding": embedding(), **fields}
    return await server.router.Select(pb.SelectRequest(**request))


async def pending_states(server: Running) -> list[str]:
    async with server.app.db.transaction() as conn:
        return list(
            await conn.scalars(select(feedback_pending.c.state).order_by(feedback_pending.c.id))
        )


async def event_rows(server: Running) -> list[Any]:
    async with server.app.db.transaction() as conn:
        return list((await conn.execute(select(feedback_events))).all())


def unjoined(metric: str = "banditd_feedback_unjoined_total") -> float:
    labels = {"tenant": "acme", "router": "chat"}
    return REGISTRY.get_sample_value(metric, labels) or 0.0


REFUSED = "banditd_feedback_join_refused_total"


async def test_tokens_are_short_for_a_256_d_router(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(embedding_dim=256)))
    d = await choose(server, embedding=embedding(256))
    assert d.decision_id.startswith("2.") and len(d.decision_id) <= 160
    claims = SIGNER.verify(d.decision_id, "acme")
    assert claims.x is None  # x stays on the server
    reply = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    )
    assert reply.event_id == 1  # same replica: found in its decision log, no wait
    (event,) = await EventLog(server.app.db).after(1, 0)
    assert event.arm == d.arm and event.x.shape == (257,)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.applied_event_id == 1


async def test_refusals_write_nothing(database_url: str, start_server: StartServer) -> None:
    server = await start_server(database_url, decision_flush_ms=HELD)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(tenant="globex", name="chat"))
    )
    d = await choose(server)
    claims = SIGNER.verify(d.decision_id, "acme")
    tampered = d.decision_id[:30] + ("A" if d.decision_id[30] != "A" else "B") + d.decision_id[31:]
    expired = SIGNER.sign(replace(claims, expires_at=time.time() - 5))
    cases = [
        (pb.FeedbackRequest(tenant="acme", decision_id=tampered, reward=1), C.PERMISSION_DENIED),
        (
            pb.FeedbackRequest(tenant="globex", decision_id=d.decision_id, reward=1),
            C.PERMISSION_DENIED,
        ),
        (pb.FeedbackRequest(tenant="acme", decision_id=expired, reward=1), C.FAILED_PRECONDITION),
        (
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=2),
            C.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.router.Feedback(request)
        assert err.value.code() == code, err.value.details()
    await server.app.decisions.flush()
    assert await pending_states(server) == [] and await event_rows(server) == []


async def test_an_old_v1_token_is_still_accepted(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await choose(server)
    claims = await server.claims(d.decision_id)  # x and the arm, from the decision
    old = SIGNER.sign_v1(claims)
    assert old.startswith("v1.")
    reply = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=old, reward=1.0)
    )
    assert reply.event_id == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the same decision, either token
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
        )
    assert err.value.code() == C.ALREADY_EXISTS


async def test_feedback_before_the_decision_row_is_joined_once(
    database_url: str, start_server: StartServer
) -> None:
    """Replica a made the decision and has not flushed it; replica b takes the feedback."""
    a = await start_server(database_url, decision_flush_ms=HELD, tail_interval_s=0.05)
    b = await start_server(database_url, tail_interval_s=0.05)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    made = [await choose(a) for _ in range(3)]
    reply = await b.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=made[0].decision_id, reward=1.0)
    )
    assert reply.event_id == 0 and reply.reward == 1.0  # accepted, joined later
    batch = pb.FeedbackBatch(
        tenant="acme",
        events=[
            pb.FeedbackRequest(decision_id=d.decision_id, thumb=pb.THUMB_DOWN)
            for d in (made[1], made[2], made[1])  # made[1] twice: once only
        ],
    )
    upload = await b.router.UploadFeedback(iter([batch]))
    assert (upload.accepted, upload.duplicate) == (2, 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # once per decision while it waits
        await a.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=made[0].decision_id, reward=0.0)
        )
    assert err.value.code() == C.ALREADY_EXISTS
    assert await pending_states(b) == ["pending"] * 3
    for server in (a, b):  # several tail rounds: nothing to join yet
        await server.tail_rounds()
    assert await event_rows(b) == []

    await a.app.decisions.flush()  # the group commit lands

    async def applied() -> bool:
        return all(s.app.catalog._by_id[1].posterior.last_event_id == 3 for s in (a, b))

    await wait_until(applied, "the parked feedback to be joined on both replicas")
    assert await pending_states(b) == ["joined"] * 3
    rows = await event_rows(a)
    assert [(r.decision_id, r.reward) for r in rows] == [
        (SIGNER.verify(made[0].decision_id, "acme").decision_id, 1.0),
        (SIGNER.verify(made[1].decision_id, "acme").decision_id, 0.0),
        (SIGNER.verify(made[2].decision_id, "acme").decision_id, 0.0),
    ]
    assert [r.arm for r in rows] == [d.arm for d in made]
    for server in (a, b):  # more rounds join nothing twice
        await server.tail_rounds()
    assert len(await event_rows(a)) == 3
    for server in (a, b):
        stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
        assert stats.feedback_count == 3 and stats.applied_event_id == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=made[2].decision_id, reward=1.0)
        )
    assert err.value.code() == C.ALREADY_EXISTS


async def test_a_parked_preference_joins_both_arms(
    database_url: str, start_server: StartServer
) -> None:
    a = await start_server(database_url, decision_flush_ms=HELD, tail_interval_s=0.05)
    b = await start_server(database_url, tail_interval_s=0.05)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await choose(a, compare=True)
    assert d.challenger and len(d.decision_id) <= 160
    with pytest.raises(grpc.aio.AioRpcError) as err:  # checked before it is parked
        await b.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
        )
    assert err.value.code() == C.INVALID_ARGUMENT
    reply = await b.router.Feedback(
        pb.FeedbackRequest(
            tenant="acme", decision_id=d.decision_id, preference=pb.PREFER_CHALLENGER
        )
    )
    assert reply.event_id == 0
    await a.app.decisions.flush()

    async def joined() -> bool:
        return await pending_states(b) == ["joined"]

    await wait_until(joined, "the preference to be joined")
    (row,) = await event_rows(b)
    assert (row.arm, row.reward, row.challenger, row.challenger_reward) == (
        d.arm,
        0.0,
        d.challenger,
        1.0,
    )


async def test_a_joined_decision_takes_further_signals_under_combine_last(
    sqlite_url: str, start_server: StartServer
) -> None:
    """Once its parked feedback is joined, a decision takes later signals as any other."""
    a = await start_server(sqlite_url, decision_flush_ms=HELD, tail_interval_s=0.05)
    b = await start_server(sqlite_url, tail_interval_s=0.05)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="last")))
    d = await choose(a)
    reply = await b.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    )
    assert reply.event_id == 0
    await a.app.decisions.flush()

    async def joined() -> bool:
        return await pending_states(b) == ["joined"]

    await wait_until(joined, "the parked feedback to be joined")
    for server in (a, b):  # a user who changes their rating, on either replica
        reply = await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0.0)
        )
        assert reply.event_id > 1
    rows = await event_rows(a)
    assert [(r.signal, r.effective_reward) for r in rows] == [(0, 1.0), (1, 0.0), (2, 0.0)]


async def test_a_parked_thumb_is_answered_with_the_routers_thumb_reward(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A parked thumb's reply says what the join will learn: the router's thumb rewards."""
    a = await start_server(sqlite_url, decision_flush_ms=HELD, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    config = router_config(thumb_up_reward=0.9, thumb_down_reward=0.2)
    await a.admin.PutRouter(pb.PutRouterRequest(router=config))
    up, down = await choose(a), await choose(a)
    reply = await b.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=up.decision_id, thumb=pb.THUMB_UP)
    )
    assert (reply.event_id, reply.reward) == (0, 0.9)  # parked
    reply = await b.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=down.decision_id, thumb=pb.THUMB_DOWN)
    )
    assert (reply.event_id, reply.reward) == (0, 0.2)
    await a.app.decisions.flush()
    await b.tail_rounds(1)
    assert await pending_states(b) == ["joined"] * 2
    assert [r.reward for r in await event_rows(b)] == [0.9, 0.2]  # as answered


async def test_parked_feedback_is_not_replaced_by_the_default_reward(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A decision logged after its reward_wait_seconds, its feedback parked: a tail round that
    gives default rewards while the join is held up (claimed by another replica's joiner, or
    released after a failed commit) leaves that decision to its feedback."""
    a = await start_server(sqlite_url, decision_flush_ms=HELD, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    config = router_config(default_reward=0.0, reward_wait_seconds=1)
    await a.admin.PutRouter(pb.PutRouterRequest(router=config))
    d = await choose(a)
    reply = await b.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    )
    assert reply.event_id == 0
    await asyncio.sleep(1.1)  # the decision is due its default reward when its row lands
    await a.app.decisions.flush()
    store = PendingStore(b.app.db)
    claimed = await store.claim(1000, time.time())  # another replica's joiner, mid-join
    assert len(claimed) == 1
    await a.tail_rounds(1)  # a's joiner finds nothing to claim; its tail gives defaults
    await store.settle([claimed[0].pending_id], "pending", time.time())  # that join let go
    await b.tail_rounds(1)
    assert await pending_states(b) == ["joined"]
    assert [(r.reward, r.defaulted) for r in await event_rows(b)] == [(1.0, False)]


async def test_an_unreadable_parked_row_is_refused_and_the_others_are_joined(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A parked request that cannot be rebuilt (a field this version lacks, set; a value of the
    wrong type; not an object; not JSON at all) is settled refused, once; the rows beside it are
    joined, and counted in banditd_feedback_join_refused_total. A field this version lacks but
    left unset (a newer replica's, unused) does not change the feedback."""
    a = await start_server(sqlite_url, decision_flush_ms=HELD, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    made = [await choose(a) for _ in range(6)]
    reply = await b.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=made[0].decision_id, reward=1.0)
    )
    assert reply.event_id == 0
    claims = [SIGNER.verify(d.decision_id, "acme") for d in made]
    request = {"tenant": "acme", "decision_id": made[1].decision_id, "reward": 0.5}
    stored = [
        {**request, "novel": None},  # unset: joined
        {**request, "decision_id": made[2].decision_id, "novel": 3},
        {**request, "decision_id": made[3].decision_id, "reward": "high"},
        ["not", "an", "object"],
        '{"tenant": "acme", "decision_id": ',  # not JSON
    ]
    async with b.app.db.transaction() as conn:
        for c, value in zip(claims[1:], stored, strict=True):
            row = {"decision_id": c.decision_id, "router_id": c.router_id, "tenant": "acme"}
            if isinstance(value, str):
                await conn.execute(
                    text(
                        "INSERT INTO feedback_pending (decision_id, router_id, tenant, request,"
                        " received_at) VALUES (:decision_id, :router_id, :tenant, :request,"
                        " :received_at)"
                    ),
                    {**row, "request": value, "received_at": time.time()},
                )
            else:
                await conn.execute(
                    feedback_pending.insert().values(**row, request=value, received_at=time.time())
                )
    await a.app.decisions.flush()
    before = unjoined(REFUSED)
    await b.tail_rounds(1)
    assert await pending_states(b) == ["joined", "joined", *["refused"] * 4]
    assert unjoined(REFUSED) == before + 4
    rows = await event_rows(b)
    assert [(r.decision_id, r.reward) for r in rows] == [
        (claims[0].decision_id, 1.0),
        (claims[1].decision_id, 0.5),
    ]
    for server in (a, b):  # never tried again
        await server.tail_rounds()
    assert await pending_states(b) == ["joined", "joined", *["refused"] * 4]
    assert unjoined(REFUSED) == before + 4  # counted once
    assert len(await event_rows(a)) == 2


async def test_a_parked_row_naming_another_decision_is_refused(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A parked row whose request carries the token of another decision than its own (only a
    tampered row can: Feedback parks a request under its token's decision) is refused, never
    joined: one decision's context and arm are not given to another decision's feedback."""
    a = await start_server(sqlite_url, decision_flush_ms=HELD, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    one, other = await choose(a), await choose(a)
    claims = SIGNER.verify(one.decision_id, "acme")
    request = {"tenant": "acme", "decision_id": other.decision_id, "reward": 1.0}
    async with b.app.db.transaction() as conn:
        await conn.execute(
            feedback_pending.insert().values(
                decision_id=claims.decision_id,
                router_id=claims.router_id,
                tenant="acme",
                request=request,
                received_at=time.time(),
            )
        )
    await a.app.decisions.flush()
    await b.tail_rounds(1)
    assert await pending_states(b) == ["refused"]
    assert await event_rows(b) == []


async def test_a_join_that_committed_is_settled_though_a_dead_letter_cannot_be_stored(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A join round whose commit sets one event aside as a dead letter, the letter not
    writable (the database unavailable to it): the rows whose events committed are settled
    joined, not released to be joined again (under combine last, a second signal each)."""
    a = await start_server(sqlite_url, decision_flush_ms=HELD, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="last")))
    good, bad = await choose(a), await choose(a)
    for d in (good, bad):
        reply = await b.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
        )
        assert reply.event_id == 0
    bad_id = SIGNER.verify(bad.decision_id, "acme").decision_id
    async with b.app.db.transaction() as conn:
        # An event the store refuses as data: its created_at (the row's received_at) not finite.
        await conn.execute(
            update(feedback_pending)
            .where(feedback_pending.c.decision_id == bad_id)
            .values(received_at=-math.inf)
        )
        await conn.execute(text("ALTER TABLE dead_letters RENAME TO dead_letters_away"))
    await a.app.decisions.flush()
    await b.tail_rounds(1)
    assert await pending_states(b) == ["joined", "refused"]
    for server in (a, b):
        await server.tail_rounds()
    rows = await event_rows(b)
    good_id = SIGNER.verify(good.decision_id, "acme").decision_id
    assert [(r.decision_id, r.signal) for r in rows] == [(good_id, 0)]


async def test_a_lost_decision_leaves_its_feedback_unapplied_and_counted(
    database_url: str, start_server: StartServer
) -> None:
    a = await start_server(database_url, decision_flush_ms=HELD)
    b = await start_server(database_url, tail_interval_s=0.05, feedback_join_wait_s=0.3)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await choose(a)
    before = unjoined()
    reply = await b.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    )
    assert reply.event_id == 0
    a.app.decisions._pending.clear()  # a crashes before its group commit: the row never comes

    async def orphaned() -> bool:
        return await pending_states(b) == ["orphaned"]

    await wait_until(orphaned, "the parked feedback to be given up")
    assert unjoined() == before + 1
    assert await event_rows(b) == []  # never applied, and the parked row is kept
    for server in (a, b):
        await server.tail_rounds()
    assert unjoined() == before + 1  # counted once


async def test_migration_0015_goes_down_and_up(database_url: str) -> None:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    config = alembic_config(database_url, DEFAULT_MIGRATIONS_DIR)
    await asyncio.to_thread(command.downgrade, config, "0014")
    await asyncio.to_thread(command.upgrade, config, "head")
    db = Database(database_url)
    try:
        assert await PendingStore(db).count("pending") == 0
    finally:
        await db.close()


async def test_an_event_logs_its_decisions_featurisation_and_0021_keeps_the_events(
    database_url: str, start_server: StartServer
) -> None:
    """A compact token's event logs its decision's context_version; a v1 token's, and every
    event logged before migration 0021, none, and the log reads its decision's."""
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    compact, v1 = await choose(server), await choose(server, embedding=embedding(seed=1))
    old = SIGNER.sign_v1(await server.claims(v1.decision_id))
    for token in (compact.decision_id, old):
        await server.router.Feedback(pb.FeedbackRequest(tenant="acme", decision_id=token, reward=1))
    await server.app.decisions.flush()
    async with server.app.db.transaction() as conn:
        logged = set(await conn.scalars(select(decisions.c.context_version)))
    (version,) = logged
    assert version.startswith("hashing:4:")
    assert [r.context_version for r in await event_rows(server)] == [version, None]
    log = EventLog(server.app.db)
    assert [e.context_version for e in await log.after(1, 0)] == [version, version]
    await server.stop()

    config = alembic_config(database_url, DEFAULT_MIGRATIONS_DIR)
    await asyncio.to_thread(command.downgrade, config, "0020")
    await asyncio.to_thread(command.upgrade, config, "head")
    db = Database(database_url)
    try:
        events = await EventLog(db).after(1, 0)
    finally:
        await db.close()
    assert [e.event_id for e in events] == [1, 2]
    assert [e.context_version for e in events] == [version, version]
