"""Several signals for one decision (combine first / last / mean) and per-router thumb rewards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from banditd.domain import MAX_SIGNALS_PER_DECISION
from banditd.store.reports import Reports
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config, wait_until

X = [0.6, -0.2, 0.4, 0.1]


async def _decide(server: Running, name: str) -> str:
    d = await server.router.Select(
        pb.SelectRequest(
            tenant="acme", router=name, embedding=pb.Embedding(values=X), candidates=["mid"]
        )
    )
    return d.decision_id


async def _probe(server: Running, name: str) -> list[float]:
    d = await server.router.Select(
        pb.SelectRequest(tenant="acme", router=name, embedding=pb.Embedding(values=X))
    )
    return [r.quality_score for r in sorted(d.ranking, key=lambda r: r.arm)]


async def _stats(server: Running, name: str) -> pb.ArmStats:
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name=name))
    return next(a for a in stats.arms if a.arm == "mid")


@pytest.mark.parametrize(
    ("rule", "signals", "effective"),
    [("last", [0.0, 0.3, 1.0], 1.0), ("mean", [1.0, 0.0, 0.2], 0.4)],
)
async def test_later_signals_move_the_reward_not_the_weight(
    database_url: str,
    start_server: StartServer,
    rule: str,
    signals: list[float],
    effective: float,
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine=rule)))
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(name="once")))
    decision = await _decide(server, "chat")
    for i, reward in enumerate(signals):
        await server.router.Feedback(
            pb.FeedbackRequest(
                tenant="acme", decision_id=decision, reward=reward, cost_usd=0.01 * (i + 1)
            )
        )
    # The same decision with only its effective reward, on a router that keeps one signal.
    await server.router.Feedback(
        pb.FeedbackRequest(
            tenant="acme",
            decision_id=await _decide(server, "once"),
            reward=effective,
            cost_usd=0.03,
        )
    )
    assert await _probe(server, "chat") == pytest.approx(await _probe(server, "once"), abs=1e-9)
    combined, single = await _stats(server, "chat"), await _stats(server, "once")
    assert (combined.feedback_count, combined.mean_reward) == (1, pytest.approx(effective))
    assert combined.spend_usd == pytest.approx(single.spend_usd)  # the latest reported cost
    posterior = server.app.catalog._by_id[1].posterior
    assert posterior.n_updates[posterior.index("mid")] == 1
    # Off-policy evaluation reads the decision once, with its effective reward and settled cost.
    logged = await Reports(server.app.db).decisions_with_feedback(1, 10)
    assert [(f.reward, f.cost_usd) for f in logged] == [
        (pytest.approx(effective), pytest.approx(0.03))
    ]


async def test_first_keeps_one_signal_and_mean_stops_at_the_maximum(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config("acme", "avg", combine="mean"))
    )
    first = await _decide(server, "chat")
    await server.router.Feedback(pb.FeedbackRequest(tenant="acme", decision_id=first, reward=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(pb.FeedbackRequest(tenant="acme", decision_id=first, reward=0))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    averaged = await _decide(server, "avg")
    for _ in range(MAX_SIGNALS_PER_DECISION):
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=averaged, thumb=pb.THUMB_UP)
        )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=averaged, thumb=pb.THUMB_DOWN)
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "maximum" in (err.value.details() or "")
    # A stream says why the same way (one path: a single Feedback is a batch of one).
    reply = await server.router.UploadFeedback(
        _one(
            pb.FeedbackBatch(
                tenant="acme",
                events=[
                    pb.FeedbackRequest(tenant="acme", decision_id=averaged, thumb=pb.THUMB_DOWN)
                ],
            )
        )
    )
    assert reply.duplicate == 1 and "maximum" in reply.errors[0].message
    assert (await _stats(server, "avg")).mean_reward == pytest.approx(1.0)


async def _one(batch: pb.FeedbackBatch) -> AsyncIterator[pb.FeedbackBatch]:
    yield batch


async def test_streamed_signals_for_one_decision_combine(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    decision = await _decide(server, "chat")
    reply = await server.router.StreamFeedback(
        iter(
            [
                pb.FeedbackRequest(tenant="acme", decision_id=decision, reward=r)
                for r in (1.0, 0.0, 0.2)
            ]
        )
    )
    assert (reply.accepted, reply.duplicate) == (3, 0)
    assert (await _stats(server, "chat")).mean_reward == pytest.approx(0.4)


async def test_later_signals_charge_the_spend_metric_once(
    sqlite_url: str, start_server: StartServer
) -> None:
    """banditd_spend_usd_total counts a decision's cost once, as GetStats does, however many
    signals it takes (a later one adds only what its reported cost changes)."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(name="spent", combine="mean"))
    )
    labels = {"tenant": "acme", "router": "spent", "arm": "mid"}

    def spend() -> float:
        return REGISTRY.get_sample_value("banditd_spend_usd_total", labels) or 0.0

    before = spend()
    decision = await _decide(server, "spent")
    for reward in (1.0, 0.0, 0.5):  # no cost: the expected one is charged, once
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=decision, reward=reward)
        )
    await server.router.Feedback(  # the real cost, reported late, replaces it
        pb.FeedbackRequest(tenant="acme", decision_id=decision, reward=1.0, cost_usd=0.05)
    )
    assert (await _stats(server, "spent")).spend_usd == pytest.approx(0.05)
    assert spend() - before == pytest.approx(0.05)


