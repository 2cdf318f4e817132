"""AsyncClient: the asyncio banditd client (calls and their meaning are in ``_calls``)."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar, Unpack, cast

import grpc
from tenacity import AsyncRetrying

from banditd.client._base import DEFAULT_CHUNK, ClientBase
from banditd.client._calls import Call, feedback_call, select_call, upload_calls
from banditd.client._requests import FeedbackArgs, SelectArgs
from banditd.client._results import Decision, FeedbackResult, UploadSummary
from banditd.client._retry import tenacity_args
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

    async def select(
        self,
        *,
        timeout: float | None = None,
        api_key: str | None = None,
        **args: Unpack[SelectArgs],
    ) -> Decision:
        """Pick an arm (see SelectArgs)."""
        return await self._run(select_call(args, self.tenant), timeout, api_key)

    async def feedback(
        self,
        *,
        timeout: float | None = None,
        api_key: str | None = None,
        **args: Unpack[FeedbackArgs],
    ) -> FeedbackResult:
        """Report how a decision went (see FeedbackArgs); returns once it is committed."""
        return await self._run(feedback_call(args, self.tenant), timeout, api_key)

    async def upload_feedback(
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
            summary += await self._run(call, timeout, api_key)
        return summary

    async def _run(self, call: Call[T], timeout: float | None, api_key: str | None) -> T:
        deadline = self._deadline(timeout)
        async for attempt in AsyncRetrying(
            **tenacity_args(self.retry, call.method, call.retry_safe, deadline)
        ):
            with attempt:
                number = attempt.retry_state.attempt_number
                method = getattr(self._router(), call.method)
                try:
                    reply = await method(
                        call.payload(),
                        timeout=deadline.remaining(),
                        metadata=self._metadata_for(api_key),
                    )
                except grpc.RpcError as exc:
                    return call.failed(exc, number)
                return call.decode(reply, number)
        raise AssertionError("tenacity returns or raises")  # pragma: no cover

    async def close(self) -> None:
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
