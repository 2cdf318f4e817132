"""StreamFeedback: batched commits, per-event outcomes, safe to resend."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace

import grpc
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from banditd.edge import servicer
from banditd.flows.tokens import TokenSigner
from banditd.store.models import feedback_events
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import SIGNING_KEY, Running, StartServer, router_config, wait_until


async def stream(items: Iterable[pb.FeedbackRequest]) -> AsyncIterator[pb.FeedbackRequest]:
    for item in items:
        yield item


async def decisions(server: Running, router: str, n: int) -> list[pb.SelectResponse]:
    return [
        await server.router.Select(
            pb.SelectRequest(tenant="acme", router=router, prompt=f"prompt number {i}")
        )
        for i in range(n)
    ]


async def test_stream_counts_each_event_and_commits_the_good_ones(
    database_url: str, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servicer, "STREAM_BATCH", 25)  # several batches in one stream
    server = await start_server(database_url)
    for name in ("chat", "code"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(name=name)))
    chat, code = await decisions(server, "chat", 40), await decisions(server, "code", 20)
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=chat[0].decision_id, reward=1.0)
    )
    signer = TokenSigner(SIGNING_KEY.encode())
    expired = signer.sign(
        replace(await server.claims(code[0].decision_id), expires_at=time.time() - 1)
    )
    requests = [
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, thumb=pb.THUMB_UP)
        for d in chat + code  # chat[0] already has feedback: duplicate
    ]
    requests += [
        pb.FeedbackRequest(tenant="acme", decision_id=chat[5].decision_id, reward=0.0),  # repeat
        pb.FeedbackRequest(tenant="acme", decision_id=expired, reward=0.5),
        pb.FeedbackRequest(tenant="acme", decision_id=code[1].decision_id, reward=7.0),
        pb.FeedbackRequest(tenant="acme", decision_id="forged", reward=0.5),
        pb.FeedbackRequest(tenant="acme", decision_id=code[2].decision_id, thumb=9),
    ]
    reply = await server.router.StreamFeedback(stream(requests))
    assert (reply.accepted, reply.duplicate, reply.expired, reply.invalid) == (59, 2, 1, 3)
    assert [(e.index, e.kind) for e in reply.errors] == [
        (0, "duplicate"),
        (60, "duplicate"),
        (61, "expired"),
        (62, "invalid"),
        (63, "invalid"),
        (64, "invalid"),
    ]
    assert "reward" in reply.errors[3].message and "thumb" in reply.errors[5].message
    for name, n in (("chat", 40), ("code", 20)):
        stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name=name))
        assert stats.feedback_count == n
    # A resend (say after a lost reply) changes nothing.
    again = await server.router.StreamFeedback(stream(requests[:60]))
    assert (again.accepted, again.duplicate) == (0, 60)
    state = server.app.catalog._by_id[1]
    assert int(state.posterior.n_updates.sum()) == 40


async def test_upload_feedback_takes_many_events_per_message(
    sqlite_url: str, start_server: StartServer
) -> None:
    """UploadFeedback: each message a batch of one tenant's events; counts and error indexes
    over events. An event naming another tenant is taken as the batch's (its token decides)."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(tenant="other")))
    made = [
        await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt=f"{i}"))
        for i in range(5)
    ]
    foreign = await server.router.Select(
        pb.SelectRequest(tenant="other", router="chat", prompt="x")
    )
    events = [pb.FeedbackRequest(decision_id=d.decision_id, thumb=pb.THUMB_UP) for d in made]
    batches = [
        pb.FeedbackBatch(tenant="acme", events=events[:3]),
        pb.FeedbackBatch(
            tenant="acme",
            events=[
                *events[3:],
                events[0],  # a duplicate
                pb.FeedbackRequest(tenant="other", decision_id=foreign.decision_id, reward=1.0),
            ],
        ),
    ]
    reply = await server.router.UploadFeedback(iter(batches))
    assert (reply.accepted, reply.duplicate, reply.invalid) == (5, 1, 1)
    assert [(e.index, e.kind) for e in reply.errors] == [(5, "duplicate"), (6, "invalid")]
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="other", name="chat"))
    assert stats.feedback_count == 0

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.UploadFeedback(
            iter([pb.FeedbackBatch(tenant="acme", events=[events[0]] * 10_001)])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method", ["StreamFeedback", "UploadFeedback"])
async def test_a_cancelled_upload_commits_nothing_of_its_unfinished_batch(
    database_url: str, start_server: StartServer, method: str
) -> None:
    """A call the client cancels (or whose deadline passes) before it ends commits nothing of
    the batch it was gathering: its reply, the only acknowledgement, was never sent. Sent
    again, each event counts once, even under combine mean."""
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    made = await decisions(server, "chat", 3)
    events = [
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0) for d in made
    ]
    messages = (
        events if method == "StreamFeedback" else [pb.FeedbackBatch(tenant="acme", events=events)]
    )
    cancelled = {"method": method, "code": "CANCELLED"}
    before = REGISTRY.get_sample_value("banditd_rpc_seconds_count", cancelled) or 0.0
    call = getattr(server.router, method)()
    for message in messages:
        await call.write(message)
    call.cancel()

    def ended() -> bool:
        return (REGISTRY.get_sample_value("banditd_rpc_seconds_count", cancelled) or 0) > before

    await wait_until(ended, "the server to end the cancelled call")
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 0

    reply = await getattr(server.router, method)(iter(messages))
    assert (reply.accepted, reply.duplicate) == (3, 0)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 3
    async with server.app.db.transaction() as conn:
        signals = list(await conn.scalars(select(feedback_events.c.signal)))
    assert signals == [0, 0, 0]  # one signal each: none was committed twice
