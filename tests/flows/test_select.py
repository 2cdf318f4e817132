"""The Select flow's rules beyond the policy: forced exploration of a new arm, eligibility, what
a Select the budget refuses leaves unspent, the lease a Select's expected cost needs."""

from __future__ import annotations

import time

import grpc
import pytest
from prometheus_client import REGISTRY

from banditd.flows.tokens import NO_ARM, TokenSigner
from banditd.store.budget_leases import Leases
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import SIGNING_KEY, Running, StartServer, router_config, wait_until

X = pb.Embedding(values=[1.0, 0.0, 0.0, 0.0])
BUDGET = pb.Budget(tenant="acme", limit_usd=100.0, period=pb.BUDGET_PERIOD_DAY)
REFUSE = pb.ON_EXHAUSTED_REFUSE


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


async def _lose_the_budget_lease(server: Running) -> None:
    """Close the server's budget lease as a replica reaping it once expired would (the server
    stalled past it): its next charge is refused, ABORTED."""
    assert await Leases(server.app.db, time.time).reap(time.time() + 3600) == 1


async def _refused_by_the_budget(server: Running, **fields: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await select(server, **fields)
    assert err.value.code() == grpc.StatusCode.ABORTED, err.value.details()


async def test_a_select_whose_budget_charge_is_refused_spends_no_forced_pick(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url, budget_refresh_s=3600)  # holds its lease, unrenewed
    config = router_config(arms=("cheap", "strong"), explore_new_arm=2)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=BUDGET))
    assert (await select(server)).arm == "cheap"  # forced once of twice; takes a lease
    await _lose_the_budget_lease(server)
    await _refused_by_the_budget(server)  # forced "cheap", not served
    picks = [await select(server) for _ in range(3)]
    assert [p.arm for p in picks[:2]] == ["cheap", "strong"]  # cheap's second, then strong's
    assert all(p.propensity == 1.0 for p in picks[:2])


async def test_a_select_whose_budget_charge_is_refused_spends_no_half_open_probe(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url, budget_refresh_s=3600)
    config = router_config(breaker_error_rate=0.5, breaker_min_events=2, breaker_cooldown_seconds=3)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    for _ in range(2):
        d = await select(server, candidates=["cheap"])
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0, error=True)
        )
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=BUDGET))
    assert (await select(server, candidates=["mid"])).arm == "mid"  # takes a lease

    async def half_open() -> bool:
        stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
        return {a.arm: a.breaker for a in stats.arms}["cheap"] == "half_open"

    await wait_until(half_open, "the cool-down to end")
    await _lose_the_budget_lease(server)
    await _refused_by_the_budget(server, candidates=["cheap"])  # probes cheap, not served
    d = await select(server, candidates=["cheap", "mid"])
    assert "cheap" in {r.arm for r in d.ranking}  # its probe is still there to take


async def test_a_select_whose_budget_charge_is_refused_counts_no_budget_outcome(
    sqlite_url: str, start_server: StartServer
) -> None:
    """Over the tenant's exhausted budget (on_exhausted CHEAPEST), a Select is charged to its
    router's budget's lease too: when that lease was closed meanwhile, the Select is refused
    (ABORTED), not served, so banditd_budget_outcomes_total does not count it "over_budget"."""
    server = await start_server(sqlite_url, budget_refresh_s=3600)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    router_budget = pb.Budget(
        tenant="acme", router="chat", limit_usd=100.0, period=pb.BUDGET_PERIOD_DAY
    )
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=router_budget))
    assert (await select(server)).budget_outcome == "paced"  # takes the router budget's lease
    tenant_budget = pb.Budget(tenant="acme", limit_usd=0.0, period=pb.BUDGET_PERIOD_DAY)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=tenant_budget))
    labels = {"tenant": "acme", "router": "chat", "outcome": "over_budget"}

    def over_budget() -> float:
        return REGISTRY.get_sample_value("banditd_budget_outcomes_total", labels) or 0.0

    before = over_budget()
    await _lose_the_budget_lease(server)
    await _refused_by_the_budget(server)
    assert over_budget() == before
    assert (await select(server)).budget_outcome == "over_budget"  # served: counted
    assert over_budget() == before + 1


