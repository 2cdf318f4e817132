"""Feedback poisoning defences: the per-client cap on one arm, and the anomaly signal."""

from __future__ import annotations

import grpc
import pytest
from grpc import StatusCode as C
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from banditd.domain import ArmSpec, RouterSpec
from banditd.edge import keys
from banditd.flows.feedback_guard import FeedbackGuard
from banditd.store.api_keys import KeyStore
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, table_away


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def on(arm: str) -> pb.SelectRequest:
    return pb.SelectRequest(
        tenant="acme", router="chat", embedding=pb.Embedding(values=[1, 0, 0, 0]), candidates=[arm]
    )


def fb(token: str, reward: float = 1.0) -> pb.FeedbackRequest:
    return pb.FeedbackRequest(tenant="acme", decision_id=token, reward=reward)


async def test_cap_settings_are_kept(database_url: str, start_server: StartServer) -> None:
    server = await start_server(database_url)
    config = router_config(feedback_cap_per_key=25, feedback_cap_window_seconds=600)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    await server.stop()
    again = await start_server(database_url)
    got = (await again.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))).router
    assert (got.feedback_cap_per_key, got.feedback_cap_window_seconds) == (25, 600)
    await again.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    got = (await again.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))).router
    assert (got.feedback_cap_per_key, got.feedback_cap_window_seconds) == (0, 3600)


async def _capped_server(start_server: StartServer, url: str) -> tuple[Running, str, str]:
    server = await start_server(url, auth="required", auth_cache_seconds=0)
    store = KeyStore(server.app.db)
    admin, _ = await keys.create_key(store, "acme", ["admin", "select"])
    one, _ = await keys.create_key(store, "acme", ["feedback"])
    two, _ = await keys.create_key(store, "acme", ["feedback"])
    config = router_config(feedback_cap_per_key=2, feedback_cap_window_seconds=3600)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config), metadata=bearer(admin))
    return server, admin, one + "|" + two


