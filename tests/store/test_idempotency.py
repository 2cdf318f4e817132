"""Idempotency keys over real gRPC: a resend of a recorded feedback event (its answer lost, an
upload sent again, feedback parked before its decision) is answered as that event and counted
once, whatever the router's combine; another key is another event."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from sqlalchemy import select

from banditd.store.models import feedback_events, feedback_pending
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, wait_until

HELD = 600_000.0  # decision_flush_ms that keeps a replica's decisions in memory (unflushed)


async def choose(server: Running) -> str:
    embedding = pb.Embedding(values=np.random.default_rng(0).normal(size=4).tolist())
    d = await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", embedding=embedding)
    )
    return d.decision_id


def rating(decision_id: str, key: str, reward: float = 1.0, **fields: Any) -> pb.FeedbackRequest:
    return pb.FeedbackRequest(
        tenant="acme", decision_id=decision_id, reward=reward, idempotency_key=key, **fields
    )


async def signals(server: Running) -> list[tuple[float, str | None]]:
    """(reward, idempotency key) of each event in the log, in id order."""
    async with server.app.db.transaction() as conn:
        rows = await conn.execute(
            select(feedback_events.c.reward, feedback_events.c.idempotency_key).order_by(
                feedback_events.c.id
            )
        )
        return [(r.reward, r.idempotency_key) for r in rows]


async def test_a_resend_with_its_key_counts_once_under_mean(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    d = await choose(server)
    first = await server.router.Feedback(rating(d, "k1", 1.0, cost_usd=0.01))
    assert await server.router.Feedback(rating(d, "k1", 1.0, cost_usd=0.01)) == first
    second = await server.router.Feedback(rating(d, "k2", 0.0, cost_usd=0.03))
    assert second.event_id > first.event_id  # another key: the decision's next signal
    # Each answered as it was, the first with its own cost, not the decision's cost since.
    assert await server.router.Feedback(rating(d, "k1", 1.0, cost_usd=0.01)) == first
    assert await server.router.Feedback(rating(d, "k2", 0.0, cost_usd=0.03)) == second
    assert (first.cost_usd, second.cost_usd) == (pytest.approx(0.01), pytest.approx(0.03))
    assert await signals(server) == [(1.0, "k1"), (0.0, "k2")]
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    arm = next(a for a in stats.arms if a.feedback_count)
    assert (arm.feedback_count, arm.mean_reward) == (1, pytest.approx(0.5))
    assert arm.spend_usd == pytest.approx(0.03)


async def test_a_resend_under_first_is_answered_as_recorded_not_refused(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await choose(server)
    first = await server.router.Feedback(rating(d, "k1"))
    assert await server.router.Feedback(rating(d, "k1")) == first
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another event: one per decision
        await server.router.Feedback(rating(d, "k2"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await signals(server) == [(1.0, "k1")]


async def test_a_resent_upload_or_stream_counts_each_event_once(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    made = [await choose(server) for _ in range(3)]
    events = [rating(d, f"e{i}", 1.0) for i, d in enumerate(made)] + [rating(made[0], "e0")]
    batch = pb.FeedbackBatch(tenant="acme", events=events)
    sent = await server.router.UploadFeedback(iter([batch]))
    assert (sent.accepted, sent.duplicate) == (3, 1)  # e0 twice in the batch: once
    for again in (
        await server.router.UploadFeedback(iter([batch])),
        await server.router.StreamFeedback(iter(events)),
    ):
        assert (again.accepted, again.duplicate, again.invalid) == (0, 4, 0)
        assert [e.kind for e in again.errors] == ["duplicate"] * 4
        assert "idempotency_key" in again.errors[0].message
    assert await signals(server) == [(1.0, "e0"), (1.0, "e1"), (1.0, "e2")]


async def test_parked_feedback_resent_before_and_after_its_join_counts_once(
    database_url: str, start_server: StartServer
) -> None:
    """Replica a made the decision and has not flushed it; replica b parks its feedback."""
    a = await start_server(database_url, decision_flush_ms=HELD, tail_interval_s=0.05)
    b = await start_server(database_url, tail_interval_s=0.05)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    d = await choose(a)
    parked = await b.router.Feedback(rating(d, "k1"))
    assert parked.event_id == 0
    assert await b.router.Feedback(rating(d, "k1")) == parked  # resent while it waits
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another event waits for the join
        await b.router.Feedback(rating(d, "k2", 0.0))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    await a.app.decisions.flush()

    async def joined() -> bool:
        async with b.app.db.transaction() as conn:
            states = list(await conn.scalars(select(feedback_pending.c.state)))
        return states == ["joined"]

    await wait_until(joined, "the parked feedback to be joined")
    for server in (a, b):  # resent after the join: the event it became
        again = await server.router.Feedback(rating(d, "k1"))
        assert (again.event_id, again.reward) == (1, 1.0)
    assert await signals(a) == [(1.0, "k1")]


async def test_concurrent_resends_on_two_replicas_commit_one_event(
    database_url: str, start_server: StartServer
) -> None:
    a = await start_server(database_url)
    b = await start_server(database_url)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    d = await choose(a)
    await a.app.decisions.flush()  # visible to both
    replies = await asyncio.gather(
        *(server.router.Feedback(rating(d, "k1")) for server in (a, b, a, b))
    )
    assert all(reply == replies[0] for reply in replies)
    assert await signals(a) == [(1.0, "k1")]
