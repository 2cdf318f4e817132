"""The Prometheus endpoint reports what the server did."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

from banditd.edge import codec
from banditd.store import Database
from banditd.store.routers import Routers
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_endpoint(sqlite_url: str, start_server: StartServer) -> None:
    port = free_port()
    server = await start_server(sqlite_url, metrics_listen=f"127.0.0.1:{port}")
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(tenant="metered")))
    d = await server.router.Select(pb.SelectRequest(tenant="metered", router="chat", prompt="hi"))
    await server.router.Feedback(
        pb.FeedbackRequest(
            tenant="metered",
            decision_id=d.decision_id,
            reward=1,
            cost_usd=0.25,
            latency_ms=250.0,
            energy_wh=1.5,
        )
    )

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    text = await asyncio.to_thread(scrape)
    labels = f'arm="{d.arm}",explored="False",router="chat",tenant="metered"'
    assert f"banditd_decisions_total{{{labels}}} 1.0" in text
    assert f'banditd_spend_usd_total{{arm="{d.arm}",router="chat",tenant="metered"}} 0.25' in text
    arm = f'arm="{d.arm}",router="chat",tenant="metered"'
    assert f"banditd_reported_latency_seconds_count{{{arm}}} 1.0" in text
    assert f"banditd_reported_latency_seconds_sum{{{arm}}} 0.25" in text
    assert f"banditd_energy_wh_total{{{arm}}} 1.5" in text
    assert 'banditd_rpc_seconds_count{code="OK",method="Select"}' in text
    assert 'banditd_applied_event_id{router="chat",tenant="metered"} 1.0' in text
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="metered", name="chat"))
    assert (stats.log_event_id, stats.lag_events) == (1, 0)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def _sample(text: str, series: str) -> float:
    found = [line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(series + " ")]
    return float(found[0]) if found else 0.0


async def test_calls_refused_at_the_edge_are_in_rpc_seconds(
    sqlite_url: str, start_server: StartServer
) -> None:
    """docs/operations.md: banditd_rpc_seconds is by RPC and status code, "refusals are the
    non-OK codes" (the dashboard's "refused" line reads them): a call the edge guard refuses
    (no API key, rate limit) is one, as a refusal of the servicer is."""
    port = free_port()
    server = await start_server(
        sqlite_url, metrics_listen=f"127.0.0.1:{port}", auth="required", auth_cache_seconds=0
    )
    series = 'banditd_rpc_seconds_count{code="UNAUTHENTICATED",method="Select"}'
    before = _sample(await asyncio.to_thread(_scrape, port), series)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.router.Select(pb.SelectRequest(tenant="t", router="chat", prompt="hi"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _sample(await asyncio.to_thread(_scrape, port), series) == before + 1


async def test_metrics_on_a_bracketed_ipv6_address(
    sqlite_url: str, start_server: StartServer
) -> None:
    """BANDITD_METRICS_LISTEN takes HOST:PORT as the gRPC listeners do, IPv6 in brackets
    ([::1]:9464) included: serve started nowhere with 'Name or service not known'."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = int(s.getsockname()[1])
    await start_server(sqlite_url, metrics_listen=f"[::1]:{port}")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    assert "banditd_rpc_seconds" in await asyncio.to_thread(scrape)


@pytest.mark.postgres
async def test_a_unary_call_its_client_cancelled_is_cancelled_not_ok(
    postgres_url: str, start_server: StartServer
) -> None:
    """A call whose client went away (cancelled, or past its deadline) while the server worked on
    it answered nothing: CANCELLED in banditd_rpc_seconds, not OK."""
    server = await start_server(postgres_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))

    def count(code: str) -> float:
        labels = {"method": "GetSpend", "code": code}
        return REGISTRY.get_sample_value("banditd_rpc_seconds_count", labels) or 0.0

    ok, cancelled = count("OK"), count("CANCELLED")
    blocker = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with blocker.transaction():  # GetSpend reads decisions: it waits for this lock
            await blocker.execute("LOCK TABLE decisions IN ACCESS EXCLUSIVE MODE")
            call = server.admin.GetSpend(pb.GetSpendRequest(tenant="acme", router="chat"))
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            await wait_until(lambda: blocker.fetchval(waiting), "GetSpend to wait for the lock")
            call.cancel()
            await wait_until(lambda: count("OK") + count("CANCELLED") > ok + cancelled, "its end")
    finally:
        await blocker.close()
    assert (count("OK"), count("CANCELLED")) == (ok, cancelled + 1)


