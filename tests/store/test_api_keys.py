"""API key records: a revocation marks a key once, on SQLite and Postgres."""

from __future__ import annotations

from banditd.edge import keys
from banditd.store import Database
from banditd.store.api_keys import KeyStore


async def test_a_second_revocation_says_the_key_already_was(db: Database) -> None:
    now = [1000.0]
    store = KeyStore(db, clock=lambda: now[0])
    _, stored = await keys.create_key(store, "acme", ["select"])
    revoked = await store.revoke(stored.key_id)
    assert revoked is not None and revoked[1] is True and revoked[0].revoked_at == 1000.0
    now[0] += 60.0
    again = await store.revoke(stored.key_id)
    assert again is not None and again[1] is False and again[0].revoked_at == 1000.0
    assert await store.revoke("0123456789abcdef") is None


async def test_a_tenant_of_none_lists_every_tenant(db: Database) -> None:
    store = KeyStore(db)
    _, acme = await keys.create_key(store, "acme", ["select"])
    _, every = await keys.create_key(store, keys.ALL_TENANTS, ["admin"])
    assert [k.key_id for k in await store.list()] == [acme.key_id, every.key_id]
    assert [k.key_id for k in await store.list("acme")] == [acme.key_id]
    assert [k.key_id for k in await store.list(keys.ALL_TENANTS)] == [every.key_id]
    assert await store.list("") == []  # a tenant named '' has no keys, not every tenant's
