"""The delayed join (banditd.flows.joiner): parked feedback meets its decision, once, whichever
replica's joiner gets to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import numpy as np
import pytest
from sqlalchemy import select

from banditd.flows import joiner
from banditd.flows.joiner import Joiner
from banditd.store.engine import Database
from banditd.store.models import feedback_events, feedback_pending
from banditd.store.pending import CLAIM_TIMEOUT_S, Joinable, PendingStore
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, wait_until

HELD = 600_000.0  # decision_flush_ms that keeps a replica's decisions in memory (unflushed)


class Interleaved(PendingStore):
    """A replica's parked-feedback store whose claims call ``after`` with their count (1 for
    the first), before what they claimed is joined."""

    def __init__(self, db: Database, after: Callable[[int], Awaitable[None]]) -> None:
        super().__init__(db)
        self.claims, self._after = 0, after

    async def claim(self, limit: int, now: float) -> list[Joinable]:
        items = await super().claim(limit, now)
        self.claims += 1
        await self._after(self.claims)
        return items


async def test_a_long_join_round_keeps_its_later_claims(
    sqlite_url: str, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join round that outlasts CLAIM_TIMEOUT_S (a backlog of parked rows, one batch after
    another) claims each batch at the time it claims it: another replica's joiner does not take
    a batch claimed a moment ago for one whose replica died, and join it a second time (under
    combine mean, a second signal of the same feedback)."""
    a = await start_server(sqlite_url, decision_flush_ms=HELD, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    for seed in range(2):
        values = np.random.default_rng(seed).normal(size=4).tolist()
        d = await a.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=values))
        )
        reply = await b.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
        )
        assert reply.event_id == 0  # parked on b: the decision is in a's memory only
    await a.app.decisions.flush()
    assert b.app.joiner is not None
    learner = b.app.joiner._learner  # the replica's own Feedback flow
    monkeypatch.setattr(joiner, "JOIN_BATCH", 1)  # one parked row per claim: two claims
    now = [time.time()]  # the time, as the replicas' clocks read it

    other = Joiner(PendingStore(b.app.db), learner, 3600.0, clock=lambda: now[0] + 1.0)

    async def after(claims: int) -> None:
        if claims == 1:  # the first batch's join takes long: two claim timeouts
            now[0] += 2 * CLAIM_TIMEOUT_S
        elif claims == 2:  # another replica's join round, right after the second claim
            assert await other.run() == 0  # nothing of ours to take

    store = Interleaved(b.app.db, after)
    assert await Joiner(store, learner, 3600.0, clock=lambda: now[0]).run() == 2
    async with b.app.db.transaction() as conn:
        states = list(await conn.scalars(select(feedback_pending.c.state)))
        signals = list(await conn.scalars(select(feedback_events.c.signal)))
    assert states == ["joined", "joined"]
    assert signals == [0, 0]  # each feedback joined once, not a second signal of it


async def parked_on_b(url: str, start_server: StartServer) -> tuple[Running, Running]:
    """Replicas a and b of a router under combine mean, with one feedback parked on b for a
    decision of a's (flushed since, visible to both)."""
    a = await start_server(url, decision_flush_ms=HELD, tail_interval_s=3600)
    b = await start_server(url, tail_interval_s=3600)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    values = np.random.default_rng(0).normal(size=4).tolist()
    d = await a.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=values))
    )
    reply = await b.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    )
    assert reply.event_id == 0  # parked on b: the decision is in a's memory only
    await a.app.decisions.flush()
    return a, b


async def states_and_signals(db: Database) -> tuple[list[str], list[int]]:
    async with db.transaction() as conn:
        states = list(await conn.scalars(select(feedback_pending.c.state)))
        signals = list(await conn.scalars(select(feedback_events.c.signal)))
    return states, signals


async def test_a_join_taken_for_dead_is_applied_once(
    database_url: str, start_server: StartServer
) -> None:
    """A joiner held between its claim and its commit for longer than CLAIM_TIMEOUT_S: another
    replica's joiner takes the claim for dead and joins the feedback. The first one's commit
    then applies nothing (under combine mean it was a second signal of the same feedback)."""
    a, b = await parked_on_b(database_url, start_server)
    assert a.app.joiner is not None and b.app.joiner is not None
    now = time.time()
    later = now + 2 * CLAIM_TIMEOUT_S
    other = Joiner(PendingStore(a.app.db), a.app.joiner._learner, 3600.0, clock=lambda: later)

    async def after(claims: int) -> None:
        assert await other.run() == 1  # the first claim looks dead: the other joins it

    store = Interleaved(b.app.db, after)
    assert await Joiner(store, b.app.joiner._learner, 3600.0, clock=lambda: now).run() == 0
    # Joined once, not a second signal of the same feedback.
    assert await states_and_signals(b.app.db) == (["joined"], [0])


@pytest.mark.postgres
async def test_joins_waiting_inside_their_commits_apply_a_feedback_once(
    postgres_url: str, start_server: StartServer
) -> None:
    """The first joiner's commit waits inside its transaction (on the router's append lock,
    held here by another transaction) past CLAIM_TIMEOUT_S, while another replica takes its
    claim for dead and waits to commit the same feedback. Whichever commits first applies it;
    the other applies nothing."""
    a, b = await parked_on_b(postgres_url, start_server)
    assert a.app.joiner is not None and b.app.joiner is not None
    now = time.time()
    later = now + 2 * CLAIM_TIMEOUT_S
    items = await PendingStore(b.app.db).claim(10, now)
    other = Joiner(PendingStore(a.app.db), a.app.joiner._learner, 3600.0, clock=lambda: later)
    blocker = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT id FROM routers FOR UPDATE")
            first = asyncio.create_task(b.app.joiner._learner.join(items, now))
            await wait_until(lambda: blocker.fetchval(waiting), "the first join to wait")
            second = asyncio.create_task(other.run())

            async def both() -> bool:
                return bool(await blocker.fetchval(waiting) == 2)

            await wait_until(both, "the second join to wait too")
        joined, refused = await first
        assert len(joined) + await second == 1 and not refused
    finally:
        await blocker.close()
    assert await states_and_signals(b.app.db) == (["joined"], [0])
