"""The gateway when things go wrong around a call: banditd blips, callers hang up."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from banditd.gateway import metrics
from banditd.gateway.usage import rough_tokens
from tests.gateway.stack import ALPHA_PRICES, MODEL, PROMPT, Launch
from tests.helpers import wait_until

HEADERS_FRAME = 0x1  # HTTP/2 frame type


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class DroppingProxy:
    """A TCP proxy to banditd (gRPC over HTTP/2) that cuts its first connection when banditd
    starts to answer a call (the first HEADERS frame of a stream): the call reached banditd and
    was done there, and the client gets UNAVAILABLE. Later connections pass through."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.connections = 0
        self.dropped = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        host, _, port = self.target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers += (writer, up_writer)
        answers = self._cut_first(up_reader, writer) if self.connections == 1 else None
        tasks = [
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(answers or _pipe(up_reader, writer)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _cut_first(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                header = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
                stream = int.from_bytes(header[5:], "big") & 0x7FFFFFFF
                if stream and header[3] == HEADERS_FRAME:
                    self.dropped = True
                    return
                writer.write(header + payload)
                await writer.drain()


async def test_a_select_cut_off_by_a_banditd_blip_is_retried_to_the_same_decision(
    launch: Launch,
) -> None:
    proxies: list[DroppingProxy] = []

    async def via_proxy(address: str) -> str:
        proxies.append(DroppingProxy(address))
        return await proxies[-1].start()

    stack = await launch(target=via_proxy)
    try:
        async with httpx.AsyncClient(base_url=stack.base_url) as http:
            answer = await http.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]},
            )
        assert answer.status_code == 200, answer.text
        assert proxies[0].dropped and proxies[0].connections == 2
        # banditd decided once: the retry's repeated request id was answered that decision.
        assert (await stack.stats()).decisions == 1
        assert (await stack.reported(answer.headers["x-banditd-arm"])).usage_reports == 1
    finally:
        await stack.gateway.drain()
        await proxies[0].close()


async def test_a_caller_who_hangs_up_before_the_stream_starts_still_gets_it_reported(
    launch: Launch,
) -> None:
    """The caller hangs up while the upstream is still to answer. The stream's generator must
    still start (its finally closes the upstream's response and reports the usage): starlette
    does under uvicorn (ASGI 2.3: its disconnect listener cancels a task only once started,
    and a send to a caller gone is a no-op); with ASGI >= 2.4, where send raises, it would not."""
    stack = await launch()
    stack.alpha.fail = "hang"
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    await wait_until(lambda: stack.alpha.received, "the upstream to be asked")
    writer.close()
    await writer.wait_closed()
    await wait_until(
        lambda: not stack.uvicorn.server.server_state.connections, "the gateway to see it"
    )
    stack.alpha.release.set()  # the upstream answers now, to a caller already gone

    async def reported() -> bool:
        await stack.gateway.drain()
        return (await stack.arm_stats("alpha")).usage_reports == 1

    await wait_until(reported, "the usage report", within=10)
    assert (await stack.arm_stats("alpha")).usage_errors == 0  # not the arm's fault


async def test_a_caller_who_hangs_up_mid_stream_is_reported_without_a_latency(
    launch: Launch,
) -> None:
    """The caller reads the first chunk of a streamed answer and closes its connection. The
    usage report carries the cost of the tokens streamed so far and no latency (the answer never
    finished: the latency model must not learn its time), and no error (not the arm's fault)."""
    stack = await launch()
    stack.alpha.fail = "pause"  # the first chunk, then nothing until released
    labels = {"tenant": "acme", "router": "chat", "arm": "alpha"}
    hangups = metrics.REGISTRY.get_sample_value("banditd_gateway_caller_hangups_total", labels)
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    async with (
        httpx.AsyncClient(base_url=stack.base_url) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as answer,
    ):
        assert answer.status_code == 200
        async for received in answer.aiter_bytes():
            assert b'"from "' in received
            break  # and hang up: leaving the block closes the connection mid-answer
    await wait_until(
        lambda: not stack.uvicorn.server.server_state.connections, "the gateway to see it"
    )

    async def reported() -> bool:
        await stack.gateway.drain()
        return (await stack.arm_stats("alpha")).usage_reports == 1

    await wait_until(reported, "the usage report", within=10)
    usage = await stack.arm_stats("alpha")
    assert usage.usage_errors == 0  # not the arm's fault: its breaker must not count it
    input_tokens, output_tokens = rough_tokens(len(PROMPT)), rough_tokens(len("from "))
    expected = (input_tokens * ALPHA_PRICES[0] + output_tokens * ALPHA_PRICES[1]) / 1e6
    assert usage.usage_cost_usd == pytest.approx(expected)  # what the upstream sent is paid for
    assert usage.usage_mean_first_token_ms > 0
    assert usage.usage_mean_latency_ms == 0  # none reported
    after = metrics.REGISTRY.get_sample_value("banditd_gateway_caller_hangups_total", labels)
    assert after == (hangups or 0) + 1