async def test_a_later_signal_may_report_a_lower_cost(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A later signal whose cost_usd is below the decision's is taken, its answer OK (it was
    committed, then answered INTERNAL: banditd_spend_usd_total, a counter, cannot fall)."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(name="lowered", combine="last"))
    )
    labels = {"tenant": "acme", "router": "lowered", "arm": "mid"}

    def spend() -> float:
        return REGISTRY.get_sample_value("banditd_spend_usd_total", labels) or 0.0

    before = spend()
    decision = await _decide(server, "lowered")
    for cost in (0.05, 0.01):
        reply = await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=decision, reward=1.0, cost_usd=cost)
        )
        assert reply.cost_usd == cost
    assert (await _stats(server, "lowered")).spend_usd == pytest.approx(0.01)
    assert spend() - before == pytest.approx(0.05)  # counted when it rose, never taken back


async def test_a_later_signal_without_a_cost_answers_the_decisions_logged_cost(
    sqlite_url: str, start_server: StartServer
) -> None:
    """FeedbackResponse.cost_usd of a later signal that reports no cost is the decision's cost
    as the log holds it (what GetStats and GetSpend count): the cost an earlier signal
    reported, not the expected cost; with no cost ever reported, the expected one."""
    server = await start_server(sqlite_url)
    for name in ("reported", "expected"):
        config = router_config(name=name, combine="mean")
        await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    decision = await _decide(server, "reported")
    reply = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=decision, reward=1.0, cost_usd=0.05)
    )
    assert reply.cost_usd == 0.05
    reply = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=decision, reward=0.0)
    )
    assert reply.cost_usd == pytest.approx(0.05)
    assert (await _stats(server, "reported")).spend_usd == pytest.approx(0.05)
    decision = await _decide(server, "expected")
    answers = [
        (
            await server.router.Feedback(
                pb.FeedbackRequest(tenant="acme", decision_id=decision, reward=reward)
            )
        ).cost_usd
        for reward in (1.0, 0.0)
    ]
    assert answers[0] > 0 and answers[1] == pytest.approx(answers[0])
    assert (await _stats(server, "expected")).spend_usd == pytest.approx(answers[0])


async def test_router_thumb_rewards(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    config = router_config(thumb_up_reward=0.9, thumb_down_reward=0.2)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    got = await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))
    assert (got.router.thumb_up_reward, got.router.thumb_down_reward) == (0.9, 0.2)
    up = await server.router.Feedback(
        pb.FeedbackRequest(
            tenant="acme", decision_id=await _decide(server, "chat"), thumb=pb.THUMB_UP
        )
    )
    down = await server.router.Feedback(
        pb.FeedbackRequest(
            tenant="acme", decision_id=await _decide(server, "chat"), thumb=pb.THUMB_DOWN
        )
    )
    assert (up.reward, down.reward) == (0.9, 0.2)
    for bad in ({"thumb_up_reward": 1.5}, {"thumb_down_reward": -0.1}, {"combine": "max"}):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(**bad)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert next(iter(bad)) in (err.value.details() or "")


async def test_a_real_signal_replaces_a_default_reward(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url, tail_interval_s=0.05)
    config = router_config(combine="last", default_reward=0.0, reward_wait_seconds=1)
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    decision = await _decide(server, "chat")
    await wait_until(lambda: server.caught_up(1), "the default reward to land")
    assert (await _stats(server, "chat")).feedback_count == 0
    late = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=decision, reward=1.0)
    )
    assert late.reward == 1.0
    arm = await _stats(server, "chat")
    assert (arm.feedback_count, arm.mean_reward) == (1, pytest.approx(1.0))
