"""The delayed join (banditd.flows.joiner): parked feedback meets its decision, once, whichever
replica's joiner gets to it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from sqlalchemy import select

from banditd.flows import joiner
from banditd.flows.joiner import Joiner
from banditd.store.engine import Database
from banditd.store.models import feedback_events, feedback_pending
from banditd.store.pending import CLAIM_TIMEOUT_S, Joinable, PendingStore
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config

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
