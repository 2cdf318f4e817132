"""The decision log's store: every decision a client was given is logged, once."""

from __future__ import annotations

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
