"""Pairwise feedback (issue 21) on a real server: compare picks a challenger, one token covers
both arms, a preference updates both posteriors, through replicas and restarts.

Three equally priced arms of quality a < b < c; a side-by-side rating prefers the better answer.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest

from banditd import client as bc
from banditd.commands.ingest import BadLine, parse_record
from banditd.domain import FeedbackEvent
from banditd.flows.ranking import rank_arms
from banditd.flows.tokens import TokenSigner
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import SIGNING_KEY, Running, StartServer, router_config, wait_until

C = grpc.StatusCode
QUALITY = {"a": 0.2, "b": 0.5, "c": 0.9}
HEADS = ("a", "a_inv", "b", "theta", "n_updates")


async def serve(start_server: StartServer, url: str, **settings: Any) -> Running:
    server = await start_server(url, **settings)
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(arms=tuple(QUALITY), exploration=0.05))
    )
    return server


async def compare(server: Running, prompt: str = "hello", **fields: Any) -> pb.SelectResponse:
    return await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", prompt=prompt, compare=True, **fields)
    )


def rate(d: pb.SelectResponse) -> int:
    """The side-by-side rating: the better answer wins."""
    return pb.PREFER_ARM if QUALITY[d.arm] > QUALITY[d.challenger] else pb.PREFER_CHALLENGER


def prefer(d: pb.SelectResponse, preference: int, **fields: Any) -> pb.FeedbackRequest:
    fields = {"tenant": "acme", **fields}
    return pb.FeedbackRequest(decision_id=d.decision_id, preference=preference, **fields)


async def train(server: Running, rounds: int) -> None:
    for i in range(rounds):
        d = await compare(server, f"question {i}")
        await server.router.Feedback(prefer(d, rate(d)))


async def test_compare_names_a_distinct_challenger(
    database_url: str, start_server: StartServer
) -> None:
    server = await serve(start_server, database_url)
    seen: Counter[str] = Counter()
    for i in range(30):
        d = await compare(server, f"question {i}")
        assert d.challenger and d.challenger != d.arm
        ranked = {r.arm: r for r in d.ranking}
        assert d.challenger in ranked and ranked[d.challenger].expected_cost_usd > 0
        seen[d.challenger] += 1
    assert len(seen) >= 2  # a posterior draw, not always the runner-up of one score
    # Eligibility holds for the challenger: candidates, and one eligible arm means none.
    pair = await compare(server, candidates=["a", "b"])
    assert {pair.arm, pair.challenger} == {"a", "b"}
    assert (await compare(server, candidates=["c"])).challenger == ""
    plain = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="x"))
    assert plain.challenger == ""


async def test_the_challenger_is_a_function_of_the_rng(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await serve(start_server, sqlite_url)
    await train(server, 10)
    state = server.app.catalog._by_id[1]
    x = np.full(4, 0.5)

    def duel(seed: int, **kw: Any) -> tuple[str, str | None]:
        ranked = rank_arms(
            state, x, prompt=None, rng=np.random.default_rng(seed), compare=True, **kw
        )
        return ranked.ranking[0].arm, ranked.challenger

    assert [duel(s) for s in range(20)] == [duel(s) for s in range(20)]
    assert all(first != second for first, second in (duel(s) for s in range(20)))
    assert all(duel(s, blocked={"c"})[1] != "c" for s in range(20))  # an open breaker
    assert all(duel(s, candidates=["a", "c"])[1] in {"a", "c"} for s in range(20))
    # Without compare the rng stream is what it was: the live choice does not move.
    lone = rank_arms(state, x, prompt=None, rng=np.random.default_rng(7))
    assert lone.challenger is None and lone.ranking[0].arm == duel(7)[0]


async def test_pairwise_feedback_alone_converges_to_the_better_arm(
    database_url: str, start_server: StartServer
) -> None:
    server = await serve(start_server, database_url)
    await train(server, 40)
    picks: Counter[str] = Counter()
    for i in range(20):
        plain = pb.SelectRequest(tenant="acme", router="chat", prompt=f"new {i}")
        picks[(await server.router.Select(plain)).arm] += 1
    assert picks["c"] >= 18, picks
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.applied_event_id == 40  # one event per duel
    posterior = server.app.catalog._by_id[1].posterior
    assert int(posterior.n_updates.sum()) == 80  # each duel taught two arms


async def test_preference_rules(database_url: str, start_server: StartServer) -> None:
    server = await serve(start_server, database_url)
    d = await compare(server)
    claims = await server.claims(d.decision_id)
    assert claims.challenger == d.challenger  # one token covers both arms
    expired = TokenSigner(SIGNING_KEY.encode()).sign(replace(claims, expires_at=time.time() - 5))
    bad = [
        (prefer(d, pb.PREFER_ARM, tenant="globex"), C.PERMISSION_DENIED, "tenant"),
        (prefer(d, 7), C.INVALID_ARGUMENT, "PREFER_ARM, PREFER_CHALLENGER or PREFER_TIE"),
        (prefer(d, pb.PREFER_ARM, reward=1.0), C.INVALID_ARGUMENT, "excludes thumb and reward"),
        (prefer(d, pb.PREFER_TIE, thumb=pb.THUMB_UP), C.INVALID_ARGUMENT, "excludes thumb"),
        (prefer(d, pb.PREFER_ARM, latency_ms=5.0), C.INVALID_ARGUMENT, "latency_ms"),
        (prefer(d, pb.PREFER_ARM, error=True), C.INVALID_ARGUMENT, "error"),
        (prefer(d, pb.PREFER_ARM, cost_usd=-1.0), C.INVALID_ARGUMENT, "cost_usd"),
        (
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0),
            C.INVALID_ARGUMENT,
            "rate it with a preference",
        ),
        (
            pb.FeedbackRequest(tenant="acme", decision_id=expired, preference=pb.PREFER_ARM),
            C.FAILED_PRECONDITION,
            "expired",
        ),
    ]
    for request, code, message in bad:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.router.Feedback(request)
        assert err.value.code() == code, (request, err.value.details())
        assert message in (err.value.details() or "")
    posterior = server.app.catalog._by_id[1].posterior
    assert posterior.last_event_id == 0 and not posterior.n_updates.any()  # nothing written
    reply = await server.router.Feedback(prefer(d, pb.PREFER_TIE, cost_usd=0.004))
    assert (reply.reward, reply.cost_usd) == (0.5, 0.004)
    assert posterior.n_updates[posterior.index(d.arm)] == 1
    assert posterior.n_updates[posterior.index(d.challenger)] == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(prefer(d, pb.PREFER_ARM))
    assert err.value.code() == C.ALREADY_EXISTS
    # Once only also where a router combines later signals.
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(arms=tuple(QUALITY), combine="last"))
    )
    d = await compare(server)
    await server.router.Feedback(prefer(d, pb.PREFER_ARM))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(prefer(d, pb.PREFER_CHALLENGER))
    assert err.value.code() == C.ALREADY_EXISTS
    assert "already has its preference" in (err.value.details() or "")


def test_a_preference_is_two_rewards_at_one_x() -> None:
    """Folding a preference equals folding the winner's 1 and the loser's 0 at the same x."""
    x = np.array([1.0, 0.5, -0.5])

    def event(i: int, arm: str, reward: float, **kw: Any) -> FeedbackEvent:
        return FeedbackEvent(i, 1, f"d{i}", arm, x, reward, 0.0, None, None, None, False, 0, **kw)

    pair, single = Posterior.empty(Prior(3), 300.0), Posterior.empty(Prior(3), 300.0)
    pair.apply(event(1, "a", 0.0, challenger="b", challenger_reward=1.0))
    single.apply(event(1, "a", 0.0))
    single.apply(event(2, "b", 1.0))
    for head in HEADS:
        assert np.array_equal(getattr(pair, head), getattr(single, head)), head
    # A stored row past the bounds is skipped alike by every replica.
    assert pair.apply(event(3, "a", 1.0, challenger="b", challenger_reward=7.0)) is not None


async def test_preferences_survive_a_restart_and_reach_a_replica(
    database_url: str, start_server: StartServer
) -> None:
    a = await serve(start_server, database_url, tail_interval_s=0.05, snapshot_every=15)
    b = await start_server(database_url, tail_interval_s=0.05, snapshot_every=15)
    logged = await compare(a, request_id="r1")
    await a.router.Feedback(prefer(logged, pb.PREFER_CHALLENGER))
    await train(a, 24)
    await wait_until(b.caught_up, "replica b to catch up")
    post_a, post_b = a.app.catalog._by_id[1].posterior, b.app.catalog._by_id[1].posterior
    assert post_a.last_event_id == post_b.last_event_id == 25
    for head in HEADS:
        assert np.array_equal(getattr(post_a, head), getattr(post_b, head)), head
    await a.stop()
    await b.stop()
    again = await start_server(database_url, snapshot_every=15)
    # The decision log kept both picks: a repeated request_id answers them from the database.
    repeat = await compare(again, request_id="r1")
    assert (repeat.arm, repeat.challenger) == (logged.arm, logged.challenger)
    restored = again.app.catalog._by_id[1].posterior
    for head in HEADS:
        assert np.array_equal(getattr(restored, head), getattr(post_a, head)), head


async def stream(items: Iterable[pb.FeedbackRequest]) -> AsyncIterator[pb.FeedbackRequest]:
    for item in items:
        yield item


async def test_stream_and_upload_take_preferences(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await serve(start_server, sqlite_url)
    ds = [await compare(server, f"q{i}") for i in range(6)]
    plain = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="x"))
    reply = await server.router.StreamFeedback(
        stream([prefer(d, rate(d)) for d in ds[:3]] + [prefer(ds[0], pb.PREFER_TIE)])
    )
    assert (reply.accepted, reply.duplicate, reply.invalid) == (3, 1, 0)
    batch = pb.FeedbackBatch(
        tenant="acme",
        events=[prefer(d, pb.PREFER_TIE) for d in ds[3:]] + [prefer(plain, pb.PREFER_ARM)],
    )
    reply = await server.router.UploadFeedback(stream([batch]))
    assert (reply.accepted, reply.invalid) == (3, 1)
    assert "no challenger" in reply.errors[0].message
    posterior = server.app.catalog._by_id[1].posterior
    assert int(posterior.n_updates.sum()) == 12


async def test_python_client_compares_and_prefers(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await serve(start_server, sqlite_url)
    client = bc.AsyncClient(server.address, tenant="acme")
    try:
        decision = await client.select(router="chat", prompt="hello", compare=True)
        assert decision.challenger and decision.challenger != decision.arm
        assert decision.challenger in {r.arm for r in decision.ranking}
        result = await client.feedback(decision_id=decision.decision_id, preference="challenger")
        assert result.reward == 0.0  # the decision's arm lost
        with pytest.raises(bc.InvalidArgument):
            await client.feedback(decision_id=decision.decision_id, preference="both")  # type: ignore[typeddict-item]
        assert (await client.select(router="chat", prompt="hello")).challenger == ""
    finally:
        await client.close()


def test_ingest_reads_a_preference() -> None:
    msg = parse_record({"tenant": "acme", "decision_id": "t", "preference": "Tie"}, None)
    assert msg.preference == pb.PREFER_TIE and msg.WhichOneof("signal") is None
    with pytest.raises(BadLine, match="preference"):
        parse_record({"tenant": "acme", "decision_id": "t", "preference": "left"}, None)


async def test_a_budget_pays_for_both_answers(database_url: str, start_server: StartServer) -> None:
    server = await serve(start_server, database_url, budget_refresh_s=0.05)
    await server.admin.SetBudget(
        pb.SetBudgetRequest(
            budget=pb.Budget(tenant="acme", limit_usd=1.0, period=pb.BUDGET_PERIOD_DAY)
        )
    )
    d = await compare(server)
    both = sum(r.expected_cost_usd for r in d.ranking if r.arm in (d.arm, d.challenger))
    usage = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage
    assert usage.spent_usd == pytest.approx(both)  # reserved: the arm's and the challenger's
    reply = await server.router.Feedback(prefer(d, pb.PREFER_ARM))
    assert reply.cost_usd == pytest.approx(both)  # no cost_usd: both expected costs charged
    d = await compare(server, "another")
    await server.router.Feedback(prefer(d, pb.PREFER_TIE, cost_usd=0.25))
    usage = (await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme"))).usage
    assert usage.spent_usd == pytest.approx(both + 0.25)  # settled at the reported total
