"""API key lookups: trusted for the cache time, kept through a database outage, over a real
key store (SQLite; Postgres stopped and started)."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from banditd.edge import keys
from banditd.edge.authenticator import Authenticator
from banditd.errors import Unauthenticated, Unavailable
from banditd.store import Database
from banditd.store.api_keys import KeyStore, StoredKey
from tests.edge.test_auth import bearer
from tests.helpers import StartServer, table_away
from tests.postgres_plugin import OwnPostgres


async def test_revocation_reaches_a_replica_within_the_cache_time(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    store = KeyStore(server.app.db)
    key, stored = await keys.create_key(store, "acme", ["select"])
    now = [100.0]
    auth = Authenticator(store, cache_seconds=5.0, clock=lambda: now[0])
    metadata = bearer(key)
    assert (await auth.authenticate(metadata)).tenant == "acme"
    await keys.revoke_key(store, stored.key_id)
    now[0] += 4.9
    assert (await auth.authenticate(metadata)).key_id == stored.key_id  # cached lookup
    now[0] += 0.2
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.authenticate(metadata)


async def test_a_database_outage_keeps_the_keys_a_replica_has_looked_up(
    sqlite_url: str, start_server: StartServer
) -> None:
    # Select works through an outage (docs/operations.md), so the keys it is called with must
    # too: each lookup past the cache time was UNAVAILABLE while the database was away.
    server = await start_server(sqlite_url)
    store = KeyStore(server.app.db)
    key, stored = await keys.create_key(store, "acme", ["select"])
    never_seen, _ = await keys.create_key(store, "acme", ["select"])
    unknown = bearer(f"bdk_0123456789abcdef_{'x' * 43}")
    now = [100.0]
    auth = Authenticator(store, cache_seconds=5.0, clock=lambda: now[0])
    assert (await auth.authenticate(bearer(key))).key_id == stored.key_id
    with pytest.raises(Unauthenticated, match="unknown API key"):
        await auth.authenticate(unknown)
    now[0] += 60.0
    async with table_away(server.app.db, "api_keys"):
        with capture_logs() as logs:
            assert (await auth.authenticate(bearer(key))).key_id == stored.key_id
            with pytest.raises(Unauthenticated, match="unknown API key"):
                await auth.authenticate(unknown)
        assert {e["event"] for e in logs} == {"auth_lookup_failed"}
        with pytest.raises(Unavailable):  # nothing to fall back on
            await auth.authenticate(bearer(never_seen))
    # Back: a revocation is seen once the cache time has passed again.
    await keys.revoke_key(store, stored.key_id)
    now[0] += 5.1
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.authenticate(bearer(key))


@pytest.mark.postgres
async def test_a_key_looked_up_keeps_working_while_postgres_is_stopped(
    own_postgres: OwnPostgres, start_server: StartServer
) -> None:
    server = await start_server(own_postgres.url)
    store = KeyStore(server.app.db)
    key, stored = await keys.create_key(store, "acme", ["select"])
    now = [100.0]
    auth = Authenticator(store, cache_seconds=5.0, clock=lambda: now[0])
    assert (await auth.authenticate(bearer(key))).key_id == stored.key_id
    now[0] += 60.0
    await own_postgres.stop()
    try:
        assert (await auth.authenticate(bearer(key))).key_id == stored.key_id
    finally:
        await own_postgres.start()


class CountingStore(KeyStore):
    """The real key store, recording each lookup; a lookup of a key in ``held`` waits for
    ``release``."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.lookups: list[str] = []
        self.held: set[str] = set()
        self.release = asyncio.Event()

    async def get(self, key_id: str) -> StoredKey | None:
        self.lookups.append(key_id)
        if key_id in self.held:
            await self.release.wait()
        return await super().get(key_id)


def unknown_key(i: int) -> str:
    return f"bdk_{i:016x}_{'x' * 43}"


async def test_a_full_cache_forgets_the_least_recently_used_key(
    sqlite_url: str, start_server: StartServer
) -> None:
    # The cache was cleared outright when full: a burst of unknown keys evicted every good key
    # at once, and each call then went to the database.
    server = await start_server(sqlite_url)
    store = CountingStore(server.app.db)
    key, stored = await keys.create_key(store, "acme", ["select"])
    auth = Authenticator(store, cache_seconds=5.0, clock=lambda: 100.0, max_keys=3)

    async def refused(i: int) -> None:
        with pytest.raises(Unauthenticated, match="unknown API key"):
            await auth.authenticate(bearer(unknown_key(i)))

    await auth.authenticate(bearer(key))
    await refused(0)
    await refused(1)
    await auth.authenticate(bearer(key))  # cached, and now the most recently used
    await refused(2)  # full: unknown 0, the least recently used, makes room
    assert store.lookups == [stored.key_id, *(unknown_key(i).split("_")[1] for i in range(3))]
    store.lookups.clear()
    assert (await auth.authenticate(bearer(key))).key_id == stored.key_id
    await refused(2)
    await refused(1)
    assert store.lookups == []  # all still cached
    await refused(0)
    assert store.lookups == [unknown_key(0).split("_")[1]]  # it was the one forgotten


async def test_concurrent_lookups_of_a_key_share_one_read(
    sqlite_url: str, start_server: StartServer
) -> None:
    # Every call that came while a key's lookup was on its way looked it up again: a burst of
    # calls with a new (or expired) key sent as many reads to the database.
    server = await start_server(sqlite_url)
    store = CountingStore(server.app.db)
    key, stored = await keys.create_key(store, "acme", ["select"])
    other, other_stored = await keys.create_key(store, "acme", ["select"])
    auth = Authenticator(store, cache_seconds=5.0, clock=lambda: 100.0)
    store.held.add(stored.key_id)
    calls = [asyncio.ensure_future(auth.authenticate(bearer(key))) for _ in range(5)]
    await asyncio.sleep(0)  # each call has begun, and waits on the held lookup
    # Another key is not held up behind it.
    principal = await asyncio.wait_for(auth.authenticate(bearer(other)), 30)
    assert principal.key_id == other_stored.key_id
    calls[0].cancel()  # the call whose lookup it is goes away: the others still get the answer
    store.release.set()
    principals = await asyncio.gather(*calls[1:])
    assert {p.key_id for p in principals} == {stored.key_id}
    assert store.lookups.count(stored.key_id) == 1
    assert calls[0].cancelled()
