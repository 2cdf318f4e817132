"""Abuse limits over real gRPC: per-tenant rates and request sizes, each error naming its limit."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import StatusCode as C

from banditd.edge.limits import RateLimiter
from banditd.errors import ResourceExhausted
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config


def select(tenant: str = "acme", **fields: object) -> pb.SelectRequest:
    base: dict[str, object] = {"embedding": pb.Embedding(values=[1, 0, 0, 0])}
    return pb.SelectRequest(tenant=tenant, router="chat", **{**base, **fields})  # type: ignore[arg-type]


async def _with_routers(server: Running) -> Running:
    for tenant in ("acme", "globex"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(tenant)))
    return server


async def test_select_rate_is_per_tenant_and_says_which_limit(
    sqlite_url: str, start_server: StartServer
) -> None:
    # 0.01/s with a 300 s burst: 3 calls, then nothing refills within the test.
    server = await _with_routers(
        await start_server(sqlite_url, rate_limit_selects_per_s=0.01, rate_limit_burst_s=300)
    )
    for _ in range(3):
        await server.router.Select(select())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Select(select())
    assert err.value.code() == C.RESOURCE_EXHAUSTED
    assert "rate limit selects" in (err.value.details() or "")
    assert "BANDITD_RATE_LIMIT_SELECTS_PER_S" in (err.value.details() or "")
    assert (await server.router.Select(select("globex"))).arm  # another tenant's own bucket
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 3
    # Feedback has its own limit (unset here), so the refused Selects block no feedback.
    d = await server.router.Select(select("globex"))
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="globex", decision_id=d.decision_id, reward=1.0)
    )


async def test_feedback_rate_counts_each_streamed_event(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await _with_routers(
        await start_server(sqlite_url, rate_limit_feedback_per_s=0.01, rate_limit_burst_s=200)
    )
    tokens = [(await server.router.Select(select())).decision_id for _ in range(4)]

    def fb(token: str) -> pb.FeedbackRequest:
        return pb.FeedbackRequest(tenant="acme", decision_id=token, reward=1.0)

    await server.router.Feedback(fb(tokens[0]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.StreamFeedback(iter([fb(t) for t in tokens[1:]]))
    assert err.value.code() == C.RESOURCE_EXHAUSTED
    assert "rate limit feedback" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(fb(tokens[3]))
    assert "BANDITD_RATE_LIMIT_FEEDBACK_PER_S" in (err.value.details() or "")
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 1


async def test_upload_larger_than_the_feedback_bucket_says_so(
    sqlite_url: str, start_server: StartServer
) -> None:
    # 100 events a second, a 1 s bucket: a message of 101 events could never be admitted.
    server = await _with_routers(
        await start_server(sqlite_url, rate_limit_feedback_per_s=100, rate_limit_burst_s=1)
    )

    def batch(n: int) -> pb.FeedbackBatch:
        events = [pb.FeedbackRequest(decision_id=f"not-a-token-{i}", reward=1.0) for i in range(n)]
        return pb.FeedbackBatch(tenant="acme", events=events)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.UploadFeedback(iter([batch(101)]))
    assert err.value.code() == C.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED: retrying cannot help
    details = err.value.details() or ""
    assert details.startswith("events: ") and "at most 100 per message" in details
    assert "BANDITD_RATE_LIMIT_FEEDBACK_PER_S" in details
    assert "BANDITD_RATE_LIMIT_BURST_S" in details
    reply = await server.router.UploadFeedback(iter([batch(100)]))  # the bucket was not drawn on
    assert reply.invalid == 100


@pytest.mark.parametrize(
    ("request_", "field", "limit"),
    [
        (select(prompt="word " * 30, embedding=None), "prompt", "BANDITD_MAX_PROMPT_CHARS"),
        (select(candidates=["cheap", "mid", "strong"]), "candidates", "BANDITD_MAX_CANDIDATES"),
        (
            select(metadata={"a": "1", "b": "2", "c": "3"}),
            "metadata",
            "BANDITD_MAX_METADATA_ENTRIES",
        ),
        (select(embedding=pb.Embedding(values=[1.0] * 5)), "embedding.values", "expects 4"),
    ],
)
async def test_size_limits_say_which(
    sqlite_url: str, start_server: StartServer, request_: pb.SelectRequest, field: str, limit: str
) -> None:
    server = await _with_routers(
        await start_server(
            sqlite_url, max_prompt_chars=100, max_candidates=2, max_metadata_entries=2
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Select(request_)
    assert err.value.code() == C.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field)
    assert limit in (err.value.details() or "")


async def test_message_size_limit(sqlite_url: str, start_server: StartServer) -> None:
    server = await _with_routers(await start_server(sqlite_url, max_message_bytes=4096))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Select(select(prompt="x" * 5000, embedding=None))
    assert err.value.code() == C.RESOURCE_EXHAUSTED
    assert "larger than max" in (err.value.details() or "")
    assert (await server.router.Select(select(prompt="x" * 1000, embedding=None))).arm


async def test_rate_limiter_refills_per_key() -> None:
    limiter = RateLimiter("selects", "SETTING", rate_per_s=4.0, burst_s=0.5)
    for _ in range(2):
        await limiter.admit("t")
    with pytest.raises(ResourceExhausted, match="rate limit selects"):
        await limiter.admit("t")
    await limiter.admit("u")
    await asyncio.sleep(0.3)  # 4/s leaks more than one call's worth
    await limiter.admit("t")
    off = RateLimiter("selects", "SETTING", rate_per_s=0.0, burst_s=1.0)
    for _ in range(1000):
        await off.admit("t")
    assert not off.enabled
