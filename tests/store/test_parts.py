"""The store's parts: the clock they are given stamps what they write; an event the event log
does not add comes back with why."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import pytest

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.domain import FeedbackEvent, signal_rule
from banditd.edge import codec
from banditd.errors import AlreadyExists
from banditd.store import Database, Store, migrate
from banditd.store.api_keys import KeyStore, StoredKey
from tests.helpers import router_config

NOW = 1_700_000_000.5


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    db = Database(database_url)
    yield Store.over(db, clock=lambda: NOW)
    await db.close()


def _event(router_id: int, challenger: str | None = None) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=0,
        router_id=router_id,
        decision_id="d-1",
        arm="cheap",
        x=np.ones(5),
        reward=0.5,
        cost_usd=0.001,
        input_tokens=None,
        output_tokens=None,
        latency_ms=None,
        error=False,
        created_at=NOW,
        challenger=challenger,
    )


async def test_the_injected_clock_stamps_versions_and_snapshots(store: Store) -> None:
    stored, created = await store.routers.put(codec.spec_from_proto(router_config()))
    assert created
    assert [when for _, _, when, _ in await store.routers.versions(stored.router_id)] == [NOW]
    await store.learnt.write_snapshot(stored.router_id, 0, b"posterior")
    async with store.db.transaction() as conn:
        stamped = (await conn.exec_driver_sql("SELECT created_at FROM posterior_snapshots")).all()
    assert [row[0] for row in stamped] == [NOW]


@pytest.mark.parametrize(
    ("combine", "challenger", "why"),
    [
        ("first", None, "already has feedback (one event per decision)"),
        ("mean", "strong", "already has its preference"),
    ],
)
async def test_an_event_not_added_comes_back_with_why(
    store: Store, combine: str, challenger: str | None, why: str
) -> None:
    stored, _ = await store.routers.put(codec.spec_from_proto(router_config(combine=combine)))
    rule = signal_rule(combine)
    first = await store.events.append([_event(stored.router_id, challenger)], rule)
    assert first.positions == [0] and first.events[0].event_id > 0 and first.duplicates == {}
    again = await store.events.append([_event(stored.router_id, challenger)], rule)
    assert again.positions == [] and again.events == []
    assert isinstance(again.duplicates[0], AlreadyExists) and why in again.duplicates[0].message


async def test_a_refused_statement_does_not_echo_its_values(store: Store) -> None:
    """An error's text (a traceback, a log line) never carries a statement's values: here an
    API key's hash, written twice under one key id."""
    keys = KeyStore(store.db)
    secret = bytes.fromhex("5ec2e7" * 10)
    key = StoredKey("k1", "acme", frozenset({"select"}), "", secret, NOW, None)
    await keys.add(key)
    with pytest.raises(Exception) as refused:
        await keys.add(dataclasses.replace(key, tenant="globex"))
    text = str(refused.value)
    assert "globex" not in text and "5ec2e7" not in text and "x5e" not in text
