"""A batch of feedback events is stored as given, whatever its columns hold. On Postgres a column
with one value for the whole batch goes in as one parameter instead of an array
(``banditd.store.events._insert_new_events``): values alike but not the same (0.0 and -0.0), a
column set for some events only, and a batch of one must all come back exactly."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from banditd.domain import FeedbackEvent
from banditd.store.events import EventLog
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config


def _same(stored: FeedbackEvent, given: FeedbackEvent, signed_zero: bool) -> None:
    """``signed_zero``: the database keeps -0.0 (SQLite stores it as 0.0, its own rule)."""
    if not signed_zero and given.reward == 0.0:
        given = dataclasses.replace(given, reward=0.0)
    for f in dataclasses.fields(FeedbackEvent):
        if f.name == "event_id":
            continue
        got, want = getattr(stored, f.name), getattr(given, f.name)
        if f.name == "x":
            assert np.array_equal(got, want)
        else:  # repr: -0.0 is not 0.0, 1 is not True
            assert repr(got) == repr(want), f.name


async def test_a_batch_comes_back_from_the_log_as_given(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    token = (
        await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="hi"))
    ).decision_id
    claims = await server.claims(token)
    now = time.time()

    def event(k: int, **fields: Any) -> FeedbackEvent:
        base = FeedbackEvent(
            0, claims.router_id, f"d-{k}", claims.arm, claims.x, 1.0, 0.001, None, 200, None,
            False, now + k,
        )  # fmt: skip
        return dataclasses.replace(base, **fields)

    log = EventLog(server.app.db)
    signed_zero = database_url.startswith("postgresql")
    batches = [
        [event(0, reward=0.0), event(1, reward=-0.0), event(2, reward=0.0)],  # alike, not same
        [event(3, latency_ms=12.5, error=True), event(4, output_tokens=None), event(5)],
        [event(6, energy_wh=0.25, input_tokens=30)],  # a batch of one
    ]
    for batch in batches:
        appended = await log.append(batch)
        assert appended.positions == list(range(len(batch)))
        stored = {e.decision_id: e for e in appended.events}
        for given in batch:
            _same(stored[given.decision_id], given, True)  # as committed
    read = {e.decision_id: e for e in await log.after(claims.router_id, 0)}
    for batch in batches:
        for given in batch:
            _same(read[given.decision_id], given, signed_zero)
