"""Decisions whose feedback never comes get the router's default reward, exactly once."""

from __future__ import annotations

from functools import partial

import grpc
import pytest
from sqlalchemy import select

from banditd.flows.tokens import TokenSigner
from banditd.store.events import EventLog
from banditd.store.models import feedback_events
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import SIGNING_KEY, StartServer, router_config, wait_until


async def test_default_reward_once_across_replicas(
    database_url: str, start_server: StartServer
) -> None:
    a = await start_server(database_url, tail_interval_s=0.05)
    b = await start_server(database_url, tail_interval_s=0.05)
    config = router_config(default_reward=0.0, reward_wait_seconds=1)
    await a.admin.PutRouter(pb.PutRouterRequest(router=config))
    made = [
        await a.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt=f"q {i}"))
        for i in range(3)
    ]
    await a.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=made[0].decision_id, reward=1.0)
    )
    for replica in (a, b):  # past the wait: both replicas applied the two defaults
        await wait_until(partial(replica.caught_up, 3), "the default rewards")
    for replica in (a, b):  # and more rounds on both give none twice
        await replica.tail_rounds()

    events = await EventLog(a.app.db).after(1, 0)
    assert [(e.reward, e.defaulted) for e in events] == [(1.0, False), (0.0, True), (0.0, True)]
    async with a.app.db.transaction() as conn:  # each logs its decision's featurisation
        column = select(feedback_events.c.context_version).order_by(feedback_events.c.id)
        logged = list(await conn.scalars(column))
    assert len(logged) == 3 and len(set(logged)) == 1 and logged[0].startswith("hashing:4:")
    signer = TokenSigner(SIGNING_KEY.encode())
    assert {e.decision_id for e in events[1:]} == {
        signer.verify(d.decision_id, "acme").decision_id for d in made[1:]
    }
    for replica in (a, b):
        assert replica.app.catalog._by_id[1].posterior.last_event_id == events[-1].event_id
    stats = await b.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 1  # defaults shape the posterior but are not feedback
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=made[1].decision_id, reward=1.0)
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
