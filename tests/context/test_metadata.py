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


async def test_a_slot_another_replica_gave_past_this_routers_own_ones_is_hashed(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A replica still on a wider metadata_slots (before its tail round sees the change) stores
    slots past a narrower router's own ones; the narrower one hashes such a value, as it does
    every value once the key is full, instead of placing it past its block (an IndexError,
    INTERNAL, with one key; another key's position with several)."""
    wide = router_config(metadata_keys=["app"], metadata_slots=16)  # 12 slots of their own
    narrow = router_config(metadata_keys=["app"], metadata_slots=4)  # 3 of their own
    old = await start_server(sqlite_url, tail_interval_s=3600.0)
    await old.admin.PutRouter(pb.PutRouterRequest(router=wide))
    new = await start_server(sqlite_url, tail_interval_s=3600.0)
    await new.admin.PutRouter(pb.PutRouterRequest(router=narrow))
    for i in range(5):  # the old replica places app-0..4 in slots 0..4
        await old.router.Select(
            pb.SelectRequest(
                tenant="acme", router="chat", embedding=X, metadata={"app": f"app-{i}"}
            )
        )
    reply = await new.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", embedding=X, metadata={"app": "app-4"})
    )
    x = (await new.claims(reply.decision_id)).x
    assert x is not None and x.shape == (1 + 4 + 4,)
    assert int(np.argmax(x[1 + 4 :])) == 3  # the narrow router's one hashed slot
