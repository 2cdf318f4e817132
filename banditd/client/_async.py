"""AsyncClient: the asyncio banditd client (calls and their meaning are in ``_calls``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar, Unpack, cast

import grpc
from tenacity import AsyncRetrying

from banditd.client._base import ClientBase, stopped_upload
from banditd.client._calls import Call, feedback_call, select_call, upload_calls
from banditd.client._requests import FeedbackArgs, FeedbackCall, SelectCall, UploadOptions
from banditd.client._results import Decision, FeedbackResult, UploadSummary
from banditd.v1 import banditd_pb2_grpc as rpc

T = TypeVar("T")


class AsyncClient(ClientBase):
    """An asyncio banditd client; use it with ``async with``, or ``await close()`` it."""

    def _open(self) -> None:
        # A grpc.aio channel belongs to the event loop it is made in: make it in the loop that
        # makes the first call (a client made at import time then works under asyncio.run).
        self._channel: grpc.aio.Channel | None = None
        self._stub: rpc.RouterAsyncStub | None = None

    def _router(self) -> rpc.RouterAsyncStub:
        if self._stub is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target, self._credentials, self._options
                )
            # grpc has no type information here, so the stub's overload for aio is not picked.
            self._stub = cast("rpc.RouterAsyncStub", rpc.RouterStub(self._channel))
        return self._stub

    async def select(self, **args: Unpack[SelectCall]) -> Decision:
        """Pick an arm (see SelectArgs; and CallOptions)."""
        return await self._run(select_call(args, self.tenant))

    async def feedback(self, **args: Unpack[FeedbackCall]) -> FeedbackResult:
        """Report how a decision went (see FeedbackArgs; and CallOptions); returns once it is
        committed."""
        return await self._run(feedback_call(args, self.tenant))

    async def upload_feedback(
        self, events: Iterable[FeedbackArgs], **options: Unpack[UploadOptions]
    ) -> UploadSummary:
        """Upload many feedback events (each a dict of FeedbackArgs) in calls of ``chunk_size``,
        each committed before the next is sent (see UploadOptions). The error that stops it
        carries the UploadSummary of the calls committed before it (``uploaded``), whatever
        it is (a call's, the client's refusal of a later event, the iterable's own)."""
        summary = UploadSummary()
        try:
            for call in upload_calls(events, self.tenant, options):
                summary += await self._run(call)
        except Exception as exc:
            stopped_upload(exc, summary)
            raise
        return summary

    async def _run(self, call: Call[T]) -> T:
        attempts = self._attempts(call, AsyncRetrying)
        try:
            return attempts.done(await attempts.retrying(attempts.invoke_awaited))
        except grpc.RpcError as exc:
            return self._failed(attempts, exc)
        except asyncio.CancelledError:
            # grpc.aio cancels the calls in flight on close(): unless this task is being
            # cancelled itself, that is ClientClosed, as from Client.
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise self._closed_during_call() from None
            raise

    async def close(self) -> None:
        """Close the channel (if made); a call after this (or still in flight) raises
        ClientClosed."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
