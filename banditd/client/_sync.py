"""Client: the blocking banditd client (calls and their meaning are in ``_calls``)."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar, Unpack

import grpc
from tenacity import Retrying

from banditd.client._base import ClientBase, stopped_upload
from banditd.client._calls import Call, feedback_call, select_call, upload_calls
from banditd.client._requests import FeedbackArgs, FeedbackCall, SelectCall, UploadOptions
from banditd.client._results import Decision, FeedbackResult, UploadSummary
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

    def _router(self) -> rpc.RouterStub:
        return self._stub

    def select(self, **args: Unpack[SelectCall]) -> Decision:
        """Pick an arm (see SelectArgs; and CallOptions)."""
        return self._run(select_call(args, self.tenant))

    def feedback(self, **args: Unpack[FeedbackCall]) -> FeedbackResult:
        """Report how a decision went (see FeedbackArgs; and CallOptions); returns once it is
        committed."""
        return self._run(feedback_call(args, self.tenant))

    def upload_feedback(
        self, events: Iterable[FeedbackArgs], **options: Unpack[UploadOptions]
    ) -> UploadSummary:
        """Upload many feedback events (each a dict of FeedbackArgs) in calls of ``chunk_size``,
        each committed before the next is sent (see UploadOptions). The error that stops it
        carries the UploadSummary of the calls committed before it (``uploaded``), whatever
        it is (a call's, the client's refusal of a later event, the iterable's own)."""
        summary = UploadSummary()
        try:
            for call in upload_calls(events, self.tenant, options):
                summary += self._run(call)
        except Exception as exc:
            stopped_upload(exc, summary)
            raise
        return summary

    def _run(self, call: Call[T]) -> T:
        attempts = self._attempts(call, Retrying)
        try:
            return attempts.done(attempts.retrying(attempts.invoke))
        except grpc.RpcError as exc:
            return self._failed(attempts, exc)

    def close(self) -> None:
        """Close the channel; a call after this (or still in flight) raises ClientClosed."""
        self._closed = True
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
