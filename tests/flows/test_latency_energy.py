"""Latency and energy heads, and per-request trade-offs (issue 21), on a real server.

A synthetic stream where the fast arm, the cheap arm and the best arm differ: "fast" answers in
200 ms at quality 0.6, "cheap" costs a tenth of it and takes 3 s at quality 0.5, "best" takes 8 s
at quality 0.9 and is the priciest and the hungriest.
"""

from __future__ import annotations

import io
import math
from typing import Any

import grpc
import numpy as np
import pytest

from banditd import client as bc
from banditd.commands.ingest import parse_record
from banditd.domain import ArmSpec, FeedbackEvent, RouterSpec
from banditd.state import posterior_snapshot
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, wait_until

C = grpc.StatusCode
# name -> (input, output USD/Mtok, quality, latency ms, measured Wh)
ARMS = {
    "fast": (1.0, 4.0, 0.6, 200.0, 0.5),
    "cheap": (0.1, 0.4, 0.5, 3000.0, 0.2),
    "best": (3.0, 15.0, 0.9, 8000.0, 4.0),
}
ROUNDS = 25  # per arm: past the heads' 20 reports, so the regression is in use


def config(**fields: Any) -> pb.RouterConfig:
    return pb.RouterConfig(
        tenant="acme",
        name="chat",
        arms=[
            pb.Arm(
                name=name,
                input_price_per_mtok=inp,
                output_price_per_mtok=out,
                prior_latency_ms=1000.0,
                input_energy_wh_per_mtok=100.0,
                output_energy_wh_per_mtok=1000.0,
            )
            for name, (inp, out, *_) in ARMS.items()
        ],
        embedding_dim=4,
        exploration=0.001,  # near-greedy: the test checks the trade-off, not exploration
        prior_weight=1.0,
        **fields,
    )


async def train(server: Running, *, energy: bool = True) -> None:
    """ROUNDS decisions per arm (forced by candidates), each with its reward and latency."""
    for _ in range(ROUNDS):
        for name, (_, _, quality, latency, wh) in ARMS.items():
            decision = await server.router.Select(
                pb.SelectRequest(tenant="acme", router="chat", prompt="hello", candidates=[name])
            )
            assert decision.arm == name
            feedback = pb.FeedbackRequest(
                tenant="acme", decision_id=decision.decision_id, reward=quality, latency_ms=latency
            )
            if energy:
                feedback.energy_wh = wh
            await server.router.Feedback(feedback)


async def select(server: Running, **fields: Any) -> pb.SelectResponse:
    return await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", prompt="hello", **fields)
    )


def by_arm(response: pb.SelectResponse) -> dict[str, pb.RankedArm]:
    return {r.arm: r for r in response.ranking}


async def test_priors_before_reports(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config()))
    ranked = by_arm(await select(server))
    for r in ranked.values():
        assert r.expected_latency_ms == 1000.0  # prior_latency_ms
        assert r.expected_energy_wh > 0  # per-token figures x expected tokens
    # A router whose arms give no priors reports 0 and ranks as before.
    bare = config()
    for arm in bare.arms:
        arm.prior_latency_ms = arm.input_energy_wh_per_mtok = arm.output_energy_wh_per_mtok = 0
    await server.admin.PutRouter(pb.PutRouterRequest(router=bare))
    assert all(
        r.expected_latency_ms == 0 and r.expected_energy_wh == 0
        for r in (await select(server)).ranking
    )


async def test_trade_offs_on_a_synthetic_stream(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config()))
    await train(server)
    ranked = by_arm(await select(server))
    for name, (*_, latency, wh) in ARMS.items():
        assert ranked[name].expected_latency_ms == pytest.approx(latency, rel=0.02)
        assert ranked[name].expected_energy_wh == pytest.approx(wh, rel=0.02)
    # GetStats: each arm's mean reported latency and energy.
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    for a in stats.arms:
        assert a.mean_latency_ms == ARMS[a.arm][3] and a.latency_reports == ROUNDS
        assert a.mean_energy_wh == pytest.approx(ARMS[a.arm][4]) and a.energy_reports == ROUNDS
    # Quality alone: the best arm; price: the cheap one; latency: the fast one.
    assert (await select(server)).arm == "best"
    assert (await select(server, cost_weight=1000.0)).arm == "cheap"
    # The choice moves as latency_weight (utility per second) grows.
    picks = [(await select(server, latency_weight=w)).arm for w in (0.0, 0.01, 0.1, 1.0)]
    assert picks == ["best", "best", "fast", "fast"]
    # Utility = quality - cost_weight x USD - latency_weight x s - energy_weight x Wh.
    response = await select(server, latency_weight=0.1, energy_weight=0.01)
    for r in response.ranking:
        penalty = 0.1 * r.expected_latency_ms / 1000 + 0.01 * r.expected_energy_wh
        assert r.score == pytest.approx(r.quality_score - penalty)
    # Energy weighs too: at 0.2 per Wh the best arm's 4 Wh cost it the lead.
    assert (await select(server, energy_weight=0.2)).arm == "fast"
    # The router's defaults apply when a Select gives none; the request's own win.
    await server.admin.PutRouter(pb.PutRouterRequest(router=config(default_latency_weight=1.0)))
    assert (await select(server)).arm == "fast"
    assert (await select(server, latency_weight=0.0)).arm == "best"


