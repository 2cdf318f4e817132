"""What both clients refuse before sending anything, against a real server on port 0."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from banditd.v1 import banditd_pb2 as pb
from tests.client.test_client import Client, call, make_client, serving
from tests.helpers import StartServer

__all__ = ["make_client"]  # test_client's fixture: sync and async clients


async def test_upload_feedback_refuses_an_unknown_option(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    """As select and feedback do: a misspelt chunk_size is not silently left out."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    decision = await call(client, "select", router="chat", prompt="hi")
    events = [{"decision_id": decision.decision_id, "thumb": "up"}]
    with pytest.raises(TypeError, match="unexpected arguments: chunksize"):
        await call(client, "upload_feedback", events, chunksize=10)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 0  # refused before sending anything
