"""The Admin client of `banditd routers` and `banditd budgets` against a real server on port 0:
a delete whose answer is lost on the way back, and its retry; --wait for a server still starting."""

from __future__ import annotations

import argparse
import asyncio

import grpc
import pytest
import structlog

from banditd.commands import cli, routers
from banditd.commands.admin_client import AdminClient, delete_each
from banditd.edge.tls import ClientSecurity
from banditd.v1 import banditd_pb2 as pb
from tests.client.test_client import free_port
from tests.helpers import REPO, LoseFirstAnswer, StartServer, listening, router_config


def _delete(address: str, name: str) -> tuple[int, int]:
    """`banditd routers delete acme/NAME` through a connection that loses the first answer:
    its exit status, and how many answers were lost."""
    network = LoseFirstAnswer()
    with grpc.insecure_channel(address) as channel:
        admin = AdminClient(grpc.intercept_channel(channel, network), ClientSecurity(), 5.0)
        request = pb.DeleteRouterRequest(tenant="acme", name=name)
        status = delete_each(
            admin, "DeleteRouter", [(f"acme/{name}", request)], "deleted", "router {} not found"
        )
    return status, network.lost


async def test_a_retried_delete_whose_answer_was_lost_is_deleted(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first try deleted the router, its answer was lost (UNAVAILABLE), the retry finds
    nothing to delete: the command says deleted and exits 0, not "not found" and 1."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    capsys.readouterr()
    with structlog.testing.capture_logs():  # the server's logs, not the command's output
        assert await asyncio.to_thread(_delete, server.address, "chat") == (0, 1)
    assert capsys.readouterr() == ("acme/chat: deleted\n", "")
    listed = await server.admin.ListRouters(pb.ListRoutersRequest(tenant="acme"))
    assert list(listed.routers) == []


async def test_wait_reaches_a_server_up_after_the_first_failed_try(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's channel kept gRPC's reconnect backoff (1 s, growing to 120 s), failing each
    try of --wait at once while it waited: `--wait 0.5` gave up on a server up 0.5 s before (and
    a longer wait tried again ever more rarely). It now backs off as the client library's does."""
    server = await start_server(sqlite_url)
    port = free_port()
    routers = str(REPO / "examples" / "routers.yaml")
    argv = ["routers", "apply", "-f", routers, "--target", f"127.0.0.1:{port}", "--wait", "0.5"]
    capsys.readouterr()
    async with listening(port, server.app.port, drop_first=True):
        with structlog.testing.capture_logs():  # the server's logs, not the command's output
            status = await asyncio.to_thread(cli.main, argv)
    assert (status, capsys.readouterr()) == (0, ("demo/chat: created (version 1)\n", ""))


async def test_routers_delete_waits_its_timeout_for_the_answer(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A delete of a large router outlasted the fixed 30 s deadline of every Admin call, which
    cut it off (the server rolls it back). `routers delete --timeout S` is the delete's
    deadline (default 600 s): one that passes says so and exits 1; a long one deletes."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    argv = ["routers", "delete", "acme/chat", "--target", server.address]
    parser = argparse.ArgumentParser()
    routers.add_parser(parser.add_subparsers())
    assert parser.parse_args(argv).timeout == 600.0
    capsys.readouterr()
    with structlog.testing.capture_logs():  # the server's logs, not the command's output
        assert await asyncio.to_thread(cli.main, [*argv, "--timeout", "0.000001"]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            "banditd: acme/chat: no answer within 1e-06 s (DEADLINE_EXCEEDED; --timeout): a "
            "delete cut off is rolled back, so it may still be there; run it again with a "
            "longer --timeout\n"
        )
        assert await asyncio.to_thread(cli.main, [*argv, "--timeout", "600"]) == 0
    assert capsys.readouterr() == ("acme/chat: deleted\n", "")
