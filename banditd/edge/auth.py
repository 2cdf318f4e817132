"""The gRPC edge guard: authentication, tenancy, roles and rate limits, in one interceptor.

Every call to a banditd service passes ``EdgeGuard`` before its servicer runs:

1. API key (when auth is on): metadata ``authorization: Bearer bdk_<id>_<secret>``; missing,
   malformed, unknown or revoked is UNAUTHENTICATED.
2. Role: Router.Select needs ``select``; Router.Feedback, StreamFeedback and UploadFeedback
   ``feedback``; every other banditd RPC ``admin``; reflection needs a valid key; health is open
   (probes).
3. Tenant: the tenant a request names (its ``tenant`` field, or that of a sub-message such as
   PutRouterRequest.router) must be the key's tenant, unless the key is for every tenant
   (``*``); a request naming no tenant (ListRouters of all tenants) needs a ``*`` key. Each
   message of a StreamFeedback is checked as it arrives, its key again too (revoked: the
   stream ends). Feedback tokens carry their tenant, and
   the Feedback flow refuses a token of another tenant, so a key can neither read nor write
   another tenant's routers, decisions, statistics or feedback.
4. Rate limits per tenant (banditd.edge.limits): Select calls, and feedback events (each message
   of a stream counts), RESOURCE_EXHAUSTED naming the limit.

The client identity (key id, or peer address without auth) is put in
``banditd.flows.feedback_guard.CLIENT`` for the per-client feedback cap.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from banditd import metrics
from banditd.edge.authenticator import Authenticator, Principal
from banditd.edge.keys import ALL_TENANTS
from banditd.edge.limits import RateLimiter, TenantLimits
from banditd.errors import (
    BanditdError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from banditd.flows.feedback_guard import CLIENT

log = structlog.get_logger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
BANDITD_PREFIX = "/banditd.v1."
METHOD_ROLES = {
    "/banditd.v1.Router/Select": "select",
    "/banditd.v1.Router/Feedback": "feedback",
    "/banditd.v1.Router/StreamFeedback": "feedback",
    "/banditd.v1.Router/UploadFeedback": "feedback",
}
_REASONS = {
    Unauthenticated: "unauthenticated",
    PermissionDenied: "permission_denied",
    ResourceExhausted: "rate_limited",
    InvalidArgument: "invalid",
    Unavailable: "unavailable",
}


def tenant_of(request: Message) -> str | None:
    """The tenant a request names: its own ``tenant`` field, or a singular sub-message's."""
    fields = request.DESCRIPTOR.fields_by_name
    if "tenant" in fields:
        return str(getattr(request, "tenant"))  # noqa: B009 - any message with a tenant field
    for field in request.DESCRIPTOR.fields:
        sub = field.message_type
        if sub is not None and not field.is_repeated and "tenant" in sub.fields_by_name:
            return str(getattr(request, field.name).tenant)
    return None


def authorize(principal: Principal, role: str | None, tenant: str | None, method: str) -> None:
    if role is not None and role not in principal.roles:
        raise PermissionDenied(
            f"API key {principal.key_id} lacks the {role!r} role that {method} needs"
        )
    if principal.tenant == ALL_TENANTS:
        return
    if not tenant:
        raise PermissionDenied(
            f"{method} without a tenant spans every tenant: name your tenant "
            f"({principal.tenant!r}) or use a key for all tenants"
        )
    if tenant != principal.tenant:
        raise PermissionDenied(
            f"API key {principal.key_id} is for tenant {principal.tenant!r}, not {tenant!r}"
        )


