"""End to end over real gRPC on loopback, against SQLite and a throwaway Postgres."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sqlalchemy import delete

from banditd.edge.server import build_app
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior
from banditd.store import Database
from banditd.store.events import EventLog
from banditd.store.models import posterior_snapshots
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.helpers import Running, StartServer, router_config, wait_until

DIM = 4


def best_arm(x: np.ndarray) -> str:
    """Ground truth of the synthetic task: 'cheap' wins where x0 > 0, 'strong' elsewhere."""
    return "cheap" if x[0] > 0 else "strong"


def reward_of(arm: str, x: np.ndarray, rng: np.random.Generator) -> float:
    p = 0.9 if arm == best_arm(x) else 0.15
    return float(rng.random() < p)


async def learn(server: Running, rounds: int, seed: int = 1) -> list[bool]:
    """Select/feedback loop on random contexts; returns whether each pick was the best arm."""
    rng = np.random.default_rng(seed)
    hits = []
    for _ in range(rounds):
        x = rng.normal(size=DIM).astype(np.float32)
        d = await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=x))
        )
        hits.append(d.arm == best_arm(x))
        await server.router.Feedback(
            pb.FeedbackRequest(
                tenant="acme", decision_id=d.decision_id, reward=reward_of(d.arm, x, rng)
            )
        )
    return hits


PROBES = [
    np.array(v, dtype=np.float32) for v in ([1.5, 0, 0, 0], [-1.5, 0.2, 0, 0], [0.3, -1, 1, 0])
]


async def probe(server: Running) -> list[tuple[str, list[tuple[str, float]]]]:
    out = []
    for x in PROBES:
        d = await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=x))
        )
        out.append((d.arm, [(r.arm, r.score) for r in d.ranking]))
    return out


def stats_tuple(stats: pb.GetStatsResponse) -> list[tuple[str, int, float, float]]:
    return [
        (a.arm, a.feedback_count, round(a.mean_reward, 12), round(a.spend_usd, 12))
        for a in stats.arms
    ]


async def test_learns_best_arm_per_region_and_survives_restart(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url, snapshot_every=37)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(exploration=0.3)))
    hits = await learn(server, rounds=240)
    assert np.mean(hits[:40]) < 0.8, "too good before learning: the test would prove nothing"
    assert np.mean(hits[-80:]) >= 0.85

    before_stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    before_choices = await probe(server)
    assert before_stats.feedback_count == 240
    assert before_stats.decisions == 240
    await server.stop()

    # A snapshot (every 37 events) plus the tail must rebuild exactly the same posterior.
    again = await start_server(database_url, snapshot_every=37)
    after_stats = await again.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats_tuple(after_stats) == stats_tuple(before_stats)
    assert after_stats.applied_event_id == before_stats.applied_event_id
    assert await probe(again) == before_choices
    await again.stop()

    # And so must a replay of the whole log, with every snapshot gone.
    db = Database(database_url)
    async with db.transaction() as conn:
        await conn.execute(delete(posterior_snapshots))
    await db.close()
    replayed = await start_server(database_url)
    assert replayed.app.catalog._by_id[1].posterior.last_event_id == 240
    assert await probe(replayed) == before_choices


async def test_same_request_id_returns_same_decision(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    req = pb.SelectRequest(tenant="acme", router="chat", request_id="req-1", prompt="hello there")
    first = await server.router.Select(req)
    second = await server.router.Select(req)  # still pending in the decision log
    assert second == first
    await server.app.decisions.flush()
    third = await server.router.Select(req)  # now from the database
    assert third == first
    other = await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", request_id="req-2", prompt="hello there")
    )
    assert other.decision_id != first.decision_id
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 2
    await server.stop()
    restarted = await start_server(database_url)
    assert await restarted.router.Select(req) == first


async def test_health_and_reflection(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "banditd.v1.Router", "banditd.v1.Admin"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_services(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)

    def list_services() -> set[str]:  # the reflection client is synchronous: run it in a thread
        with grpc.insecure_channel(server.address) as channel:
            return set(ProtoReflectionDescriptorDatabase(channel).get_services())

    services = await asyncio.to_thread(list_services)
    assert {"banditd.v1.Router", "banditd.v1.Admin", "grpc.health.v1.Health"} <= services


async def test_feedback_updates_stats_and_spend(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d1 = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="a b c"))
    d2 = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="d e f"))
    r1 = await server.router.Feedback(
        pb.FeedbackRequest(
            tenant="acme", decision_id=d1.decision_id, thumb=pb.THUMB_UP, cost_usd=0.002
        )
    )
    r2 = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d2.decision_id, thumb=pb.THUMB_DOWN)
    )
    assert (r1.reward, r1.cost_usd) == (1.0, 0.002)
    assert (r2.reward, r2.cost_usd) == (0.0, pytest.approx(d2.expected_cost_usd))
    assert r2.event_id > r1.event_id
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 2
    assert stats.spend_usd == pytest.approx(0.002 + d2.expected_cost_usd)
    assert stats.applied_event_id == r2.event_id
    assert sum(a.mean_reward * a.feedback_count for a in stats.arms) == pytest.approx(1.0)


async def test_stats_show_where_feedback_brought_the_prior_level(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(prior_quality=0.8)))
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.prior_level == pytest.approx(0.8)  # no feedback: the router's prior_quality
    for i in range(60):  # every arm answers badly: one good answer in ten
        d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="q"))
        thumb = pb.THUMB_UP if i % 10 == 0 else pb.THUMB_DOWN
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, thumb=thumb)
        )
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    state = server.app.catalog._by_id[1]
    assert stats.prior_level == pytest.approx(0.8 + state.posterior.level)
    assert stats.prior_level < 0.6


async def test_changing_the_prior_rebuilds_the_posterior_from_the_log(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url, snapshot_every=10)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    await learn(server, rounds=45)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(forgetting=0.9)))
    state = server.app.catalog._by_id[1]
    prior = Prior.of(state.spec)  # the defaults, price tiers of the arms, the new forgetting
    assert (prior.dim, prior.forgetting, len(prior.arm_quality)) == (DIM + 1, 0.9, 3)
    expected = Posterior.empty(prior, 300)
    for event in await EventLog(server.app.db).after(1, 0):
        expected.apply(event)
    for arm in ("cheap", "mid", "strong"):
        live, rebuilt = state.posterior.index(arm), expected.index(arm)  # may add an unseen arm
        np.testing.assert_array_equal(state.posterior.theta[live], expected.theta[rebuilt])
    assert state.posterior.last_event_id == 45


@pytest.mark.postgres
async def test_no_select_is_answered_before_the_budgets_are_loaded(
    postgres_url: str, start_server: StartServer
) -> None:
    """A replica starting (a restart, or a worker of `serve --workers` that the kernel already
    hands connections) answered Selects before it had loaded the budgets: each was decided as if
    there were none, a REFUSE budget's exhausted limit ignored. It takes calls once they are in."""
    first = await start_server(postgres_url)
    await first.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    budget = pb.Budget(
        tenant="acme",
        limit_usd=1e-9,
        period=pb.BUDGET_PERIOD_DAY,
        on_exhausted=pb.ON_EXHAUSTED_REFUSE,
    )
    await first.admin.SetBudget(pb.SetBudgetRequest(budget=budget))
    select = pb.SelectRequest(tenant="acme", router="chat", prompt="hi")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await first.router.Select(select)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    settings = first.app.settings.model_copy(update={"migrate_on_start": False})
    app = await build_app(settings)
    blocker = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with blocker.transaction():  # the new replica's start waits to read the budgets
            await blocker.execute("LOCK TABLE budgets IN ACCESS EXCLUSIVE MODE")
            starting = asyncio.create_task(app.start())
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            await wait_until(lambda: blocker.fetchval(waiting), "the start to wait for the lock")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as early:  # held until started
                    await rpc.RouterStub(channel).Select(select, timeout=5)
            assert early.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await starting
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as later:
                await rpc.RouterStub(channel).Select(select, timeout=30)
        assert later.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await blocker.close()
        await app.stop(0)
