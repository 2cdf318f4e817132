"""Every bad input gets its status code, a message naming the problem, and changes nothing."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest

from banditd.flows.tokens import TokenClaims, TokenSigner
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import SIGNING_KEY, Running, StartServer, router_config

C = grpc.StatusCode


def select(**fields: Any) -> pb.SelectRequest:
    base: dict[str, Any] = {"tenant": "acme", "router": "chat", "prompt": "hello"}
    base.update(fields)
    return pb.SelectRequest(**{k: v for k, v in base.items() if v is not None})


SELECT_CASES = [
    ("unknown tenant", select(tenant="nobody"), C.NOT_FOUND, "unknown tenant"),
    ("unknown router", select(router="nope"), C.NOT_FOUND, "no router 'nope'"),
    ("unknown arm", select(candidates=["cheap", "gpt-9"]), C.NOT_FOUND, "no arm 'gpt-9'"),
    ("empty tenant", select(tenant=""), C.INVALID_ARGUMENT, "tenant"),
    ("no context", select(prompt=None), C.INVALID_ARGUMENT, "context"),
    ("empty prompt", select(prompt="   "), C.INVALID_ARGUMENT, "prompt"),
    ("oversized prompt", select(prompt="x" * 5001), C.INVALID_ARGUMENT, "prompt"),
    (
        "wrong embedding size",
        select(prompt=None, embedding=pb.Embedding(values=[0.1, 0.2])),
        C.INVALID_ARGUMENT,
        "embedding.values",
    ),
    (
        "NaN in embedding",
        select(prompt=None, embedding=pb.Embedding(values=[0.1, math.nan, 0.0, 0.0])),
        C.INVALID_ARGUMENT,
        "embedding.values",
    ),
    (
        "inf in embedding",
        select(prompt=None, embedding=pb.Embedding(values=[math.inf, 0, 0, 0])),
        C.INVALID_ARGUMENT,
        "embedding.values",
    ),
    ("negative cost_weight", select(cost_weight=-1.0), C.INVALID_ARGUMENT, "cost_weight"),
    ("NaN cost_weight", select(cost_weight=math.nan), C.INVALID_ARGUMENT, "cost_weight"),
    ("negative max_cost", select(max_cost_usd=-0.01), C.INVALID_ARGUMENT, "max_cost_usd"),
    ("no affordable arm", select(max_cost_usd=0.0), C.FAILED_PRECONDITION, "no eligible arm"),
    ("negative input_tokens", select(input_tokens=-1), C.INVALID_ARGUMENT, "input_tokens"),
    ("huge input_tokens", select(input_tokens=2**62), C.INVALID_ARGUMENT, "input_tokens"),
    ("long request_id", select(request_id="r" * 129), C.INVALID_ARGUMENT, "request_id"),
]


async def _server(start_server: StartServer, url: str) -> Running:
    server = await start_server(url, max_prompt_chars=5000)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    return server


async def _decisions(server: Running) -> int:
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    return stats.decisions


@pytest.mark.parametrize(
    ("case", "request_", "code", "message"), SELECT_CASES, ids=[c[0] for c in SELECT_CASES]
)
async def test_bad_select(
    start_server: StartServer,
    sqlite_url: str,
    case: str,
    request_: pb.SelectRequest,
    code: C,
    message: str,
) -> None:
    server = await _server(start_server, sqlite_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Select(request_)
    assert err.value.code() == code, err.value.details()
    assert message in (err.value.details() or "")
    assert await _decisions(server) == 0


def feedback(token: str, **fields: Any) -> pb.FeedbackRequest:
    base: dict[str, Any] = {"tenant": "acme", "decision_id": token, "reward": 0.5}
    base.update(fields)
    return pb.FeedbackRequest(**{k: v for k, v in base.items() if v is not None})


def _forge(claims: TokenClaims, key: str = SIGNING_KEY) -> str:
    return TokenSigner(key.encode()).sign(claims)


FEEDBACK_CASES: list[tuple[str, Any, C, str]] = [
    ("reward above 1", lambda t, c: feedback(t, reward=1.5), C.INVALID_ARGUMENT, "reward"),
    ("reward below 0", lambda t, c: feedback(t, reward=-0.1), C.INVALID_ARGUMENT, "reward"),
    ("NaN reward", lambda t, c: feedback(t, reward=math.nan), C.INVALID_ARGUMENT, "reward"),
    ("no signal", lambda t, c: feedback(t, reward=None), C.INVALID_ARGUMENT, "signal"),
    ("unknown thumb", lambda t, c: feedback(t, reward=None, thumb=7), C.INVALID_ARGUMENT, "thumb"),
    (
        "unspecified thumb",
        lambda t, c: feedback(t, reward=None, thumb=pb.THUMB_UNSPECIFIED),
        C.INVALID_ARGUMENT,
        "thumb",
    ),
    ("negative cost", lambda t, c: feedback(t, cost_usd=-1.0), C.INVALID_ARGUMENT, "cost_usd"),
    ("inf cost", lambda t, c: feedback(t, cost_usd=math.inf), C.INVALID_ARGUMENT, "cost_usd"),
    (
        "negative tokens",
        lambda t, c: feedback(t, output_tokens=-5),
        C.INVALID_ARGUMENT,
        "output_tokens",
    ),
    (
        "negative latency",
        lambda t, c: feedback(t, latency_ms=-1.0),
        C.INVALID_ARGUMENT,
        "latency_ms",
    ),
    ("empty decision id", lambda t, c: feedback(""), C.INVALID_ARGUMENT, "decision_id"),
    (
        "garbage decision id",
        lambda t, c: feedback("not-a-token"),
        C.PERMISSION_DENIED,
        "decision token",
    ),
    (
        "altered decision id",
        lambda t, c: feedback(t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB")),
        C.PERMISSION_DENIED,
        "signature",
    ),
    (
        "signed with another key",
        lambda t, c: feedback(_forge(c, key="another-key-0123456789abcdef")),
        C.PERMISSION_DENIED,
        "signature",
    ),
    ("other tenant", lambda t, c: feedback(t, tenant="globex"), C.PERMISSION_DENIED, "tenant"),
    (
        "oversized idempotency key",
        lambda t, c: feedback(t, idempotency_key="k" * 129),
        C.INVALID_ARGUMENT,
        "idempotency_key: at most 128 characters",
    ),
    (
        "preference without a challenger",
        lambda t, c: feedback(t, reward=None, preference=pb.PREFER_ARM),
        C.INVALID_ARGUMENT,
        "no challenger",
    ),
    (
        "unknown preference",
        lambda t, c: feedback(t, reward=None, preference=7),
        C.INVALID_ARGUMENT,
        "PREFER_ARM, PREFER_CHALLENGER or PREFER_TIE",
    ),
    (
        "expired",
        lambda t, c: feedback(_forge(replace(c, expires_at=time.time() - 5))),
        C.FAILED_PRECONDITION,
        "expired",
    ),
]


@pytest.mark.parametrize(
    ("case", "make", "code", "message"), FEEDBACK_CASES, ids=[c[0] for c in FEEDBACK_CASES]
)
async def test_bad_feedback(
    database_url: str, start_server: StartServer, case: str, make: Any, code: C, message: str
) -> None:
    server = await _server(start_server, database_url)
    d = await server.router.Select(select(prompt=None, embedding=pb.Embedding(values=[1, 0, 0, 0])))
    claims = await server.claims(d.decision_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(make(d.decision_id, claims))
    assert err.value.code() == code, err.value.details()
    assert message in (err.value.details() or "")
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 0 and stats.applied_event_id == 0
    # The decision is untouched: proper feedback for it is still accepted, once.
    ok = await server.router.Feedback(feedback(d.decision_id, reward=1.0))
    assert ok.event_id > 0


async def test_second_feedback_is_already_exists(
    database_url: str, start_server: StartServer
) -> None:
    server = await _server(start_server, database_url)
    d = await server.router.Select(select())
    await server.router.Feedback(feedback(d.decision_id, thumb=pb.THUMB_UP, reward=None))
    posterior_before = server.app.catalog._by_id[1].posterior.theta.copy()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(feedback(d.decision_id, thumb=pb.THUMB_DOWN, reward=None))
    assert err.value.code() == C.ALREADY_EXISTS
    assert "already has feedback" in (err.value.details() or "")
    np.testing.assert_array_equal(server.app.catalog._by_id[1].posterior.theta, posterior_before)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 1


async def test_feedback_for_deleted_router_is_not_found(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await _server(start_server, sqlite_url)
    d = await server.router.Select(select())
    assert (
        await server.admin.DeleteRouter(pb.DeleteRouterRequest(tenant="acme", name="chat"))
    ).deleted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(feedback(d.decision_id))
    assert err.value.code() == C.NOT_FOUND


BAD_ROUTERS = [
    ("no arms", router_config(arms=()), "router.arms"),
    ("duplicate arm", router_config(arms=("a", "a")), "duplicate"),
    ("bad policy", router_config(policy="greedy"), "router.policy"),
    (
        "negative price",
        pb.RouterConfig(
            tenant="acme", name="chat", arms=[pb.Arm(name="a", input_price_per_mtok=-1)]
        ),
        "input_price",
    ),
    ("empty name", router_config(name=""), "router.name"),
    ("spaces in tenant", router_config(tenant="a b"), "router.tenant"),
    # A regex's $ matches before a final newline: names must end where their characters do.
    ("newline after the tenant", router_config(tenant="acme\n"), "router.tenant"),
    ("newline after the name", router_config(name="chat\n"), "router.name"),
    ("newline after an arm", router_config(arms=("cheap", "mid\n")), "arms.name"),
    ("129 characters", router_config(name="c" * 128 + "\n"), "router.name"),
    ("huge embedding", router_config(embedding_dim=100_000), "embedding_dim"),
    # Stored in an INTEGER column: Postgres holds at most 2**31 - 1 there.
    (
        "feedback cap past int32",
        router_config(feedback_cap_per_key=2**31),
        "feedback_cap_per_key: must be in [0, 2147483647], got 2147483648",
    ),
    (
        "all disabled",
        pb.RouterConfig(tenant="acme", name="chat", arms=[pb.Arm(name="a", disabled=True)]),
        "enabled",
    ),
]


@pytest.mark.parametrize(
    ("case", "config", "message"), BAD_ROUTERS, ids=[c[0] for c in BAD_ROUTERS]
)
async def test_bad_router_config(
    sqlite_url: str, start_server: StartServer, case: str, config: pb.RouterConfig, message: str
) -> None:
    server = await start_server(sqlite_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    assert err.value.code() == C.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    assert len((await server.admin.ListRouters(pb.ListRoutersRequest())).routers) == 0
