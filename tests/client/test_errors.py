"""Errors the client raises of its own, against a real server on port 0: a call after close(),
and an upload stopped part way, which says what it committed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from banditd import client as bc
from banditd.v1 import banditd_pb2 as pb
from tests.client.test_client import Client, call, make_client, serving
from tests.helpers import StartServer, wait_until

__all__ = ["make_client"]  # test_client's fixture: sync and async clients


@pytest.mark.parametrize("used", [True, False], ids=["after-a-call", "before-any-call"])
async def test_a_call_after_close_raises_client_closed(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client], used: bool
) -> None:
    """gRPC's own errors came out (the sync channel's ValueError, the aio one's UsageError), and
    an AsyncClient closed before its first call made a new channel and went on calling."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    if used:
        await call(client, "select", router="chat", prompt="hi")
    await call(client, "close")
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("select", (), {"router": "chat", "prompt": "hi"}),
        ("feedback", (), {"decision_id": "d-1", "thumb": "up"}),
        ("upload_feedback", ([{"decision_id": "d-1", "thumb": "up"}],), {}),
    ]
    for method, args, kwargs in calls:
        with pytest.raises(bc.ClientClosed, match="is closed") as raised:
            await call(client, method, *args, **kwargs)
        assert isinstance(raised.value, bc.BanditdError) and raised.value.code == "CANCELLED"
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == int(used)  # nothing was sent after close()


async def test_a_call_in_flight_when_the_client_closes_raises_client_closed(
    make_client: Callable[..., Client],
) -> None:
    """close() cancels the calls in flight: the sync client raised a plain BanditdError
    (CANCELLED, "Channel closed!"), the async one asyncio.CancelledError, which its caller takes
    for its own task's cancellation."""
    connected, done = asyncio.Event(), asyncio.Event()

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()  # and never answer: the call stays in flight
        await done.wait()
        writer.close()

    hung = await asyncio.start_server(hold, "127.0.0.1", 0)
    client = make_client(f"127.0.0.1:{hung.sockets[0].getsockname()[1]}", tenant="acme")
    pending = asyncio.ensure_future(call(client, "select", router="chat", prompt="hi"))
    await wait_until(connected.is_set, "the call to connect")
    await call(client, "close")
    with pytest.raises(bc.ClientClosed, match="closed during the call"):
        await pending
    done.set()
    hung.close()
    await hung.wait_closed()


async def test_an_upload_stopped_part_way_says_what_it_committed(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    """Chunks commit one by one; when a later one fails, the error carries the counts of those
    committed before it (they were lost: the caller could not tell what was accepted)."""
    server = await serving(start_server, sqlite_url, max_message_bytes=64 * 1024)
    client = make_client(server.address, tenant="acme")
    d = [await call(client, "select", router="chat", prompt=f"q{i}") for i in range(4)]
    events: list[bc.FeedbackArgs] = [
        {"decision_id": d[0].decision_id, "thumb": "up"},
        {"decision_id": d[1].decision_id, "thumb": "down"},
        {"decision_id": d[0].decision_id, "reward": 1.0},  # 2: duplicate
        {"decision_id": d[2].decision_id, "thumb": "up"},
        {"decision_id": "x" * 100_000, "thumb": "up"},  # over the server's message limit
        {"decision_id": d[3].decision_id, "thumb": "up"},
    ]
    with pytest.raises(bc.ResourceExhausted) as raised:
        await call(client, "upload_feedback", events, chunk_size=2)
    uploaded = raised.value.uploaded
    assert isinstance(uploaded, bc.UploadSummary)
    assert (uploaded.accepted, uploaded.duplicate, uploaded.invalid) == (3, 1, 0)
    assert [(e.index, e.kind) for e in uploaded.errors] == [(2, "duplicate")]
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 3


def _lines_then_a_bad_one(decision_ids: list[str]) -> Iterator[bc.FeedbackArgs]:
    for decision_id in decision_ids:
        yield json.loads(json.dumps({"decision_id": decision_id, "thumb": "up"}))
    yield json.loads('{"decision_id": ')  # a truncated line of the caller's file


@pytest.mark.parametrize("stop", ["unknown field", "iterable fails"])
async def test_an_upload_stopped_by_an_error_of_no_call_says_what_it_committed(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client], stop: str
) -> None:
    """The client's TypeError for an unknown field of a later event (a refusal, as docs/client.md
    lists them), or the caller's iterable failing, lost the counts of the chunks committed
    before it: only a BanditdError carried ``uploaded``."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    ids = [
        (await call(client, "select", router="chat", prompt=f"q{i}")).decision_id for i in (1, 2)
    ]
    events: Iterable[Any] = _lines_then_a_bad_one(ids)
    if stop == "unknown field":
        events = [
            *({"decision_id": i, "thumb": "up"} for i in ids),
            {"decision_id": "x", "colour": 1},
        ]
    with pytest.raises((TypeError, json.JSONDecodeError)) as raised:
        await call(client, "upload_feedback", events, chunk_size=1)
    uploaded = getattr(raised.value, "uploaded", None)
    assert isinstance(uploaded, bc.UploadSummary) and uploaded.accepted == 2
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 2
