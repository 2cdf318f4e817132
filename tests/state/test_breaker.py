"""The per-arm circuit breaker: pure logic with injected times, then on a real server."""

from __future__ import annotations

from functools import partial

import grpc
import pytest
from prometheus_client import REGISTRY

from banditd.domain import BreakerConfig
from banditd.state.breaker import ArmHealth, BreakerState
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, wait_until

CONFIG = BreakerConfig(error_rate=0.5, min_events=4, cooldown_s=10.0)
COOLDOWN_S = 5  # the live test's


def _feed(health: ArmHealth, errors: list[bool], at: float = 0.0, arm: str = "a") -> None:
    for error in errors:
        health.observe(arm, error, at)


@pytest.mark.parametrize(
    ("errors", "state"),
    [
        ([True, True, True], BreakerState.CLOSED),  # under the minimum sample
        ([True, True, False, False], BreakerState.CLOSED),  # 0.5 is not above 0.5
        ([True, True, True, False], BreakerState.OPEN),
        ([False, False, False, False, True, True, True], BreakerState.OPEN),  # window of 4
        ([True, False, True, False, False, False, True, False], BreakerState.CLOSED),
    ],
)
def test_opens_above_the_error_rate_of_the_last_min_events(
    errors: list[bool], state: BreakerState
) -> None:
    health = ArmHealth(CONFIG)
    _feed(health, errors)
    assert health.state("a", now=1.0) is state
    assert health.state("b", now=1.0) is BreakerState.CLOSED  # arms are independent


def test_open_half_open_probe_close() -> None:
    health = ArmHealth(CONFIG)
    _feed(health, [True] * 4, at=100.0)
    assert health.blocked(["a", "b"], now=105.0) == {"a"}
    assert health.view("a", 105.0).open_until == 110.0
    _feed(health, [False] * 10, at=105.0)  # late feedback for calls made before it opened
    assert health.state("a", now=109.9) is BreakerState.OPEN
    assert health.state("a", now=110.0) is BreakerState.HALF_OPEN
    assert health.blocked(["a"], now=110.0) == set()  # one probe may go
    health.chose("a", now=110.0)
    assert health.blocked(["a"], now=111.0) == {"a"}  # probe spent, verdict pending
    assert health.blocked(["a"], now=120.5) == set()  # no verdict for a cool-down: probe again
    health.observe("a", False, at=112.0)  # the probe succeeded
    assert health.state("a", now=112.0) is BreakerState.CLOSED
    assert health.view("a", 112.0).error_rate == 0.0  # fresh window
    _feed(health, [True] * 3, at=113.0)
    assert health.state("a", now=113.0) is BreakerState.CLOSED  # needs min_events again


def test_failed_probe_opens_for_another_cool_down() -> None:
    health = ArmHealth(CONFIG)
    _feed(health, [True] * 4, at=0.0)
    health.observe("a", True, at=15.0)
    assert health.state("a", now=20.0) is BreakerState.OPEN
    assert health.state("a", now=25.0) is BreakerState.HALF_OPEN


def test_error_rate_one_never_trips() -> None:
    health = ArmHealth(BreakerConfig(error_rate=1.0, min_events=2, cooldown_s=1.0))
    _feed(health, [True] * 50)
    assert health.state("a", now=0.0) is BreakerState.CLOSED
    assert health.view("a", 0.0).error_rate == 1.0


def test_json_round_trip_keeps_the_event_state() -> None:
    health = ArmHealth(CONFIG)
    _feed(health, [True] * 4, at=50.0, arm="a")
    _feed(health, [True, False], arm="b")
    again = ArmHealth.from_json(health.to_json(), CONFIG)
    assert again.to_json() == health.to_json()
    for now in (55.0, 60.0):
        for arm in ("a", "b"):
            assert again.view(arm, now) == health.view(arm, now)


async def _select(server: Running, candidates: tuple[str, ...] = ()) -> pb.SelectResponse:
    return await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", prompt="hello", candidates=candidates)
    )


async def _arm_states(server: Running) -> dict[str, str]:
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    return {a.arm: a.breaker for a in stats.arms}


async def _cheap_is(server: Running, state: str) -> bool:
    return (await _arm_states(server))["cheap"] == state


async def test_breaker_opens_skips_half_opens_and_closes_on_every_replica(
    database_url: str, start_server: StartServer
) -> None:
    a = await start_server(database_url, tail_interval_s=0.05, snapshot_every=3)
    b = await start_server(database_url, tail_interval_s=0.05, snapshot_every=3)
    # The cool-down outlasts the checks and the restart below, even on a loaded machine.
    config = router_config(
        breaker_error_rate=0.5, breaker_min_events=4, breaker_cooldown_seconds=COOLDOWN_S
    )
    await a.admin.PutRouter(pb.PutRouterRequest(router=config))
    got = await a.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))
    assert (got.router.breaker_error_rate, got.router.breaker_min_events) == (0.5, 4)
    assert got.router.breaker_cooldown_seconds == COOLDOWN_S

    async def fail_cheap(n: int, error: bool = True) -> None:
        for _ in range(n):
            d = await _select(a, candidates=("cheap",))
            assert d.arm == "cheap"
            await a.router.Feedback(
                pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0, error=error)
            )

    await fail_cheap(4)
    for server in (a, b):  # b learns it from the log, as it learns the posterior
        await wait_until(partial(_cheap_is, server, "open"), "the cheap arm's breaker to open")
        assert await _arm_states(server) == {"cheap": "open", "mid": "closed", "strong": "closed"}
        for _ in range(10):
            d = await _select(server)
            assert "cheap" not in {r.arm for r in d.ranking}
        # Only open arms left: the router still answers (fail open).
        assert (await _select(server, candidates=("cheap",))).arm == "cheap"
    stats = await a.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    cheap = next(s for s in stats.arms if s.arm == "cheap")
    assert cheap.recent_error_rate == 0.0 and cheap.breaker_open_until_unix > 0
    labels = {"tenant": "acme", "router": "chat"}
    assert REGISTRY.get_sample_value("banditd_arm_breaker_state", {**labels, "arm": "cheap"}) == 2
    assert REGISTRY.get_sample_value("banditd_arm_breaker_state", {**labels, "arm": "mid"}) == 0

    # A restart restores the breaker with the posterior (snapshot + tail of the log).
    await b.stop()
    c = await start_server(database_url, tail_interval_s=0.05)
    assert (await _arm_states(c))["cheap"] == "open"

    await wait_until(partial(_cheap_is, a, "half_open"), "the cool-down to end", COOLDOWN_S + 5)
    d = await _select(a, candidates=("cheap", "mid"))
    assert "cheap" in {r.arm for r in d.ranking}  # probed again
    await fail_cheap(1, error=False)  # the probe succeeded
    for server in (a, c):
        await wait_until(partial(_cheap_is, server, "closed"), "the cheap arm's breaker to close")


async def test_breaker_settings_are_validated(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    for field, value in (
        ("breaker_error_rate", 1.5),
        ("breaker_error_rate", -0.1),
        ("breaker_cooldown_seconds", 100_000),
        ("breaker_min_events", 20_000),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.admin.PutRouter(
                pb.PutRouterRequest(router=router_config(**{field: value}))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")