async def test_the_lease_holds_what_the_cost_model_expects_of_this_request(
    sqlite_url: str, start_server: StartServer
) -> None:
    """The cost model has learnt that "essay" requests cost more than the arm's mean: a Select
    for one tops its lease up to that request's expected cost, and is served within the budget
    (not refused, nor served past it) while the budget has the money."""
    server = await start_server(sqlite_url, budget_refresh_s=3600)
    config = router_config(arms=("cheap", "strong"), metadata_keys=["task"])
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    reported = []
    for k in range(60):
        task, cost = ("essay", 0.2) if k % 6 == 0 else ("chat", 0.001)
        d = await select(server, candidates=["strong"], metadata={"task": task})
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1, cost_usd=cost)
        )
        reported.append(cost)
    await wait_until(server.caught_up, "the feedback to be applied")
    essay = await select(server, candidates=["strong"], metadata={"task": "essay"})
    limit = 0.5  # a lease takes max(the need, 10 % of what is unleased): 0.05 here
    assert essay.expected_cost_usd > 0.1 * limit > sum(reported) / len(reported)
    # A day-long window nearly over: the essays' spend is far behind its clock whatever the hour,
    # so the pacer charges next to nothing and the strong arm stays the choice.
    budget = pb.Budget(
        tenant="acme",
        limit_usd=limit,
        period=pb.BUDGET_PERIOD_WINDOW,
        window_seconds=86_400,
        window_start_unix=int(time.time()) - 86_000,
        on_exhausted=REFUSE,
    )
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget))
    served = await select(server, candidates=["strong"], metadata={"task": "essay"})
    assert served.arm == "strong" and served.budget_outcome == "paced"
    assert (await select(server, metadata={"task": "essay"})).arm == "strong"


@pytest.mark.parametrize(
    ("candidate", "code"),
    [
        ("nope", grpc.StatusCode.NOT_FOUND),  # could be an arm: the router has none of it
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("has space", grpc.StatusCode.INVALID_ARGUMENT),
        ("x" * 129, grpc.StatusCode.INVALID_ARGUMENT),
        ("x" * 20_000, grpc.StatusCode.INVALID_ARGUMENT),  # was RESOURCE_EXHAUSTED (see below)
        ("\u00e9" * 5_000, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_a_candidate_no_arm_can_be_named_is_invalid_argument_not_echoed(
    sqlite_url: str, start_server: StartServer, candidate: str, code: grpc.StatusCode
) -> None:
    """An unknown candidate came back whole in NOT_FOUND's message: a long one passed gRPC's
    metadata size limit, and the caller read RESOURCE_EXHAUSTED "Stream removed"."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await select(server, candidates=["cheap", candidate])
    assert err.value.code() == code
    details = err.value.details() or ""
    assert len(details) < 300
    assert details.startswith("candidates: ") == (code == grpc.StatusCode.INVALID_ARGUMENT)


async def test_expected_costs_count_the_callers_input_tokens(
    sqlite_url: str, start_server: StartServer
) -> None:
    """Select's input_tokens is the request's size for its expected costs, whatever the text
    sent: a prompt cut short (the gateway's over 200,000 characters) is priced, and held to
    max_cost_usd, as the whole; an embedding request as the tokens it stands for."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    prompt = "x" * 400  # 100 tokens at 4 characters a token

    async def costs(**fields: object) -> dict[str, float]:
        request = pb.SelectRequest(tenant="acme", router="chat", **fields)
        return {r.arm: r.expected_cost_usd for r in (await server.router.Select(request)).ranking}

    short = await costs(prompt=prompt)
    whole = await costs(prompt=prompt, input_tokens=1_000_000)
    input_prices = {"cheap": 0.1, "mid": 1.0, "strong": 3.0}  # router_config's, USD per Mtok
    for arm, price in input_prices.items():
        assert whole[arm] - short[arm] == pytest.approx((1_000_000 - 100) * price / 1e6)
    assert await costs(embedding=X, input_tokens=100) == pytest.approx(short)
    # max_cost_usd: every arm fits the prompt sent, none the request it stands for.
    limit = max(short.values())
    assert await costs(prompt=prompt, max_cost_usd=limit) == short
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await costs(prompt=prompt, input_tokens=1_000_000, max_cost_usd=limit)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no eligible arm" in (refused.value.details() or "")
