"""The Select flow's rules beyond the policy: forced exploration of a new arm, eligibility."""

from __future__ import annotations

from banditd.flows.tokens import NO_ARM, TokenSigner
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import SIGNING_KEY, Running, StartServer, router_config

X = pb.Embedding(values=[1.0, 0.0, 0.0, 0.0])


async def select(server: Running, **fields: object) -> pb.SelectResponse:
    request = pb.SelectRequest(tenant="acme", router="chat", embedding=X, **fields)
    response: pb.SelectResponse = await server.router.Select(request)
    return response


async def test_new_arm_is_forced_for_a_bounded_number_of_decisions(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    old = router_config(arms=("cheap", "strong"), prior_quality=0.0, exploration=0.01)
    await server.admin.PutRouter(pb.PutRouterRequest(router=old))
    for _ in range(20):
        d = await select(server, candidates=["strong"])
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0.9)
        )
    grown = router_config(
        arms=("cheap", "strong", "newbie"), prior_quality=0.0, exploration=0.01, explore_new_arm=3
    )
    await server.admin.PutRouter(pb.PutRouterRequest(router=grown))
    # "cheap" has no feedback either, so it is forced first (configured order breaks the tie)...
    picks = [await select(server) for _ in range(7)]
    assert [p.arm for p in picks] == ["cheap"] * 3 + ["newbie"] * 3 + ["strong"]
    assert all(p.explored and p.propensity == 1.0 for p in picks[:6])
    assert not picks[6].explored
    # ...and an arm that got its feedback is no longer forced, whatever the process counted.
    await server.admin.PutRouter(pb.PutRouterRequest(router=grown))  # resets the counters
    for p in picks[:6]:
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=p.decision_id, reward=0.1)
        )
    assert (await select(server)).arm == "strong"


async def test_candidates_and_max_cost_limit_the_ranking(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await select(server, candidates=["mid", "strong"])
    assert {r.arm for r in d.ranking} == {"mid", "strong"}
    cheap_cost = min(r.expected_cost_usd for r in (await select(server)).ranking)
    d = await select(server, max_cost_usd=cheap_cost)
    assert [r.arm for r in d.ranking] == ["cheap"]
    assert d.expected_cost_usd <= cheap_cost


async def test_the_token_carries_the_arms_positions(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A compact token's arm and challenger fields are the served arms' places in the
    router's arm list (no challenger: NO_ARM)."""
    server = await start_server(sqlite_url)
    arms = ("cheap", "mid", "strong")
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(arms=arms)))
    signer = TokenSigner(SIGNING_KEY.encode())
    seen = set()
    for k in range(12):
        d = await select(server, compare=k % 2 == 1, candidates=[arms[k % 3], arms[(k + 1) % 3]])
        claims = signer.verify(d.decision_id, "acme")
        assert claims.arm_index == arms.index(d.arm)
        want = arms.index(d.challenger) if d.challenger else NO_ARM
        assert claims.challenger_index == want
        seen.add((claims.arm_index, claims.challenger_index))
    assert len(seen) >= 4


async def test_an_open_breaker_fails_open_among_the_arms_within_the_request_limits(
    sqlite_url: str, start_server: StartServer
) -> None:
    """Every arm within max_cost_usd / max_latency_ms is open: the router still answers with
    one of them (fail open), rather than FAILED_PRECONDITION for the healthy arms the limits
    leave out."""
    server = await start_server(sqlite_url)
    config = router_config(
        breaker_error_rate=0.5, breaker_min_events=2, breaker_cooldown_seconds=3600
    )
    for arm, ms in zip(config.arms, (100.0, 5000.0, 5000.0), strict=True):
        arm.prior_latency_ms = ms
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    for _ in range(2):
        d = await select(server, candidates=["cheap"])
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0, error=True)
        )
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert {a.arm: a.breaker for a in stats.arms}["cheap"] == "open"
    ranking = (await select(server)).ranking
    assert "cheap" not in {r.arm for r in ranking}
    cheapest = min(r.expected_cost_usd for r in ranking)
    cheap_cost = d.expected_cost_usd
    assert cheap_cost < cheapest
    for limits in ({"max_cost_usd": cheap_cost}, {"max_latency_ms": 1000.0}):
        d = await select(server, **limits)
        assert d.arm == "cheap" and [r.arm for r in d.ranking] == ["cheap"], limits
