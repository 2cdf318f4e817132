"""The decision log's store: every decision a client was given is logged, once."""

from __future__ import annotations

from banditd.store import Database, Store
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, finite_stats, router_config, wait_until


async def test_two_replicas_answering_one_request_id_log_both_answers(
    database_url: str, start_server: StartServer
) -> None:
    """Two replicas that decide on the same request_id before either has logged it (within one
    group commit, or during an outage) both answer their client. Both decisions are logged, so
    each one's feedback is learnt; a retry of the request gets the first one logged."""
    by_hand = {"decision_flush_ms": 60_000.0, "tail_interval_s": 0.2}  # flushed by hand
    first = await start_server(database_url, **by_hand)
    await first.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    second = await start_server(database_url, **by_hand)
    request = pb.SelectRequest(tenant="acme", router="chat", prompt="hi", request_id="r-1")
    a = await first.router.Select(request)
    b = await second.router.Select(request)
    assert a.decision_id != b.decision_id  # neither had seen the other's
    await first.app.decisions.flush()
    await second.app.decisions.flush()

    for server, answer in ((first, a), (second, b)):
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=answer.decision_id, reward=1.0)
        )

    async def learnt() -> bool:  # feedback of a decision never logged: parked, then orphaned
        return (await finite_stats(second)).feedback_count == 2

    await wait_until(learnt, "both answers' feedback to be learnt", within=10)
    assert (await finite_stats(second)).decisions == 2
    again = await second.router.Select(request)
    assert again.decision_id == a.decision_id


async def test_a_decision_keeps_its_requests_latency_and_energy_weights(
    database_url: str, start_server: StartServer
) -> None:
    """The request's own latency_weight and energy_weight are logged with its decision (null:
    it had none) and read back with the latency and energy its feedback reported, for
    off-policy evaluation (migration 0022)."""
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    weighted = await server.router.Select(
        pb.SelectRequest(
            tenant="acme", router="chat", prompt="hi", latency_weight=0.25, energy_weight=2.0
        )
    )
    plain = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="hi"))
    await server.router.Feedback(
        pb.FeedbackRequest(
            tenant="acme",
            decision_id=weighted.decision_id,
            reward=1.0,
            latency_ms=1500.0,
            energy_wh=0.75,
        )
    )
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=plain.decision_id, reward=0.0)
    )
    await server.app.decisions.flush()
    db = Database(database_url)
    try:
        store = Store.over(db)
        router = await store.routers.get("acme", "chat")
        fed = {  # by reward (the response's decision_id is a compact token's)
            f.reward: f for f in await store.reports.decisions_with_feedback(router.router_id, 10)
        }
    finally:
        await db.close()
    first, second = fed[1.0], fed[0.0]
    assert (first.decision.latency_weight, first.decision.energy_weight) == (0.25, 2.0)
    assert (first.latency_ms, first.energy_wh) == (1500.0, 0.75)
    assert (second.decision.latency_weight, second.decision.energy_weight) == (None, None)
    assert (second.latency_ms, second.energy_wh) == (None, None)
