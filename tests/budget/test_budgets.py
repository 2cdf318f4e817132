"""Budgets over gRPC: Admin API, exhaustion in both modes, settlement, attribution, bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from banditd import metrics
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, table_away, wait_until
from tests.postgres_plugin import OwnPostgres

C = grpc.StatusCode
# Expected cost of a short prompt (1 input token, 300 output tokens) on each test arm.
CHEAP, MID, STRONG = 300 * 0.4e-6 + 0.1e-6, 300 * 4e-6 + 1e-6, 300 * 15e-6 + 3e-6


def budget(**fields: Any) -> pb.Budget:
    base: dict[str, Any] = {
        "tenant": "acme",
        "limit_usd": 0.01,
        "period": pb.BUDGET_PERIOD_DAY,
        "alerts": [0.5, 1.0],
    }
    base.update(fields)
    return pb.Budget(**base)


async def _server(start_server: StartServer, url: str) -> Running:
    server = await start_server(url, budget_refresh_s=0.05)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    return server


def select(**fields: Any) -> pb.SelectRequest:
    return pb.SelectRequest(tenant="acme", router="chat", prompt="hi", **fields)


async def test_set_get_list_budgets(database_url: str, start_server: StartServer) -> None:
    server = await _server(start_server, database_url)
    made = await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget()))
    assert made.created and made.budget.version == 1
    again = await server.admin.SetBudget(
        pb.SetBudgetRequest(budget=budget(limit_usd=0.02, on_exhausted=pb.ON_EXHAUSTED_REFUSE))
    )
    assert not again.created and again.budget.version == 2
    await server.admin.SetBudget(
        pb.SetBudgetRequest(
            budget=budget(
                router="chat",
                limit_usd=1.0,
                period=pb.BUDGET_PERIOD_WINDOW,
                window_seconds=600,
                window_start_unix=1.0e9,
            )
        )
    )
    got = await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))
    assert got.budget.limit_usd == 0.02
    assert got.budget.on_exhausted == pb.ON_EXHAUSTED_REFUSE
    assert got.usage.spent_usd == 0.0 and got.usage.remaining_usd == 0.02
    assert got.usage.period_end_unix - got.usage.period_start_unix == 86_400
    window = await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme", router="chat"))
    assert window.usage.period_end_unix - window.usage.period_start_unix == 600
    listed = await server.admin.ListBudgets(pb.ListBudgetsRequest(tenant="acme"))
    assert [(b.budget.router, b.budget.limit_usd) for b in listed.budgets] == [
        ("", 0.02),
        ("chat", 1.0),
    ]
    assert not (await server.admin.ListBudgets(pb.ListBudgetsRequest(tenant="other"))).budgets


async def test_refuse_mode_stops_at_the_limit(database_url: str, start_server: StartServer) -> None:
    server = await _server(start_server, database_url)
    limit = 10 * CHEAP
    refusals = metrics.BUDGET_OUTCOMES.labels("acme", "chat", "refused")
    refused_before = refusals._value.get()
    await server.admin.SetBudget(
        pb.SetBudgetRequest(budget=budget(limit_usd=limit, on_exhausted=pb.ON_EXHAUSTED_REFUSE))
    )
    spent, served, prices = 0.0, 0, []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        for _ in range(100):
            # A cost weight that prefers the cheap arm over its price-tier prior (issue 18), so
            # the budget goes in many small calls and the pacer's price can climb.
            d = await server.router.Select(select(cost_weight=1000.0))
            assert d.budget_outcome in ("paced", "fallback")
            prices.append(d.budget_price)
            spent += d.expected_cost_usd
            served += 1
    # Dollars get dear as spend runs ahead of the day's clock.
    assert prices[-1] > prices[0] >= 0
    assert err.value.code() == C.RESOURCE_EXHAUSTED
    assert "budget of acme is exhausted" in (err.value.details() or "")
    assert spent <= limit and served >= 1
    usage = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage
    assert usage.spent_usd == pytest.approx(spent)
    assert usage.remaining_usd >= 0
    assert refusals._value.get() == refused_before + 1
    await server.app.budgets.housekeeping()
    assert metrics.BUDGET_SPEND.labels("acme", "*")._value.get() == pytest.approx(spent)
    assert metrics.BUDGET_REMAINING.labels("acme", "*")._value.get() == pytest.approx(limit - spent)


async def test_cheapest_mode_serves_the_cheapest_arm_past_the_limit(
    database_url: str, start_server: StartServer
) -> None:
    server = await _server(start_server, database_url)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=0.5 * CHEAP)))
    d = await server.router.Select(select())
    assert (d.arm, d.budget_outcome) == ("cheap", "over_budget")
    assert [r.arm for r in d.ranking] == ["cheap"]
    usage = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage
    assert usage.spent_usd == pytest.approx(CHEAP)  # charged, past the limit, as asked


async def test_only_an_exhausted_budget_refuses(sqlite_url: str, start_server: StartServer) -> None:
    server = await _server(start_server, sqlite_url)
    refuse = pb.ON_EXHAUSTED_REFUSE
    # The tenant's budget is exhausted and serves the cheapest arm past it; the router's, which
    # refuses once exhausted, has money left.
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=0.5 * CHEAP)))
    await server.admin.SetBudget(
        pb.SetBudgetRequest(budget=budget(router="chat", limit_usd=1.0, on_exhausted=refuse))
    )
    d = await server.router.Select(select())  # was RESOURCE_EXHAUSTED
    assert (d.arm, d.budget_outcome) == ("cheap", "over_budget")
    # The other way round: the router's budget is exhausted, and it alone is named.
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=1.0)))
    await server.admin.SetBudget(
        pb.SetBudgetRequest(
            budget=budget(router="chat", limit_usd=0.5 * CHEAP, on_exhausted=refuse)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Select(select())
    assert err.value.code() == C.RESOURCE_EXHAUSTED
    assert "budget of acme/chat is exhausted" in (err.value.details() or "")


async def test_feedback_settles_the_actual_cost_and_alerts_fire_once(
    database_url: str, start_server: StartServer
) -> None:
    server = await _server(start_server, database_url)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=1.0)))
    d = await server.router.Select(select(metadata={"app": "notes"}))
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0, cost_usd=0.6)
    )
    d2 = await server.router.Select(select(metadata={"app": "mail"}))  # no feedback: expected
    usage = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage
    assert usage.spent_usd == pytest.approx(0.6 + d2.expected_cost_usd)
    for _ in range(200):  # alerts are checked by the background round
        usage = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage
        if list(usage.alerts_fired) == [0.5]:
            break
        await server.app.budgets.housekeeping()
    assert list(usage.alerts_fired) == [0.5]
    alerts = metrics.BUDGET_ALERTS.labels("acme", "*", "0.5")
    fired = alerts._value.get()
    await server.app.budgets.housekeeping()  # crossed already: no second alert this period
    assert alerts._value.get() == fired >= 1

    await server.app.decisions.flush()
    spend = await server.admin.GetSpend(pb.GetSpendRequest(tenant="acme", metadata_key="app"))
    by_app = {line.metadata_value: line.spend_usd for line in spend.lines}
    assert by_app == pytest.approx({"notes": 0.6, "mail": d2.expected_cost_usd})
    assert spend.total_usd == pytest.approx(0.6 + d2.expected_cost_usd)


BAD_BUDGETS = [
    ("negative limit", budget(limit_usd=-1.0), "limit_usd"),
    ("no period", budget(period=pb.BUDGET_PERIOD_UNSPECIFIED), "period"),
    ("window with no end", budget(period=pb.BUDGET_PERIOD_WINDOW), "window_seconds"),
    ("window start of a day", budget(window_start_unix=1.0e9), "window_start"),  # was ignored
    (
        "window start past 1e10",  # rounded now away (each Select rolled the period)
        budget(period=pb.BUDGET_PERIOD_WINDOW, window_seconds=60, window_start_unix=1e20),
        "window_start_unix: must be in [0, 1e+10], got 1e+20",
    ),
    ("alert above 1", budget(alerts=[0.5, 1.5]), "alerts"),
    ("alerts out of order", budget(alerts=[0.8, 0.5]), "alerts"),
    ("bad tenant", budget(tenant="a b"), "tenant"),
    ("unknown on_exhausted", budget(on_exhausted=7), "on_exhausted"),
]


@pytest.mark.parametrize(("case", "bad", "field"), BAD_BUDGETS, ids=[c[0] for c in BAD_BUDGETS])
async def test_bad_budgets_are_refused(
    sqlite_url: str, start_server: StartServer, case: str, bad: pb.Budget, field: str
) -> None:
    server = await _server(start_server, sqlite_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.SetBudget(pb.SetBudgetRequest(budget=bad))
    assert err.value.code() == C.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert not (await server.admin.ListBudgets(pb.ListBudgetsRequest())).budgets


async def test_unknown_budget_is_not_found(sqlite_url: str, start_server: StartServer) -> None:
    server = await _server(start_server, sqlite_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.GetBudget(pb.GetBudgetRequest(tenant="nobody"))
    assert err.value.code() == C.NOT_FOUND
    assert "no budget for tenant 'nobody'" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.GetBudget(pb.GetBudgetRequest(tenant=""))
    assert err.value.code() == C.INVALID_ARGUMENT


async def test_a_repeated_request_id_gets_one_decision_under_a_budget(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await _server(start_server, sqlite_url)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=1.0)))
    twins = await asyncio.gather(*(server.router.Select(select(request_id="r1")) for _ in range(5)))
    assert len({d.decision_id for d in twins}) == 1
    spent = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage.spent_usd
    again = await server.router.Select(select(request_id="r1"))
    assert again.decision_id == twins[0].decision_id
    after = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage.spent_usd
    assert after == spent  # a repeat charges nothing
    await server.app.decisions.flush()
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 1
    # Answered from the log now: the same answer, what the budget did included.
    assert twins[0].budget_outcome == "paced"
    logged = await server.router.Select(select(request_id="r1"))
    assert logged == twins[0]


async def test_stream_feedback_settles_too(database_url: str, start_server: StartServer) -> None:
    # One batch settles every decision's charge at its own cost (one statement for the charges,
    # one per period for the spend).
    server = await _server(start_server, database_url)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=1.0)))
    made = [await server.router.Select(select()) for _ in range(3)]
    costs = [0.01, 0.02, 0.04]

    async def upload() -> Any:
        for d, cost in zip(made, costs, strict=True):
            yield pb.FeedbackRequest(
                tenant="acme", decision_id=d.decision_id, reward=0.5, cost_usd=cost
            )

    reply = await server.router.StreamFeedback(upload())
    assert reply.accepted == 3
    usage = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage
    assert usage.spent_usd == pytest.approx(sum(costs))


@pytest.mark.postgres
async def test_an_outage_serves_within_the_lease_and_charges_afterwards(
    own_postgres: OwnPostgres, start_server: StartServer
) -> None:
    """Database down: Select keeps deciding within this replica's lease; the charges of what it
    served are written once the database is back, so spend misses nothing."""
    server = await start_server(own_postgres.url, budget_refresh_s=0.1)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    await server.admin.SetBudget(
        pb.SetBudgetRequest(budget=budget(limit_usd=1.0, on_exhausted=pb.ON_EXHAUSTED_REFUSE))
    )
    made = [await server.router.Select(select(candidates=["cheap"]))]  # takes a lease
    await own_postgres.stop()
    try:
        for _ in range(20):
            made.append(await server.router.Select(select(candidates=["cheap"])))
    finally:
        await own_postgres.start()
    expected = sum(d.expected_cost_usd for d in made)

    async def charged() -> bool:
        try:
            got = await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))
        except grpc.aio.AioRpcError as err:
            assert err.code() == C.UNAVAILABLE  # still reconnecting
            return False
        return got.usage.spent_usd >= expected - 1e-12

    await wait_until(charged, "the charges of the outage to be written")
    got = await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))
    assert got.usage.spent_usd == pytest.approx(expected)


async def test_delete_budget_stops_it_on_every_replica_and_set_revives_it(
    database_url: str, start_server: StartServer
) -> None:
    server = await _server(start_server, database_url)
    replica = await start_server(database_url, budget_refresh_s=0.05)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=0.5 * CHEAP)))
    d = await server.router.Select(select())
    assert d.budget_outcome == "over_budget"

    async def replica_budgeted() -> bool:
        return bool((await replica.router.Select(select())).budget_outcome)

    await wait_until(replica_budgeted, "the replica to load the budget")
    gone = await server.admin.DeleteBudget(pb.DeleteBudgetRequest(tenant="acme"))
    assert gone.deleted
    d = await server.router.Select(select())
    assert d.budget_outcome == "" and len(d.ranking) == 3  # no budget: every arm, unpaced

    async def replica_free() -> bool:
        return not await replica_budgeted()

    await wait_until(replica_free, "the replica to drop the deleted budget")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))
    assert err.value.code() == C.NOT_FOUND
    assert not (await server.admin.ListBudgets(pb.ListBudgetsRequest())).budgets
    again = await server.admin.DeleteBudget(pb.DeleteBudgetRequest(tenant="acme"))
    assert not again.deleted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.DeleteBudget(pb.DeleteBudgetRequest(tenant=""))
    assert err.value.code() == C.INVALID_ARGUMENT
    # Set again, it is created afresh but this period's spend still counts.
    revived = await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=1.0)))
    assert revived.created and revived.budget.version == 2
    usage = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage
    assert usage.spent_usd >= CHEAP
    assert (await server.router.Select(select())).budget_outcome == "paced"


async def test_spend_counts_a_decision_with_several_signals_once(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="last")))
    d = await server.router.Select(select())
    for reward, cost in ((1.0, 0.1), (0.0, 0.5), (0.5, None)):
        await server.router.Feedback(
            pb.FeedbackRequest(
                tenant="acme", decision_id=d.decision_id, reward=reward, cost_usd=cost
            )
        )
    await server.app.decisions.flush()
    spend = await server.admin.GetSpend(pb.GetSpendRequest(tenant="acme"))
    assert [(line.arm, line.decisions) for line in spend.lines] == [(d.arm, 1)]
    assert spend.total_usd == pytest.approx(0.5)  # the latest reported cost


async def test_spend_counts_both_answers_of_a_compared_decision(
    database_url: str, start_server: StartServer
) -> None:
    """Both answers of a pairwise decision are paid for (docs/pairwise.md): without feedback,
    its spend is both arms' expected costs, under the decision's arm, as its budget charge."""
    server = await _server(start_server, database_url)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=1.0)))
    d = await server.router.Select(select(compare=True))
    assert d.challenger and d.challenger != d.arm
    rival = next(r.expected_cost_usd for r in d.ranking if r.arm == d.challenger)
    await server.app.decisions.flush()
    spend = await server.admin.GetSpend(pb.GetSpendRequest(tenant="acme"))
    assert [(line.arm, line.decisions) for line in spend.lines] == [(d.arm, 1)]
    assert spend.total_usd == pytest.approx(d.expected_cost_usd + rival)  # was the arm's only
    charged = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage.spent_usd
    assert spend.total_usd == pytest.approx(charged)
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, preference=pb.PREFER_TIE)
    )
    spend = await server.admin.GetSpend(pb.GetSpendRequest(tenant="acme"))
    assert spend.total_usd == pytest.approx(d.expected_cost_usd + rival)  # the event's cost


async def test_a_reported_cost_is_settled_with_its_feedback_or_not_at_all(
    database_url: str, start_server: StartServer
) -> None:
    """A Feedback whose budget charge cannot be settled (the table away, as in an outage) is
    refused whole, as UNAVAILABLE with nothing written: it was acknowledged with its cost lost.
    Its retry is accepted and settles; so does a usage report's cost."""
    server = await _server(start_server, database_url)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget(limit_usd=1.0)))
    rated, used = [(await server.router.Select(select())).decision_id for _ in range(2)]
    feedback = pb.FeedbackRequest(tenant="acme", decision_id=rated, reward=1.0, cost_usd=0.6)
    usage = pb.FeedbackRequest(tenant="acme", decision_id=used, usage_only=True, cost_usd=0.3)
    async with table_away(server.app.db, "budget_charges"):
        for request in (feedback, usage):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await server.router.Feedback(request)
            assert err.value.code() == C.UNAVAILABLE
    assert (await server.router.Feedback(feedback)).cost_usd == 0.6  # the client's retry
    await server.router.Feedback(usage)
    spent = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage.spent_usd
    assert spent == pytest.approx(0.9)