async def test_max_latency_ms(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config()))
    await train(server, energy=False)
    under_5s = await select(server, max_latency_ms=5000.0)
    assert under_5s.arm == "fast"
    assert {r.arm for r in under_5s.ranking} == {"fast", "cheap"}
    assert all(r.expected_latency_ms <= 5000.0 for r in under_5s.ranking)
    assert [r.arm for r in (await select(server, max_latency_ms=500.0)).ranking] == ["fast"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await select(server, max_latency_ms=100.0)
    assert err.value.code() == C.FAILED_PRECONDITION
    assert "max_latency_ms" in (err.value.details() or "")
    # Without energy reports, the energy head stays on the per-token prior.
    ranked = by_arm(await select(server))
    assert ranked["best"].expected_energy_wh != pytest.approx(4.0)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"latency_weight": -1.0}, "latency_weight"),
        ({"latency_weight": math.nan}, "latency_weight"),
        ({"latency_weight": math.inf}, "latency_weight"),
        ({"latency_weight": 1e300}, "latency_weight"),
        ({"energy_weight": -0.5}, "energy_weight"),
        ({"energy_weight": math.nan}, "energy_weight"),
        ({"max_latency_ms": -1.0}, "max_latency_ms"),
        ({"max_latency_ms": math.nan}, "max_latency_ms"),
        ({"max_latency_ms": 1e300}, "max_latency_ms"),
    ],
)
async def test_bad_select_fields_are_invalid(
    sqlite_url: str, start_server: StartServer, fields: dict[str, float], field: str
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await select(server, **fields)
    assert err.value.code() == C.INVALID_ARGUMENT
    assert field in (err.value.details() or "")


async def test_bad_config_and_feedback_fields_are_invalid(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config()))
    for bad in (
        config(default_latency_weight=-1.0),
        config(default_energy_weight=math.nan),
        config(default_latency_weight=1e300),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.admin.PutRouter(pb.PutRouterRequest(router=bad))
        assert err.value.code() == C.INVALID_ARGUMENT
    for arm_field, value in (
        ("prior_latency_ms", -5.0),
        ("prior_latency_ms", math.nan),
        ("input_energy_wh_per_mtok", math.inf),
        ("output_energy_wh_per_mtok", -1.0),
        ("output_energy_wh_per_mtok", 1e300),
    ):
        bad = config()
        setattr(bad.arms[0], arm_field, value)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.admin.PutRouter(pb.PutRouterRequest(router=bad))
        assert err.value.code() == C.INVALID_ARGUMENT
        assert arm_field in (err.value.details() or "")
    decision = await select(server)
    for value in (-1.0, math.nan, math.inf, 1e300):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.router.Feedback(
                pb.FeedbackRequest(
                    tenant="acme", decision_id=decision.decision_id, reward=1.0, energy_wh=value
                )
            )
        assert err.value.code() == C.INVALID_ARGUMENT
        assert "energy_wh" in (err.value.details() or "")


@pytest.mark.parametrize("snapshot_every", [10, 100_000])
async def test_learnt_latency_survives_a_restart(
    database_url: str, start_server: StartServer, snapshot_every: int
) -> None:
    """From a snapshot (every 10 events) or from the log alone: the same heads after a restart."""
    server = await start_server(database_url, snapshot_every=snapshot_every)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config()))
    await train(server)
    before = by_arm(await select(server, latency_weight=0.1))
    await server.stop()
    again = await start_server(database_url, snapshot_every=snapshot_every)
    after = by_arm(await select(again, latency_weight=0.1))
    for name in ARMS:
        assert after[name].expected_latency_ms == before[name].expected_latency_ms
        assert after[name].expected_energy_wh == before[name].expected_energy_wh
    assert (await select(again, latency_weight=0.1)).arm == "fast"
    assert (await select(again, max_latency_ms=5000.0)).arm == "fast"


def _event(event_id: int, arm: str, latency: float | None, wh: float | None) -> FeedbackEvent:
    x = np.array([1.0, 0.5, -0.5])
    return FeedbackEvent(
        event_id,
        1,
        f"d{event_id}",
        arm,
        x,
        0.5,
        0.001,
        None,
        None,
        latency,
        False,
        0.0,
        energy_wh=wh,
    )


