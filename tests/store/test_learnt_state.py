"""A router's metadata vocabulary in the store (banditd.store.learnt_state), on both databases."""

from __future__ import annotations

import random

from sqlalchemy import insert

from banditd.edge import codec
from banditd.store import Database, Store
from banditd.store.learnt_state import LearntState, stored_value
from banditd.store.models import context_vocab
from tests.helpers import router_config


def _wide(n: int, seed: int) -> str:
    """n characters of 4 bytes each in UTF-8, not compressible."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x10000, 0x110000)) for _ in range(n))


async def test_the_longest_metadata_value_gets_a_slot(db: Database) -> None:
    """1,024 characters (the most a Select takes) of 4-byte UTF-8 are 4,096 bytes: past the
    row limit of the btree index of context_vocab's primary key on Postgres (2,704 bytes)."""
    spec = codec.spec_from_proto(router_config(metadata_keys=["task"]))
    router_id = (await Store.over(db).routers.put(spec))[0].router_id
    learnt = LearntState(db)
    value = _wide(1024, 1)
    other = value[:-1] + _wide(1, 2)  # the same but for the last character
    assert await learnt.assign_slot(router_id, "task", value, 10) == 0
    assert await learnt.assign_slot(router_id, "task", other, 10) == 1
    assert await learnt.assign_slot(router_id, "task", "short", 10) == 2
    assert await learnt.assign_slot(router_id, "task", value, 10) == 0
    assert await learnt.assign_slot(router_id, "task", other, 10) == 1
    assert len((await learnt.vocabulary(router_id))["task"]) == 3


async def test_a_long_value_stored_as_itself_keeps_its_slot_and_no_value_takes_a_digests(
    db: Database,
) -> None:
    spec = codec.spec_from_proto(router_config(metadata_keys=["task"]))
    router_id = (await Store.over(db).routers.put(spec))[0].router_id
    learnt = LearntState(db)
    legacy = _wide(400, 3)  # 1,600 bytes, stored as itself before digests (Postgres took it)
    async with db.transaction() as conn:
        await conn.execute(
            insert(context_vocab).values(router_id=router_id, key="task", value=legacy, slot=0)
        )
    assert await learnt.assign_slot(router_id, "task", legacy, 10) == 0
    value = _wide(1024, 1)
    assert await learnt.assign_slot(router_id, "task", value, 10) == 1
    # A value spelt as the stored form of another is a value of its own.
    assert await learnt.assign_slot(router_id, "task", stored_value(value), 10) == 2
    assert await learnt.assign_slot(router_id, "task", value, 10) == 1
