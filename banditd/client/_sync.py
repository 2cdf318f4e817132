"""Client: the blocking banditd client (calls and their meaning are in ``_calls``)."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar, Unpack

import grpc
from tenacity import Retrying

from banditd.client._base import DEFAULT_CHUNK, ClientBase
from banditd.client._calls import Call, feedback_call, select_call, upload_calls
from banditd.client._requests import FeedbackArgs, SelectArgs
from banditd.client._results import Decision, FeedbackResult, UploadSummary
from banditd.client._retry import tenacity_args
from banditd.v1 import banditd_pb2_grpc as rpc

T = TypeVar("T")


class Client(ClientBase):
    """A blocking banditd client; use it as a context manager, or close() it."""

    def _open(self) -> None:
        if self._credentials is None:
            self._channel = grpc.insecure_channel(self.target, self._options)
        else:
            self._channel = grpc.secure_channel(self.target, self._credentials, self._options)
        self._stub = rpc.RouterStub(self._channel)

    def select(
        self,
        *,
        timeout: float | None = None,
        api_key: str | None = None,
        **args: Unpack[SelectArgs],
    ) -> Decision:
        """Pick an arm (see SelectArgs)."""
        return self._run(select_call(args, self.tenant), timeout, api_key)

    def feedback(
        self,
        *,
        timeout: float | None = None,
        api_key: str | None = None,
        **args: Unpack[FeedbackArgs],
    ) -> FeedbackResult:
        """Report how a decision went (see FeedbackArgs); returns once it is committed."""
        return self._run(feedback_call(args, self.tenant), timeout, api_key)

    def upload_feedback(
        self,
        events: Iterable[FeedbackArgs],
        *,
        tenant: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        timeout: float | None = None,
        api_key: str | None = None,
    ) -> UploadSummary:
        """Upload many feedback events (each a dict of FeedbackArgs) in calls of ``chunk_size``,
        each committed before the next is sent; ``timeout`` is per call."""
        summary = UploadSummary()
        for call in upload_calls(events, tenant or self.tenant, chunk_size):
            summary += self._run(call, timeout, api_key)
        return summary

    def _run(self, call: Call[T], timeout: float | None, api_key: str | None) -> T:
        deadline = self._deadline(timeout)
        for attempt in Retrying(
            **tenacity_args(self.retry, call.method, call.retry_safe, deadline)
        ):
            with attempt:
                number = attempt.retry_state.attempt_number
                method = getattr(self._stub, call.method)
                try:
                    reply = method(
                        call.payload(),
                        timeout=deadline.remaining(),
                        metadata=self._metadata_for(api_key),
                    )
                except grpc.RpcError as exc:
                    return call.failed(exc, number)
                return call.decode(reply, number)
        raise AssertionError("tenacity returns or raises")  # pragma: no cover

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
