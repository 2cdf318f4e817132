"""Admin RPCs: router lifecycle, versions, and races between writers."""

from __future__ import annotations

import asyncio
import sys
from traceback import walk_stack

import grpc
import pytest
from structlog.testing import capture_logs

from banditd.flows.candidates import report
from banditd.flows.tokens import TokenSigner
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import EMBEDDING, SIGNING_KEY, Running, StartServer, router_config, wait_until


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


async def test_a_change_of_how_x_is_built_relearns_from_the_prior(
    database_url: str, start_server: StartServer
) -> None:
    """x of the same size built another way: the logged feedback, and feedback on decisions
    made before the change, no longer teach the router; what is decided after the change does,
    on this replica, on one restored from snapshot and log, and after another change of x."""
    server = await start_server(database_url, snapshot_every=4)

    async def served(reward: float = 0.0, *, send: bool = True) -> str:
        d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="q"))
        if send:
            await server.router.Feedback(
                pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=reward)
            )
        return d.decision_id

    async def level(at: Running = server) -> float:
        stats = await at.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
        return stats.prior_level

    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(text_window_tokens=64)))
    for _ in range(6):
        await served()
    late = await served(send=False)
    assert await level() < 0.69  # rewards of 0 pull the shared level under the prior's 0.7
    put = await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(text_window_tokens=128))
    )
    assert put.router.version == 2
    assert await level() == pytest.approx(0.7)  # learns again from its prior
    await server.router.Feedback(  # acknowledged, and logged, but decided under the old x
        pb.FeedbackRequest(tenant="acme", decision_id=late, reward=0)
    )
    assert await level() == pytest.approx(0.7)
    # A change that leaves x alone keeps what the router learnt since.
    for _ in range(5):
        await served()
    after = await level()
    assert after < 0.69
    # Off-policy evaluation reads only what was decided under this x: 5 decisions, not 12.
    report = await server.admin.Evaluate(
        pb.EvaluateRequest(
            tenant="acme",
            name="chat",
            candidates=[router_config(text_window_tokens=128)],
            bootstrap_replicates=50,
        )
    )
    assert report.decisions == 5
    tuned = router_config(text_window_tokens=128, exploration=0.3)
    assert (await server.admin.PutRouter(pb.PutRouterRequest(router=tuned))).router.version == 3
    assert await level() == pytest.approx(after)
    replica = await start_server(database_url)
    assert await level(replica) == pytest.approx(after)
    # Another size of x relearns as well.
    wider = router_config(text_window_tokens=128, embedding_dim=8)
    assert (await server.admin.PutRouter(pb.PutRouterRequest(router=wider))).router.version == 4
    assert await level() == pytest.approx(0.7)


async def test_a_router_created_again_does_not_take_the_deleted_ones_feedback(
    database_url: str, start_server: StartServer
) -> None:
    """A router deleted and created again is a new router with a new id, on SQLite too (before
    migration 0019 it got the deleted one's id): the deleted router's decisions are refused, not
    learnt by the new one."""
    server = await start_server(database_url)
    select = pb.SelectRequest(tenant="acme", router="chat", prompt="x y")
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    old = await server.router.Select(select)
    await server.admin.DeleteRouter(pb.DeleteRouterRequest(tenant="acme", name="chat"))
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    new = await server.router.Select(select)
    signer = TokenSigner(SIGNING_KEY.encode())
    routed_by = [signer.verify(d.decision_id, "acme").router_id for d in (old, new)]
    assert routed_by[1] > routed_by[0]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=old.decision_id, reward=1.0)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_abandoned_evaluate_stops_its_work(
    sqlite_url: str, start_server: StartServer
) -> None:
    """Evaluate runs in a thread, which a cancelled call does not end by itself: when the
    client gives up (cancels, or its deadline passes), the call's stop signal ends the work at
    its next check (here in a bootstrap of seconds), and the server logs how far it got."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))

    async def served() -> None:
        select = pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING)
        d = await server.router.Select(select)
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0.5)
        )

    await asyncio.gather(*(served() for _ in range(200)))
    request = pb.EvaluateRequest(
        tenant="acme",
        name="chat",
        candidates=[router_config(exploration=e) for e in (0.1, 0.2, 0.3)],
        bootstrap_replicates=100_000,  # seconds a candidate on 200 decisions
    )

    def evaluating() -> bool:
        """A thread of this process (the server's) runs Evaluate's work now."""
        frames = sys._current_frames().values()
        return any(f.f_code is report.__code__ for top in frames for f, _ in walk_stack(top))

    with capture_logs() as logs:
        call = server.admin.Evaluate(request)
        # Given up once the work runs, not after a fixed time: it may be quicker than any
        # deadline, or the deadline may pass before it starts, on a loaded machine.
        await wait_until(evaluating, "Evaluate's work to start", within=60)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        def abandoned() -> list[dict[str, object]]:
            return [e for e in logs if e["event"] == "evaluate_abandoned"]

        [line] = await wait_until(abandoned, "the abandoned Evaluate to stop", within=60)
    assert line["tenant"] == "acme" and line["router"] == "chat"
    assert line["candidates_total"] == 3 and line["candidates_done"] < 3
