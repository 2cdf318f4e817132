"""One RPC as data: method, request, how to decode the reply, whether a retry is safe.

Client and AsyncClient only run these (``_sync`` / ``_async``): everything a call means is here,
once. Retry safety:

- Select is retried only when it has a ``request_id``: the server answers a repeated id with the
  first decision. Without one a lost answer would leave a second, orphan decision behind.
- Feedback is retried: a decision takes one feedback, so a repeat of a committed one is
  ALREADY_EXISTS and cannot count twice. A retry answered ALREADY_EXISTS is taken as success
  (FeedbackResult.already_recorded), since the likeliest cause is this call's own first attempt.
  (Routers with ``combine`` "last" or "mean" take several signals per decision: there a repeat
  after a lost answer is a second, equal signal, which "last" makes harmless and "mean" weighs
  twice.)
- Each UploadFeedback chunk is retried whole: events its failed attempt committed come back as
  duplicates, never twice as accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from banditd.client._errors import map_rpc_error
from banditd.client._requests import (
    FeedbackArgs,
    SelectArgs,
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


def select_call(args: SelectArgs, default_tenant: str | None) -> Call[Decision]:
    msg = select_request(args, default_tenant)
    return Call(
        "Select",
        msg,
        lambda reply, _: decision_from_proto(reply, msg.tenant, msg.router),
        retry_safe=bool(msg.request_id),
    )


def feedback_call(args: FeedbackArgs, default_tenant: str | None) -> Call[FeedbackResult]:
    return Call(
        "Feedback",
        feedback_request(args, default_tenant),
        lambda reply, _: feedback_from_proto(reply),
        retry_safe=True,
        recover_from=AlreadyExists,
        recovered=RECORDED_EARLIER,
    )


def upload_calls(
    events: Iterable[FeedbackArgs], default_tenant: str | None, chunk_size: int
) -> Iterator[Call[UploadSummary]]:
    for chunk in upload_chunks(events, default_tenant, chunk_size):
        yield Call("UploadFeedback", chunk.batches, _upload_decoder(chunk.positions), True)


def _upload_decoder(positions: tuple[int, ...]) -> Callable[[Any, int], UploadSummary]:
    return lambda reply, attempts: upload_from_proto(reply, positions, attempts)
