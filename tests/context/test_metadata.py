"""Metadata features over a real store: the vocabulary under concurrent Selects."""

from __future__ import annotations

import asyncio

import numpy as np

from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config

X = pb.Embedding(values=[1.0, 0.0, 0.0, 0.0])


async def test_a_burst_of_new_metadata_values_is_served_each_in_a_slot_of_its_own(
    database_url: str, start_server: StartServer
) -> None:
    """Concurrent Selects that each bring a new value no longer race each other for the next
    free slot: on Postgres some lost every retry and were ABORTED."""
    server = await start_server(database_url)
    config = router_config(metadata_keys=["app"], metadata_slots=64)  # 48 slots of their own
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    values = [f"app-{i}" for i in range(40)]
    replies = await asyncio.gather(
        *(
            server.router.Select(
                pb.SelectRequest(tenant="acme", router="chat", embedding=X, metadata={"app": v})
            )
            for v in values
        )
    )
    slots = []
    for reply in replies:
        x = (await server.claims(reply.decision_id)).x
        assert x is not None
        block = x[1 + 4 :]  # after the intercept and the embedding
        assert block.sum() == 1.0
        slots.append(int(np.argmax(block)))
    assert sorted(slots) == list(range(40))
