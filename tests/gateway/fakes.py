"""Fake OpenAI-compatible upstreams for the gateway tests: small starlette apps served by
uvicorn on 127.0.0.1:0 in the test's event loop; each can fail on demand."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.helpers import wait_until

PROMPT_TOKENS = 12
COMPLETION_TOKENS = 5
SSE = "text/event-stream"
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = ['{"city": ', '"Paris", ', '"unit": "celsius"}']  # streamed in these pieces


@dataclass
class FakeUpstream:
    """``fail``: None (answer), an HTTP status to answer with, "break" (a stream that stops
    after its first chunk, the connection dropped), "hang" (no answer until ``release``),
    "pause" (a stream that waits for ``release`` after its first chunk) or "empty" (a stream
    answered 200 without a byte).
    ``gzip``: streams are sent gzip-compressed (content-encoding), as a proxy may. ``usage``:
    JSON answers carry a ``usage`` block (some providers send none). ``tool_call``: the answer
    is a call of TOOL_NAME (no content), as a model answers a request with ``tools``.
    ``body``: with an HTTP status as ``fail``, the bytes answered (else an OpenAI error)."""

    name: str
    fail: int | str | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    gzip: bool = False
    usage: bool = True
    tool_call: bool = False
    body: bytes | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def words(self) -> list[str]:
        return ["from ", self.name, " with ", "love"]

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.received.append(body)
        self.keys.append(request.headers.get("authorization", ""))
        if self.fail == "hang":
            await self.release.wait()
        if isinstance(self.fail, int) and self.body is not None:
            return Response(self.body, status_code=self.fail, media_type="application/json")
        if isinstance(self.fail, int):
            return JSONResponse({"error": {"message": "down"}}, status_code=self.fail)
        if self.fail == "empty":
            return Response(b"", media_type=SSE)
        if body.get("stream") and self.gzip:
            headers = {"content-encoding": "gzip"}
            return StreamingResponse(self._gzipped(body), headers=headers, media_type=SSE)
        if body.get("stream"):
            return StreamingResponse(self._stream(body), media_type=SSE)
        answer: dict[str, Any] = {
            "id": "c-1",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": self._message(), "finish_reason": "stop"}],
        }
        if self.usage:
            answer["usage"] = {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            }
        return JSONResponse(answer)

    def _message(self) -> dict[str, Any]:
        if not self.tool_call:
            return {"role": "assistant", "content": "".join(self.words())}
        function = {"name": TOOL_NAME, "arguments": "".join(TOOL_ARGUMENTS)}
        call = {"id": "call-1", "type": "function", "function": function}
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    def _deltas(self) -> list[dict[str, Any]]:
        if not self.tool_call:
            return [{"content": word} for word in self.words()]
        first = {"id": "call-1", "type": "function", "function": {"name": TOOL_NAME}}
        pieces = [{"function": {"arguments": piece}} for piece in TOOL_ARGUMENTS]
        return [{"tool_calls": [{"index": 0, **call}]} for call in (first, *pieces)]

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        for i, delta in enumerate(self._deltas()):
            chunk = {
                "id": "c-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            if i == 0 and self.fail == "break":
                raise ConnectionError("upstream breaks off mid-stream")
            if i == 0 and self.fail == "pause":
                await self.release.wait()
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}
            last = {"id": "c-1", "object": "chat.completion.chunk", "created": 1}
            last |= {"model": body["model"], "choices": [], "usage": usage}
            yield f"data: {json.dumps(last)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def _gzipped(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        packer = zlib.compressobj(wbits=31)  # the gzip format
        async for chunk in self._stream(body):
            yield packer.compress(chunk) + packer.flush(zlib.Z_SYNC_FLUSH)
        yield packer.flush()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])


class Served:
    """An ASGI app under uvicorn on 127.0.0.1:0, in this event loop."""

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        task = self.task = asyncio.create_task(self.server.serve())
        await wait_until(lambda: self.server.started or task.done(), "uvicorn to start")
        if task.done():
            task.result()  # raises what stopped it
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


def uvicorn_server(app: Any) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    )