@dataclass(frozen=True)
class Undecodable:
    """Stands for a request whose bytes do not parse (refused as INVALID_ARGUMENT, where gRPC
    alone would answer INTERNAL)."""

    message: str


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    name = getattr(getattr(deserialize, "__self__", None), "__name__", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return Undecodable(name)

    return parse


def _peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    return f"peer:{context.peer().rpartition(':')[0]}"


class EdgeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped here
    def __init__(self, authenticator: Authenticator | None, limits: TenantLimits) -> None:
        self._auth = authenticator
        self._limits = limits
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _rate_limit(self, method: str) -> RateLimiter | None:
        if method == "/banditd.v1.Router/Select":
            return self._limits.selects
        if METHOD_ROLES.get(method) == "feedback":
            return self._limits.feedback
        return None

    async def _admit(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal | None:
        """Authenticate the call (when auth is on) and bind its client identity."""
        principal = None
        if self._auth is not None:
            principal = await self._auth.authenticate(context.invocation_metadata())
        CLIENT.set(f"key:{principal.key_id}" if principal else _peer(context))
        return principal

    async def _check(
        self, principal: Principal | None, method: str, request: Message, amount: float = 1.0
    ) -> None:
        if isinstance(request, Undecodable):
            raise InvalidArgument("request", f"not a valid {request.message} message")
        tenant = tenant_of(request)
        if principal is not None:
            authorize(principal, METHOD_ROLES.get(method, "admin"), tenant, method)
        limiter = self._rate_limit(method)
        if limiter is not None and limiter.enabled:
            await limiter.admit(tenant or "", amount)

    async def _checked(
        self,
        principal: Principal | None,
        method: str,
        requests: AsyncIterator[Message],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Message]:
        """A stream's requests, each checked as it arrives, its key too (one revoked while the
        stream is open ends it, as it would a new call); a refusal is counted and logged
        (``_refused``), then raised into the servicer's loop, whose edge maps it to a status
        code. A message of many events (UploadFeedback) counts each against rate limits."""
        metadata = context.invocation_metadata()
        async for request in requests:
            amount = float(len(getattr(request, "events", ())) or 1)
            try:
                if self._auth is not None:
                    principal = await self._auth.authenticate(metadata)
                await self._check(principal, method, request, amount)
            except BanditdError as exc:
                _refused(method, exc)  # counted and logged like a unary call's refusal
                raise
            yield request

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        # The wrappers hold no per-call state: made once per method (and registered handler),
        # not three closures and a handler per call. Only served methods get here: bounded.
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(handler, method))
        return cached[1]

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not method.startswith(BANDITD_PREFIX):  # reflection: any valid key
            return self._authenticated_only(handler, method) if self._auth else handler
        if handler.unary_unary is not None:
            return self._unary(handler, method)
        if handler.stream_unary is not None:
            return self._stream_unary(handler, method)
        return self._streaming_reply(handler, method)

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, exc: BanditdError
    ) -> None:
        _refused(method, exc)
        await context.abort(grpc.StatusCode[exc.code], exc.message)

    async def _admitted(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        request: Message | None = None,
    ) -> Principal | None:
        """The call's principal, admitted, with its request checked when it has one (a
        stream's requests are checked as they arrive); a refusal aborts the call."""
        principal, started = None, time.perf_counter()
        try:
            principal = await self._admit(method, context)
            if request is not None:
                await self._check(principal, method, request)
        except BanditdError as exc:
            if method.startswith(BANDITD_PREFIX):  # the servicer never sees it: counted here
                rpc = method.rpartition("/")[2]
                metrics.child(metrics.RPC_SECONDS, rpc, exc.code).observe(
                    time.perf_counter() - started
                )
            await self._refuse(context, method, exc)
        return principal

    def _unary(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary

        async def guarded(request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self._admitted(method, context, request)
            return await inner(request, context)

        return _rewrapped(grpc.unary_unary_rpc_method_handler, guarded, handler)

    def _stream_unary(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = handler.stream_unary

        async def guarded(
            requests: AsyncIterator[Message], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            principal = await self._admitted(method, context)
            return await inner(self._checked(principal, method, requests, context), context)

        return _rewrapped(grpc.stream_unary_rpc_method_handler, guarded, handler)

    def _streaming_reply(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Server-streaming RPCs (none in v1 yet): each request is checked like a unary one."""
        if handler.unary_stream is not None:
            inner = handler.unary_stream

            async def one(request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await self._admitted(method, context, request)
                async for response in inner(request, context):
                    yield response

            return _rewrapped(grpc.unary_stream_rpc_method_handler, one, handler)
        inner_many = handler.stream_stream

        async def many(
            requests: AsyncIterator[Message], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            principal = await self._admitted(method, context)
            try:
                async for response in inner_many(
                    self._checked(principal, method, requests, context), context
                ):
                    yield response
            except BanditdError as exc:  # a refusal of _checked (counted there), or the handler's
                await context.abort(grpc.StatusCode[exc.code], exc.message)

        return _rewrapped(grpc.stream_stream_rpc_method_handler, many, handler)

    def _authenticated_only(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        inner = handler.stream_stream
        if inner is None:
            raise RuntimeError(f"EdgeGuard has no rule for {method}")

        async def guarded(
            requests: AsyncIterator[Message], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await self._admitted(method, context)
            async for response in inner(requests, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _refused(method: str, exc: BanditdError) -> None:
    """Count and log a refusal at the edge (``banditd_auth_refusals_total``, ``edge_refused``)."""
    reason = _REASONS.get(type(exc), "other")
    metrics.AUTH_REFUSALS.labels(reason).inc()
    log.info("edge_refused", method=method, reason=reason, message=exc.message)


def _rewrapped(
    make: Callable[..., grpc.RpcMethodHandler],
    behaviour: Callable[..., Any],
    handler: grpc.RpcMethodHandler,
) -> grpc.RpcMethodHandler:
    """``make`` (a grpc.*_rpc_method_handler) of the guarded ``behaviour`` with ``handler``'s
    serializers; requests that do not parse reach it as Undecodable."""
    return make(
        behaviour,
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
