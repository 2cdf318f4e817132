"""Errors the client raises of its own, against a real server on port 0: a call after close()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from banditd import client as bc
from banditd.v1 import banditd_pb2 as pb
from tests.client.test_client import Client, call, make_client, serving
from tests.helpers import StartServer

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