async def test_a_deleted_routers_gauges_go_on_every_replica(
    sqlite_url: str, start_server: StartServer
) -> None:
    """Per-router gauges (applied event id, feedback lag, arm breakers) of a deleted router
    leave the scrape: at once on the replica that deleted it, at its next tail round on one
    that hears of the delete from the database."""
    port = free_port()
    server = await start_server(sqlite_url, metrics_listen=f"127.0.0.1:{port}")
    for name in ("here", "there", "kept"):
        config = router_config(tenant="gone", name=name)
        await server.admin.PutRouter(pb.PutRouterRequest(router=config))
        d = await server.router.Select(pb.SelectRequest(tenant="gone", router=name, prompt="q"))
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="gone", decision_id=d.decision_id, reward=1)
        )
    await server.tail_rounds(1)

    def gauges(name: str) -> list[str]:
        text = _scrape(port)
        wanted = ("banditd_applied_event_id", "banditd_feedback_lag", "banditd_arm_breaker")
        return [
            line
            for line in text.splitlines()
            if line.startswith(wanted) and f'router="{name}",tenant="gone"' in line
        ]

    assert len(await asyncio.to_thread(gauges, "here")) == 1 + 1 + 3  # 3 arms' breakers
    await server.admin.DeleteRouter(pb.DeleteRouterRequest(tenant="gone", name="here"))
    assert await asyncio.to_thread(gauges, "here") == []
    other = Database(sqlite_url)  # another replica's delete, as the log shows it
    try:
        assert await Routers(other).delete("gone", "there") is not None
    finally:
        await other.close()
    assert len(await asyncio.to_thread(gauges, "there")) == 5
    await server.tail_rounds(1)
    assert await asyncio.to_thread(gauges, "there") == []
    assert len(await asyncio.to_thread(gauges, "kept")) == 5


async def test_an_arm_removed_from_a_router_leaves_the_breaker_gauges_on_every_replica(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A PutRouter that drops an arm drops its breaker gauge: at once on the replica that took
    the change, at its next tail round on one that reads it from the database."""
    port = free_port()
    server = await start_server(sqlite_url, metrics_listen=f"127.0.0.1:{port}")
    for name in ("here", "there"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config("arms", name)))
    await server.tail_rounds(1)

    def breakers(name: str) -> list[str]:
        return sorted(
            line.split('arm="')[1].split('"')[0]
            for line in _scrape(port).splitlines()
            if line.startswith("banditd_arm_breaker_state")
            and f'router="{name}",tenant="arms"' in line
        )

    assert await asyncio.to_thread(breakers, "here") == ["cheap", "mid", "strong"]
    fewer = router_config("arms", "here", arms=("cheap", "strong"))
    await server.admin.PutRouter(pb.PutRouterRequest(router=fewer))
    assert await asyncio.to_thread(breakers, "here") == ["cheap", "strong"]

    other = Database(sqlite_url)  # another replica's change, as the database shows it
    try:
        await Routers(other).put(
            codec.spec_from_proto(router_config("arms", "there", arms=("mid",)))
        )
    finally:
        await other.close()
    assert await asyncio.to_thread(breakers, "there") == ["cheap", "mid", "strong"]
    await server.tail_rounds(1)
    assert await asyncio.to_thread(breakers, "there") == ["mid"]
