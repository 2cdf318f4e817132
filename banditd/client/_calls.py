"""One RPC as data: method, request, how to decode the reply, whether a retry is safe.

Client and AsyncClient only run these (``_sync`` / ``_async``, through ``Attempts``): everything
a call means is here, once. Retry safety:

- Select is retried only when it has a ``request_id``: the server answers a repeated id with the
  first decision. Without one a lost answer would leave a second, orphan decision behind.
- Feedback is retried: each event carries an idempotency key (``_requests``, the same on every
  attempt), so the server answers a repeat of a committed event as that event (its event_id,
  reward and cost), whatever the router's ``combine``: never a second signal. A retry answered
  ALREADY_EXISTS is still taken as success (FeedbackResult.already_recorded): from a server
  older than the keys, the likeliest cause is this call's own first attempt; from a current one,
  another feedback for the decision came first (as a call without the retry would have found).
- Each UploadFeedback chunk is retried whole, keys included: events its failed attempt committed
  come back as duplicates, never twice as accepted, under any ``combine``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from tenacity import AsyncRetrying, Retrying

from banditd.client._errors import map_rpc_error
from banditd.client._requests import (
    DEFAULT_CHUNK,
    FeedbackArgs,
    FeedbackCall,
    SelectCall,
    UploadOptions,
    _check_names,
    feedback_request,
    select_request,
    upload_chunks,
)
from banditd.client._results import (
    RECORDED_EARLIER,
    Decision,
    FeedbackResult,
    UploadSummary,
    decision_from_proto,
    feedback_from_proto,
    upload_from_proto,
)
from banditd.errors import AlreadyExists

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str  # of banditd.v1.Router
    request: Message | tuple[Message, ...]  # a tuple: a client stream
    decode: Callable[[Any, int], T]  # (reply, attempts it took)
    retry_safe: bool
    # On an attempt after the first, an error of this class is answered with ``recovered``.
    recover_from: type[Exception] | None = None
    recovered: T | None = None
    timeout: float | None = None  # None: the client's
    api_key: str | None = None  # None: the client's

    def payload(self) -> Any:
        """The request for one attempt (a fresh iterator for a stream)."""
        return iter(self.request) if isinstance(self.request, tuple) else self.request

    def failed(self, exc: grpc.RpcError, attempt: int) -> T:
        """Raise the banditd error for ``exc`` (or recover from it on a retry)."""
        error = map_rpc_error(exc)
        if (
            attempt > 1
            and self.recover_from is not None
            and self.recovered is not None
            and isinstance(error, self.recover_from)
        ):
            return self.recovered
        raise error from exc


def select_call(args: SelectCall, default_tenant: str | None) -> Call[Decision]:
    timeout, api_key = args.pop("timeout", None), args.pop("api_key", None)
    msg = select_request(args, default_tenant)
    return Call(
        "Select",
        msg,
        lambda reply, _: decision_from_proto(reply, msg.tenant, msg.router),
        retry_safe=bool(msg.request_id),
        timeout=timeout,
        api_key=api_key,
    )


def feedback_call(args: FeedbackCall, default_tenant: str | None) -> Call[FeedbackResult]:
    timeout, api_key = args.pop("timeout", None), args.pop("api_key", None)
    return Call(
        "Feedback",
        feedback_request(args, default_tenant),
        lambda reply, _: feedback_from_proto(reply),
        retry_safe=True,
        recover_from=AlreadyExists,
        recovered=RECORDED_EARLIER,
        timeout=timeout,
        api_key=api_key,
    )


def upload_calls(
    events: Iterable[FeedbackArgs], default_tenant: str | None, options: UploadOptions
) -> Iterator[Call[UploadSummary]]:
    """One call per chunk, each committed before the next is sent."""
    _check_names(options, UploadOptions, "upload_feedback()")
    tenant = options.get("tenant") or default_tenant
    chunk_size = options.get("chunk_size")
    for chunk in upload_chunks(events, tenant, DEFAULT_CHUNK if chunk_size is None else chunk_size):
        yield Call(
            "UploadFeedback",
            chunk.batches,
            _upload_decoder(chunk.positions),
            True,
            timeout=options.get("timeout"),
            api_key=options.get("api_key"),
        )


def _upload_decoder(positions: tuple[int, ...]) -> Callable[[Any, int], UploadSummary]:
    return lambda reply, attempts: upload_from_proto(reply, positions, attempts)


@dataclass(frozen=True)
class Attempts(Generic[T]):
    """A call's attempts, made by a tenacity Retrying (Client) or AsyncRetrying (AsyncClient):
    ``invoke`` makes one attempt; the client passes its reply to ``done``, or the error of the
    last attempt to ``failed``."""

    call: Call[T]
    retrying: Retrying | AsyncRetrying
    invoke: Callable[[], Any]

    async def invoke_awaited(self) -> Any:
        """``invoke`` for AsyncRetrying, which awaits only a coroutine function."""
        return await self.invoke()

    def _attempt(self) -> int:
        return int(self.retrying.statistics.get("attempt_number", 1))

    def done(self, reply: Any) -> T:
        return self.call.decode(reply, self._attempt())

    def failed(self, exc: grpc.RpcError) -> T:
        return self.call.failed(exc, self._attempt())
