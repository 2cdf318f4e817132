"""POST /v1/chat/completions: Select an arm, call its upstream, fall back along the ranking,
relay the answer unchanged (JSON or SSE), then report the call's usage to banditd.

Fallback: a failed arm's decision is rated (reward 0, error set) and the next arm of the first
decision's ranking gets a decision of its own (Select with ``candidates`` = that arm), so every
answer the caller gets has its own decision id to rate. Nothing falls back once streamed bytes
have reached the caller: a stream that breaks after that ends there, reported with error set.
A caller who hangs up mid-stream is not the arm's fault: the report has no error (the breaker
must not open on closed tabs), the cost of the tokens so far, and no latency where the hang-up
cut the answer short (its length is unknown).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from banditd.client import AsyncClient, BanditdError, Decision, RankedArm
from banditd.gateway import metrics
from banditd.gateway.http_errors import (
    BodyTooLarge,
    bad_request,
    banditd_error,
    error_response,
    read_body,
    too_large,
)
from banditd.gateway.routing import BadRequest, Route, bearer, route_of
from banditd.gateway.upstream import Upstream, UpstreamFailed, first_chunk, read_answer
from banditd.gateway.usage import Meter, Served, report_failure, report_usage

log = structlog.get_logger(__name__)
BROKEN_STREAM = (
    b'data: {"error": {"message": "the upstream broke off the stream", '
    b'"type": "upstream_error", "code": "stream_broken"}}\n\n'
)
PASSED_HEADERS = ("content-type", "openai-processing-ms", "x-request-id")


@dataclass
class Gateway:
    """What the endpoints share: banditd's client, the upstreams' HTTP client, settings, and
    the report tasks still running (awaited at shutdown)."""

    client: AsyncClient
    http: httpx.AsyncClient
    max_fallbacks: int
    upstream_timeout_s: float
    max_answer_bytes: int  # of an answer without stream (BANDITD_GATEWAY_MAX_ANSWER_BYTES)
    api_key: str | None = None  # for callers that send no Authorization
    # The variables arms may name as their upstream key (BANDITD_GATEWAY_UPSTREAM_KEY_ENVS);
    # empty: any but banditd's own.
    upstream_key_envs: frozenset[str] = frozenset()
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def key_of(self, request: Request) -> str | None:
        """The caller's Bearer key, else the gateway's own; NotBearer for another Authorization."""
        key = bearer(request.headers)
        return self.api_key if key is None else key

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def chat_completions(gw: Gateway, request: Request) -> Response:
    try:
        body = json.loads(await read_body(request), parse_float=_finite, parse_constant=_finite)
    except BodyTooLarge as exc:
        return too_large(exc)
    except (ValueError, RecursionError):  # nested past the recursion limit: not readable JSON
        return bad_request("the body must be JSON")
    if not isinstance(body, dict):
        return bad_request("the body must be a JSON object")
    if not _encodable(body):
        return bad_request("the body must be UTF-8: it has a lone surrogate (\\ud800-\\udfff)")
    try:
        route = route_of(body, request.headers)
    except BadRequest as exc:
        return bad_request(str(exc))
    api_key = gw.key_of(request)
    # A request id makes the client retry a Select on UNAVAILABLE (a repeat of one banditd
    # committed answers the same decision); each fallback's Select has its own.
    request_id = f"gateway-{uuid.uuid4().hex}"
    try:
        decision = await _select(gw, route, api_key, request_id=request_id)
    except BanditdError as exc:
        return banditd_error(exc)
    order = [decision.arm, *decision.fallbacks][: 1 + gw.max_fallbacks]
    failures: list[str] = []
    for i, arm in enumerate(order):
        if i:
            metrics.FALLBACKS.labels(route.tenant, route.router, order[i - 1]).inc()
            try:
                decision = await _select(
                    gw, route, api_key, request_id=f"{request_id}-{i}", candidates=[arm]
                )
            except BanditdError as exc:
                failures.append(f"{arm}: {exc.message}")
                continue
        answer = await _attempt(gw, request, route, decision, body, api_key)
        if isinstance(answer, Response):
            return answer
        failures.append(answer)
    return error_response(
        502, "every upstream tried failed: " + "; ".join(failures), "upstream_error", "bad_gateway"
    )


def _finite(text: str) -> float:
    """A JSON number, refused when not finite (NaN, Infinity, 1e999: JSON has none of them,
    and the upstream's request could not be encoded)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _encodable(body: dict[str, Any]) -> bool:
    """Whether the body's strings encode as UTF-8 (JSON's escapes can give a lone surrogate,
    which neither Select's prompt nor the upstream's request could carry)."""
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


async def _select(gw: Gateway, route: Route, api_key: str | None, **extra: Any) -> Decision:
    return await gw.client.select(
        tenant=route.tenant,
        router=route.router,
        prompt=route.prompt,
        api_key=api_key,
        **route.select_args,
        **extra,
    )


async def _attempt(
    gw: Gateway,
    caller: Request,
    route: Route,
    decision: Decision,
    body: dict[str, Any],
    api_key: str | None,
) -> Response | str:
    """The caller's answer from the decision's arm, or why the arm failed (it is reported)."""
    ranked = next((r for r in decision.ranking if r.arm == decision.arm), None)
    upstream = Upstream.of(ranked or RankedArm(decision.arm, 0.0, 0.0, 0.0))
    labels = (route.tenant, route.router, upstream.arm)
    meter = Meter(route.prompt_chars)
    stream = body.get("stream") is True
    try:
        response = await upstream.open(gw.http, body, gw.upstream_timeout_s, gw.upstream_key_envs)
        if stream and response.status_code == 200:
            first, rest = await first_chunk(response, upstream.arm)
            meter.first_bytes()
        else:
            content = await read_answer(response, upstream.arm, gw.max_answer_bytes)
            meter.done()
    except UpstreamFailed as exc:
        metrics.UPSTREAM_CALLS.labels(*labels, exc.reason).inc()
        metrics.UPSTREAM_ERRORS.labels(*labels, exc.reason).inc()
        log.warning("upstream_failed", arm=upstream.arm, reason=exc.reason, message=exc.message)
        elapsed = time.perf_counter() - meter.started
        gw.spawn(report_failure(gw.client, route.tenant, decision.decision_id, api_key, elapsed))
        return exc.message
    served = Served(route.tenant, route.router, decision.decision_id, upstream, meter)
    headers = {
        **{h: response.headers[h] for h in PASSED_HEADERS if h in response.headers},
        "x-banditd-decision-id": decision.decision_id,
        "x-banditd-arm": decision.arm,
    }
    status = response.status_code
    if not (stream and status == 200):
        outcome = "ok" if status < 400 else "status_4xx"
        metrics.UPSTREAM_CALLS.labels(*labels, outcome).inc()
        if status < 400:
            meter.read_json(content)
        else:  # the request's fault (400, 422, ...): passed on unchanged, nothing billed, and
            # no latency (a quick refusal is not the time the arm takes to answer)
            meter.input_tokens = meter.output_tokens = 0
            meter.total_s = None
        gw.spawn(report_usage(gw.client, served, api_key))
        return Response(content, status_code=status, headers=headers)
    metrics.UPSTREAM_CALLS.labels(*labels, "ok").inc()
    if meter.first_token_s is not None:
        metrics.FIRST_TOKEN_SECONDS.labels(*labels).observe(meter.first_token_s)
    return StreamingResponse(
        _relay(gw, caller, served, response, first, rest, api_key),
        status_code=200,
        headers=headers,
    )


async def _relay(
    gw: Gateway,
    caller: Request,
    served: Served,
    response: httpx.Response,
    first: bytes,
    rest: AsyncIterator[bytes],
    api_key: str | None,
) -> AsyncIterator[bytes]:
    """The stream as the upstream sent it; its usage is reported when it ends, breaks, or the
    caller hangs up (no error, counted in its own metric). A hang-up cancels or closes this
    generator while it waits, cutting the answer short (no latency then); one it did not wait
    through (the rest was already read, and a send to a caller gone does nothing) is asked of
    the server at the end."""
    labels = (served.tenant, served.router, served.upstream.arm)
    ending = "hung_up"  # until the upstream's answer has ended or broken
    try:
        served.meter.feed(first)
        yield first
        async for chunk in rest:
            served.meter.feed(chunk)
            yield chunk
        served.meter.done()
        ending = "hung_up" if await caller.is_disconnected() else "ok"
    except httpx.HTTPError:
        served.meter.done()
        ending = "broken"
        metrics.UPSTREAM_ERRORS.labels(*labels, "stream_broken").inc()
        log.warning("upstream_stream_broken", arm=served.upstream.arm)
        yield BROKEN_STREAM  # the caller learns the answer is cut short (no fallback now)
    finally:
        if ending == "hung_up":
            metrics.CALLER_HANGUPS.labels(*labels).inc()
            log.info("caller_hung_up", arm=served.upstream.arm, decision_id=served.decision_id)
        # Spawned: a caller that hangs up cancels this generator, not the report.
        gw.spawn(_close_and_report(gw, served, response, api_key, error=ending == "broken"))


async def _close_and_report(
    gw: Gateway, served: Served, response: httpx.Response, api_key: str | None, error: bool
) -> None:
    await response.aclose()
    await report_usage(gw.client, served, api_key, error=error)
