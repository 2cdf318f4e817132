"""Admin RPCs: router lifecycle, versions, and races between writers."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config


async def test_router_lifecycle(database_url: str, start_server: StartServer) -> None:
    server = await start_server(database_url)
    put = await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    assert put.created and put.router.version == 1
    assert put.router.embedding_dim == 4 and put.router.feedback_ttl_seconds == 86_400
    again = await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(arms=("cheap", "strong"), policy="thompson"))
    )
    assert not again.created and again.router.version == 2
    got = await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))
    assert got.router == again.router
    d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="x y"))
    assert d.arm in {"cheap", "strong"} and len(d.ranking) == 2
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(tenant="other")))
    listed = await server.admin.ListRouters(pb.ListRoutersRequest(tenant="acme"))
    assert [r.name for r in listed.routers] == ["chat"]
    everything = await server.admin.ListRouters(pb.ListRoutersRequest())
    assert sorted(r.tenant for r in everything.routers) == ["acme", "other"]
    deleted = await server.admin.DeleteRouter(pb.DeleteRouterRequest(tenant="acme", name="chat"))
    assert deleted.deleted
    gone = await server.admin.DeleteRouter(pb.DeleteRouterRequest(tenant="acme", name="chat"))
    assert not gone.deleted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_creates_of_one_router(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    results = await asyncio.gather(
        *(server.admin.PutRouter(pb.PutRouterRequest(router=router_config())) for _ in range(6)),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, pb.PutRouterResponse)]
    failed = [r for r in results if not isinstance(r, pb.PutRouterResponse)]
    assert sum(r.created for r in ok) == 1
    assert all(
        isinstance(f, grpc.aio.AioRpcError) and f.code() == grpc.StatusCode.ABORTED for f in failed
    )
    final = await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))
    assert final.router.version == max(r.router.version for r in ok)
    assert [a.name for a in final.router.arms] == ["cheap", "mid", "strong"]


async def test_a_context_change_that_keeps_x_size_needs_a_router_without_logs(
    database_url: str, start_server: StartServer
) -> None:
    """Same-size x built another way would read the logged x wrongly: refused once the router
    has served, taken before; a change of size relearns from the prior, so it is taken."""
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    windowed = router_config(text_window_tokens=64)
    assert (await server.admin.PutRouter(pb.PutRouterRequest(router=windowed))).router.version == 2
    d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="a b"))
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.PutRouter(
            pb.PutRouterRequest(router=router_config(text_window_tokens=128))
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "text_window_tokens: 64 -> 128" in (err.value.details() or "")
    got = await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))
    assert got.router.version == 2 and got.router.text_window_tokens == 64
    # the same context with another exploration, and another size of x: both taken
    tuned = router_config(text_window_tokens=64, exploration=0.3)
    assert (await server.admin.PutRouter(pb.PutRouterRequest(router=tuned))).router.version == 3
    wider = router_config(text_window_tokens=128, embedding_dim=8)
    assert (await server.admin.PutRouter(pb.PutRouterRequest(router=wider))).router.version == 4
