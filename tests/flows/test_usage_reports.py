"""Usage reports (FeedbackRequest.usage_only, issue 22): stored once per decision apart from the
event log, never the rating, and folded into the decision's first event (rating or default)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from alembic import command

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.store import Database
from banditd.store.engine import alembic_config
from banditd.store.events import EventLog
from banditd.store.routers import Routers
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, wait_until


async def _decide(server: Running, prompt: str = "q") -> pb.SelectResponse:
    return await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt=prompt))


def _usage(decision_id: str, **fields: object) -> pb.FeedbackRequest:
    return pb.FeedbackRequest(tenant="acme", decision_id=decision_id, usage_only=True, **fields)


async def _refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    return str(err.value.details())


async def _arm(server: Running, arm: str) -> pb.ArmStats:
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    return next(a for a in stats.arms if a.arm == arm)


async def test_usage_is_kept_apart_and_folded_into_the_later_rating(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await _decide(server)
    usage = _usage(
        d.decision_id,
        cost_usd=0.0042,
        input_tokens=120,
        output_tokens=80,
        latency_ms=900.0,
        first_token_ms=150.0,
    )
    answer = await server.router.Feedback(usage)
    assert answer.event_id == 0 and answer.cost_usd == pytest.approx(0.0042)
    arm = await _arm(server, d.arm)
    assert (arm.usage_reports, arm.usage_errors, arm.feedback_count) == (1, 0, 0)
    assert arm.usage_cost_usd == pytest.approx(0.0042)
    assert arm.usage_mean_first_token_ms == pytest.approx(150.0)
    assert await EventLog(server.app.db).after(1, 0) == []  # not a feedback event
    # Once per decision.
    await _refused(server.router.Feedback(usage), grpc.StatusCode.ALREADY_EXISTS)

    rated = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, thumb=pb.THUMB_UP)
    )
    assert rated.cost_usd == pytest.approx(0.0042)  # the usage's, not the expected cost
    (event,) = await EventLog(server.app.db).after(1, 0)
    assert (event.reward, event.cost_usd, event.cost_reported) == (1.0, 0.0042, True)
    assert (event.input_tokens, event.output_tokens, event.latency_ms) == (120, 80, 900.0)
    arm = await _arm(server, d.arm)
    assert (arm.feedback_count, arm.latency_reports) == (1, 1)
    assert arm.spend_usd == pytest.approx(0.0042)
    # The rating is still once only; usage after it is refused too.
    await _refused(
        server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0.0)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    late = await _decide(server, "late")
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=late.decision_id, reward=1.0)
    )
    details = await _refused(
        server.router.Feedback(_usage(late.decision_id, cost_usd=0.1)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert "already has feedback" in details


async def test_a_rating_sets_what_it_reports_and_errors_combine(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    d = await _decide(server)
    await server.router.Feedback(_usage(d.decision_id, cost_usd=0.5, latency_ms=10.0, error=True))
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0.6, cost_usd=0.25)
    )
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0.2)
    )
    first, second = await EventLog(server.app.db).after(1, 0)
    # The rating's own cost wins; latency and error come from the usage; a later signal of a
    # "mean" router changes the reward only (its cost is the change in settled cost: none).
    assert (first.cost_usd, first.latency_ms, first.error) == (0.25, 10.0, True)
    assert (second.signal, second.cost_usd, second.latency_ms) == (1, 0.0, None)
    assert (await _arm(server, d.arm)).spend_usd == pytest.approx(0.25)


async def test_the_default_reward_takes_the_usage(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url, tail_interval_s=0.05)
    config = router_config(default_reward=0.5, reward_wait_seconds=1)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    d = await _decide(server)
    await server.router.Feedback(_usage(d.decision_id, cost_usd=0.03, output_tokens=7))
    log = EventLog(server.app.db)
    # The default comes after reward_wait_seconds, in a tail round.
    (event,) = await wait_until(lambda: log.after(1, 0), "the default reward")
    assert (event.defaulted, event.reward, event.cost_usd, event.output_tokens) == (
        True,
        0.5,
        0.03,
        7,
    )


async def test_bad_usage_reports_are_refused(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await _decide(server)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    with_reward = _usage(d.decision_id, reward=1.0)
    assert "no thumb or reward" in await _refused(server.router.Feedback(with_reward), invalid)
    first_token = pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    first_token.first_token_ms = 5.0
    assert "usage_only" in await _refused(server.router.Feedback(first_token), invalid)
    negative = _usage(d.decision_id, latency_ms=-1.0)
    await _refused(server.router.Feedback(negative), invalid)

    async def one() -> object:
        yield _usage(d.decision_id, cost_usd=0.1)

    summary = await server.router.StreamFeedback(one())
    assert (summary.accepted, summary.invalid) == (0, 1)
    assert "usage" in summary.errors[0].message
    # Nothing of the refused reports was written: the decision still takes its usage.
    await server.router.Feedback(_usage(d.decision_id, cost_usd=0.1))


async def test_migration_0014_goes_down_and_up_keeping_the_routers(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    await server.stop()
    config = alembic_config(database_url, DEFAULT_MIGRATIONS_DIR)
    await asyncio.to_thread(command.downgrade, config, "0013")
    await asyncio.to_thread(command.upgrade, config, "head")
    db = Database(database_url)
    try:
        (stored,) = await Routers(db).list()
    finally:
        await db.close()
    assert [a.upstream_base_url for a in stored.spec.arms] == ["", "", ""]