async def test_one_key_cannot_pile_feedback_on_an_arm(
    sqlite_url: str, start_server: StartServer
) -> None:
    server, admin, both = await _capped_server(start_server, sqlite_url)
    one, two = (bearer(k) for k in both.split("|"))
    md = bearer(admin)
    tokens = [(await server.router.Select(on("cheap"), metadata=md)).decision_id for _ in range(6)]
    for token in tokens[:2]:
        await server.router.Feedback(fb(token), metadata=one)
    stats = pb.GetStatsRequest(tenant="acme", name="chat")
    before = await server.admin.GetStats(stats, metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(fb(tokens[2]), metadata=one)
    assert err.value.code() == C.RESOURCE_EXHAUSTED
    assert "feedback cap" in (err.value.details() or "")
    assert "'cheap'" in (err.value.details() or "")
    assert await server.admin.GetStats(stats, metadata=md) == before
    reply = await server.router.StreamFeedback(iter([fb(tokens[3])]), metadata=one)
    assert (reply.accepted, reply.invalid) == (0, 1)
    assert "feedback cap" in reply.errors[0].message
    # Another key of the same tenant has its own allowance; so has another arm.
    await server.router.Feedback(fb(tokens[2]), metadata=two)
    other_arm = (await server.router.Select(on("mid"), metadata=md)).decision_id
    await server.router.Feedback(fb(other_arm), metadata=one)
    reply = await server.router.StreamFeedback(iter([fb(tokens[3]), fb(tokens[4])]), metadata=two)
    assert (reply.accepted, reply.invalid) == (1, 1)
    after = await server.admin.GetStats(stats, metadata=md)
    assert {a.arm: a.feedback_count for a in after.arms} == {"cheap": 4, "mid": 1, "strong": 0}
    value = REGISTRY.get_sample_value(
        "banditd_feedback_capped_total", {"tenant": "acme", "router": "chat", "arm": "cheap"}
    )
    assert value is not None and value >= 3


async def test_the_cap_counts_accepted_feedback_not_attempts(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A Feedback whose commit the database fails (tried three times, answered UNAVAILABLE)
    and a duplicate write nothing and do not use up the client's cap: its retry is accepted,
    and the cap still stops the events past it."""
    server = await start_server(sqlite_url, tail_interval_s=3600)
    config = router_config(feedback_cap_per_key=2, feedback_cap_window_seconds=3600)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    tokens = [(await server.router.Select(on("cheap"))).decision_id for _ in range(3)]
    async with table_away(server.app.db, "feedback_events"):  # the event log cannot be written
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.router.Feedback(fb(tokens[0]))
        assert err.value.code() == C.UNAVAILABLE
    assert (await server.router.Feedback(fb(tokens[0]))).event_id == 1  # the client's retry
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(fb(tokens[0]))
    assert err.value.code() == C.ALREADY_EXISTS
    # Accepted (a duplicate's INSERT ... ON CONFLICT DO NOTHING may use up an id: not 2).
    assert (await server.router.Feedback(fb(tokens[1]))).event_id > 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(fb(tokens[2]))
    assert err.value.code() == C.RESOURCE_EXHAUSTED
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 2


async def test_the_cap_counts_parked_feedback_not_attempts(
    sqlite_url: str, start_server: StartServer
) -> None:
    """The same for feedback parked until its decision is visible (compact tokens): a park the
    database fails is not counted; the one parked is."""
    a = await start_server(sqlite_url, decision_flush_ms=600_000.0, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    config = router_config(feedback_cap_per_key=1, feedback_cap_window_seconds=3600)
    await a.admin.PutRouter(pb.PutRouterRequest(router=config))
    tokens = [(await a.router.Select(on("cheap"))).decision_id for _ in range(2)]
    await b.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))  # b loads the router
    async with table_away(b.app.db, "feedback_events"):  # parking reads the event log first
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await b.router.Feedback(fb(tokens[0]))
        assert err.value.code() == C.UNAVAILABLE
    assert (await b.router.Feedback(fb(tokens[0]))).event_id == 0  # parked
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.router.Feedback(fb(tokens[1]))
    assert err.value.code() == C.RESOURCE_EXHAUSTED


async def test_reported_tokens_are_bounded(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await server.router.Select(on("cheap"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(
            pb.FeedbackRequest(
                tenant="acme", decision_id=d.decision_id, reward=1.0, output_tokens=10**12
            )
        )
    assert err.value.code() == C.INVALID_ARGUMENT
    assert "output_tokens" in (err.value.details() or "")


SPEC = RouterSpec("acme", "chat", (ArmSpec("cheap", 1, 1), ArmSpec("mid", 1, 1)))


def test_anomaly_signal_when_recent_feedback_departs_from_history() -> None:
    guard = FeedbackGuard(anomaly_window=20, anomaly_min_history=100, anomaly_threshold=0.3)
    labels = {"tenant": "acme", "router": "chat", "arm": "cheap"}
    before = REGISTRY.get_sample_value("banditd_feedback_anomalies_total", labels) or 0.0
    with capture_logs() as logs:
        steady = [guard.observe(SPEC, 1, "cheap", 0.8 + 0.1 * (i % 3 - 1)) for i in range(300)]
        assert not any(steady)
        flood = [guard.observe(SPEC, 1, "cheap", 0.0) for _ in range(60)]
        guard.observe(SPEC, 1, "mid", 0.0)  # another arm is judged on its own history
    assert any(flood)
    assert sum(flood) <= 3  # at most one signal per window of events
    after = REGISTRY.get_sample_value("banditd_feedback_anomalies_total", labels)
    assert after == before + sum(flood)
    anomalies = [entry for entry in logs if entry["event"] == "feedback_anomaly"]
    assert len(anomalies) == sum(flood)
    assert anomalies[0]["arm"] == "cheap" and anomalies[0]["historic_mean_reward"] > 0.7
    assert anomalies[0]["recent_mean_reward"] < anomalies[0]["historic_mean_reward"] - 0.3
    divergence = REGISTRY.get_sample_value("banditd_feedback_divergence", labels)
    assert divergence is not None and divergence < -0.3


def test_no_signal_before_enough_history() -> None:
    guard = FeedbackGuard(anomaly_window=20, anomaly_min_history=100, anomaly_threshold=0.3)
    assert not any(guard.observe(SPEC, 2, "cheap", 1.0) for _ in range(50))
    assert not any(guard.observe(SPEC, 2, "cheap", 0.0) for _ in range(50))


async def test_a_batch_that_fails_while_parking_uses_up_no_cap(
    sqlite_url: str, start_server: StartServer
) -> None:
    """An upload whose parking fails part way (a second router that cannot be loaded while the
    database is out) parks nothing and counts nothing: the retry of its first feedback, whose
    router was loaded and counted it, is accepted."""
    a = await start_server(sqlite_url, decision_flush_ms=600_000.0, tail_interval_s=3600)
    b = await start_server(sqlite_url, tail_interval_s=3600)
    for name in ("chat", "other"):
        config = router_config(name=name, feedback_cap_per_key=1, feedback_cap_window_seconds=60)
        await a.admin.PutRouter(pb.PutRouterRequest(router=config))
    mine = (await a.router.Select(on("cheap"))).decision_id
    request = pb.SelectRequest(tenant="acme", router="other", embedding=on("cheap").embedding)
    theirs = (await a.router.Select(request)).decision_id
    await b.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))  # b loads "chat" only
    async with table_away(b.app.db, "posterior_snapshots"):  # "other" cannot be loaded
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await b.router.StreamFeedback(iter([fb(mine), fb(theirs)]))
        assert err.value.code() == C.UNAVAILABLE
    assert (await b.router.Feedback(fb(mine))).event_id == 0  # parked: the client's retry
