"""Alembic environment, after Alembic's async template. The URL comes from banditd's settings."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from alembic import context
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from banditd.store import budget_tables  # noqa: F401  (its tables join the metadata)
from banditd.store.models import metadata

config = context.config


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    from banditd.config import Settings

    return Settings().database_url


def _lock_timeout_ms() -> int:
    seconds = config.attributes.get("lock_timeout_s")
    if seconds is None:
        from banditd.config import Settings

        seconds = config.attributes["lock_timeout_s"] = Settings().migrate_lock_timeout_s
    return max(1, math.ceil(float(seconds) * 1000))  # 0 would mean no timeout to Postgres


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


# Postgres advisory lock key of banditd's migrations (any fixed number no other tool uses).
MIGRATION_LOCK = 0x62616E64
TURN_POLL_S = 0.5  # how often a replica waiting for another's migration asks for its turn
WAITING_FOR_TURN = "banditd migrate: waiting for its turn"  # application_name meanwhile


def _sqlite_transactions(engine: AsyncEngine) -> None:
    """SQLite's DDL in real transactions. pysqlite begins one only before an INSERT, UPDATE or
    DELETE, so each ADD COLUMN or CREATE INDEX committed by itself: a migration stopped half-way
    (killed, disk full, locked) kept its first statements under the old version, and running it
    again failed on them (duplicate column) for good. BEGIN IMMEDIATE takes the write lock before
    Alembic reads the version."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver begins nothing by itself

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _take_turn(connection: Connection) -> None:
    """Replicas started together each migrate on start: one at a time, the others then read the
    version it committed (Alembic reads it after this) and have nothing to do. The lock and the
    lock timeout are the session's, not a transaction's, so that they outlast 0023's commit; they
    end with the connection (engine.dispose below).

    A replica waits for its turn by asking again, between transactions: one blocked in
    pg_advisory_lock would hold a snapshot all along, and 0023's CREATE INDEX CONCURRENTLY waits
    for every older snapshot to end, so each would wait for the other (a deadlock)."""
    lock = text("SELECT pg_try_advisory_lock(:key)")
    named = text("SELECT set_config('application_name', :name, false)")
    # Polling leaves no lock wait in pg_locks: the wait shows in pg_stat_activity by this name
    # (committed, as a rollback would undo it).
    connection.execute(named, {"name": WAITING_FOR_TURN})
    connection.commit()
    while not connection.scalar(lock, {"key": MIGRATION_LOCK}):
        connection.rollback()
        time.sleep(TURN_POLL_S)
    connection.execute(named, {"name": "banditd migrate"})
    # Set after the advisory lock, which may rightly wait for another replica's whole migration.
    # An ALTER TABLE waiting behind a long transaction queues every query on that table behind
    # itself: past this wait it fails instead, and nothing changes (banditd.store.engine.migrate:
    # Unavailable, retry). 0023 lifts it for its concurrent index build, which blocks nothing.
    connection.execute(
        text("SELECT set_config('lock_timeout', :ms, false)"),  # SET, not SET LOCAL
        {"ms": f"{_lock_timeout_ms()}ms"},
    )
    connection.commit()


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        _take_turn(connection)
    # One transaction for the whole run, on SQLite too: a migration that fails leaves nothing.
    # (On Postgres, 0023 commits it to build its index outside a transaction, and begins another.)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        transactional_ddl=True,
    )
    try:
        with context.begin_transaction():
            context.run_migrations()
            # The revision the database is at now, for banditd.store.engine.migrate to check.
            config.attributes["revision"] = context.get_context().get_current_revision()
    except DBAPIError:
        if connection.dialect.name == "postgresql":
            _note_revision_left(connection)
        raise


def _note_revision_left(connection: Connection) -> None:
    """Where a failed run left the database, for migrate's message: the revision it started
    at, or the one 0023 committed before its index build. Left out if the connection is lost
    too (the original error is the one to report)."""
    with contextlib.suppress(DBAPIError, OSError):
        connection.rollback()
        config.attributes["revision"] = context.get_context().get_current_revision()


async def run_migrations_online() -> None:
    engine = create_async_engine(_url())
    if engine.dialect.name == "sqlite":
        _sqlite_transactions(engine)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
