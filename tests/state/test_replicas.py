"""Replicas on one database converge: each applies the shared feedback log in id order."""

from __future__ import annotations

import asyncio
from functools import partial

import grpc
import numpy as np
import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config, wait_until


async def test_two_replicas_hold_the_same_posterior(
    database_url: str, start_server: StartServer
) -> None:
    a = await start_server(database_url, tail_interval_s=0.05, snapshot_every=25)
    b = await start_server(database_url, tail_interval_s=0.05, snapshot_every=25)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    rng = np.random.default_rng(7)
    replicas = (a, b)

    async def one_round(i: int) -> None:
        x = rng.normal(size=4).astype(np.float32)
        chooser, teller = replicas[i % 2], replicas[(i // 2) % 2]
        d = await chooser.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=x))
        )
        await teller.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=float(x[0] > 0))
        )

    for start in range(0, 120, 6):  # concurrent feedback to both replicas
        await asyncio.gather(*(one_round(i) for i in range(start, start + 6)))
    post_a = a.app.catalog._by_id[1].posterior
    post_b = b.app.catalog._by_id[1].posterior
    await wait_until(  # a few tail rounds
        lambda: min(post_a.last_event_id, post_b.last_event_id) >= 120, "both replicas to catch up"
    )
    assert post_a.last_event_id == post_b.last_event_id == 120
    for arm in ("cheap", "mid", "strong"):
        ia, ib = post_a.index(arm), post_b.index(arm)
        np.testing.assert_allclose(post_a.a_inv[ia], post_b.a_inv[ib], rtol=0, atol=1e-9)
        np.testing.assert_allclose(post_a.theta[ia], post_b.theta[ib], rtol=0, atol=1e-9)
    probe = pb.SelectRequest(
        tenant="acme", router="chat", embedding=pb.Embedding(values=[1, 0.5, 0, 0])
    )
    da, db = await a.router.Select(probe), await b.router.Select(probe)
    assert [r.arm for r in da.ranking] == [r.arm for r in db.ranking]
    assert [r.score for r in da.ranking] == pytest.approx([r.score for r in db.ranking], abs=1e-9)
    stats_a = await a.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    stats_b = await b.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats_a.feedback_count == stats_b.feedback_count == 120
    assert stats_a.applied_event_id == stats_b.applied_event_id == 120

    # Configuration changes reach the other replica too.
    async def b_ranks(arms: set[str] | None) -> bool:
        """Whether b ranks those arms for the probe (None: b has no such router)."""
        try:
            ranked = {r.arm for r in (await b.router.Select(probe)).ranking}
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            ranked = None
        return ranked == arms

    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config(arms=("cheap", "strong"))))
    await wait_until(partial(b_ranks, {"cheap", "strong"}), "b to take the new arms")
    await a.admin.DeleteRouter(pb.DeleteRouterRequest(tenant="acme", name="chat"))
    await wait_until(partial(b_ranks, None), "b to delete the router")


@pytest.mark.postgres
async def test_postgres_notify_wakes_the_other_replica(
    postgres_url: str, start_server: StartServer
) -> None:
    """With polling made rare (30 s), a commit on one replica still reaches the other at once."""
    a = await start_server(postgres_url, tail_interval_s=30.0)
    b = await start_server(postgres_url, tail_interval_s=30.0)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    await b.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="load it"))
    d = await a.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="hello"))
    sent = await a.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until(
        lambda: b.app.catalog._by_id[1].posterior.last_event_id == sent.event_id, "b woken", 5
    )
    assert loop.time() - started < 1.0


async def test_a_router_deleted_and_created_again_is_not_served_stale_by_another_replica(
    sqlite_url: str, start_server: StartServer
) -> None:
    """SQLite gives a router created after a delete the deleted one's id, at the same version:
    the other replica's log tail must still take it as the new router it is, not keep serving
    the old one's arms and posterior."""
    a = await start_server(sqlite_url, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    select = pb.SelectRequest(tenant="acme", router="chat", prompt="Write a haiku")
    assert (await b.router.Select(select)).arm in {"cheap", "mid", "strong"}
    await a.admin.DeleteRouter(pb.DeleteRouterRequest(tenant="acme", name="chat"))
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config(arms=("fast", "slow"))))
    await b.tail_rounds(1)
    d = await b.router.Select(select)
    assert {r.arm for r in d.ranking} == {"fast", "slow"}


async def test_a_failing_join_does_not_skip_the_log_tail(
    sqlite_url: str, start_server: StartServer
) -> None:
    """The join of parked feedback and the tail of the log are steps of their own: with the
    join failing (its table gone), a round still applies what another replica wrote, and the
    join's failure is logged."""
    a = await start_server(sqlite_url, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    await a.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    select = pb.SelectRequest(tenant="acme", router="chat", prompt="load it")
    await b.router.Select(select)  # b has the router loaded, at no event
    d = await a.router.Select(select)
    sent = await a.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    )
    assert sent.event_id == 1 and b.app.catalog._by_id[1].posterior.last_event_id == 0
    async with b.app.db.transaction() as conn:
        await conn.execute(text("ALTER TABLE feedback_pending RENAME TO feedback_pending_gone"))
    with capture_logs() as logs:
        await b.tail_rounds(1)
    assert b.app.catalog._by_id[1].posterior.last_event_id == sent.event_id
    failed = [e for e in logs if e["event"] in ("tail_failed", "tail_error")]
    assert [e["step"] for e in failed] == ["join"]