def test_posterior_heads_are_a_function_of_the_events() -> None:
    events = [_event(i, "a" if i % 2 else "b", 100.0 * i, 0.1 * i) for i in range(1, 60)]
    one, two = Posterior.empty(Prior(3), 300.0), Posterior.empty(Prior(3), 300.0)
    for e in events:
        one.apply(e)
    for e in events[:30]:
        two.apply(e)
    # A snapshot half way, then the tail.
    two = posterior_snapshot.load(posterior_snapshot.dump(two))
    for e in events[30:]:
        two.apply(e)
    for name in ("lat_a_inv", "lat_theta", "lat_n", "energy_theta", "energy_sum"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    # The heads' ridge is their own: a heavy quality prior does not pull a latency toward 0.
    heavy = Posterior.empty(Prior(3, weight=30.0), 300.0)
    for i in range(1, 26):
        heavy.apply(_event(i, "a", 8000.0, 4.0))
    arm = ArmSpec("a", 1.0, 1.0, prior_latency_ms=1000.0)
    x = np.array([1.0, 0.5, -0.5])
    numbers = RouterSpec("t", "r", (arm,)).arm_numbers
    _, latency, energy = heavy.expected_costs(np.zeros(1, dtype=np.int64), numbers, 500.0, x)
    assert latency[0] == pytest.approx(8000.0, rel=0.03)
    assert energy[0] == pytest.approx(4.0, rel=0.03)
    # A snapshot written before the heads is refused (the catalog then rebuilds from the log).
    data = dict(np.load(io.BytesIO(posterior_snapshot.dump(one))))
    for key in [k for k in data if k.startswith(("lat_", "energy_"))]:
        del data[key]
    buf = io.BytesIO()
    np.savez(buf, **data)
    with pytest.raises(ValueError, match="latency and energy"):
        posterior_snapshot.load(buf.getvalue())


async def test_python_client_passes_the_new_fields(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config()))
    client = bc.AsyncClient(server.address, tenant="acme")
    try:
        decision = await client.select(
            router="chat", prompt="hello", latency_weight=0.1, energy_weight=0.0
        )
        assert all(r.expected_latency_ms == 1000.0 for r in decision.ranking)
        assert all(r.expected_energy_wh > 0 for r in decision.ranking)
        await client.feedback(
            decision_id=decision.decision_id, reward=1.0, latency_ms=250.0, energy_wh=1.5
        )
        with pytest.raises(bc.InvalidArgument):
            await client.select(router="chat", prompt="hello", max_latency_ms=math.nan)
    finally:
        await client.close()
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    chosen = next(a for a in stats.arms if a.arm == decision.arm)
    assert (chosen.mean_latency_ms, chosen.mean_energy_wh) == (250.0, 1.5)


async def test_two_replicas_learn_the_same_heads(
    database_url: str, start_server: StartServer
) -> None:
    """Feedback to one replica: the other, tailing the log, holds the same heads bit for bit."""
    a = await start_server(database_url, tail_interval_s=0.05, snapshot_every=25)
    b = await start_server(database_url, tail_interval_s=0.05, snapshot_every=25)
    await a.admin.PutRouter(pb.PutRouterRequest(router=config()))
    await train(a)
    post_a = a.app.catalog._by_id[1].posterior
    await wait_until(b.caught_up, "replica b to catch up")
    post_b = b.app.catalog._by_id[1].posterior
    assert post_a.last_event_id == post_b.last_event_id == len(ARMS) * ROUNDS
    for name in ARMS:
        ia, ib = post_a.index(name), post_b.index(name)
        for head in ("lat_a_inv", "lat_theta", "energy_a_inv", "energy_theta"):
            assert np.array_equal(getattr(post_a, head)[ia], getattr(post_b, head)[ib]), head
    assert (await select(b, latency_weight=0.1)).arm == "fast"
    assert [r.arm for r in (await select(b, max_latency_ms=500.0)).ranking] == ["fast"]


async def test_latency_drift_is_followed_with_forgetting(
    sqlite_url: str, start_server: StartServer
) -> None:
    """The fast arm slows from 200 ms to 6 s: with forgetting the head follows it, and a
    max_latency_ms of 1 s no longer admits it."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config(forgetting=0.8)))
    for latency in (200.0, 6000.0):
        for _ in range(ROUNDS):
            d = await select(server, candidates=["fast"])
            await server.router.Feedback(
                pb.FeedbackRequest(
                    tenant="acme", decision_id=d.decision_id, reward=0.6, latency_ms=latency
                )
            )
        ranked = by_arm(await select(server))
        assert ranked["fast"].expected_latency_ms == pytest.approx(latency, rel=0.05)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await select(server, candidates=["fast"], max_latency_ms=1000.0)
    assert err.value.code() == C.FAILED_PRECONDITION


async def test_shadows_weigh_latency_as_the_live_policy_does(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A shadow identical to the live policy agrees with it at every latency weight."""
    server = await start_server(sqlite_url)
    twin = pb.ShadowPolicy(name="twin", policy="linucb", exploration=0.001)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config(shadows=[twin])))
    await train(server)
    picks = {(await select(server, latency_weight=w)).arm for w in (0.0, 1.0, 0.0, 1.0)}
    assert picks == {"best", "fast"}
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    (shadow,) = stats.shadows
    assert shadow.decisions == len(ARMS) * ROUNDS + 4
    assert shadow.agreement == 1.0


def test_ingest_reads_energy_wh() -> None:
    record = {"decision_id": "d", "tenant": "acme", "reward": 1, "latency_ms": 9, "energy_wh": 2.5}
    msg = parse_record(record, None)
    assert msg.HasField("energy_wh") and msg.energy_wh == 2.5 and msg.latency_ms == 9.0
