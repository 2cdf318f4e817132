"""API key lookups: trusted for the cache time, kept through a database outage, over a real
key store (SQLite; Postgres stopped and started)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from banditd.edge import keys
from banditd.edge.authenticator import Authenticator
from banditd.errors import Unauthenticated, Unavailable
from banditd.store.api_keys import KeyStore
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
