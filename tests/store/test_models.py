"""The schema's ids: once used, an id of a router, a feedback event or a parked feedback is never
given to another row, on SQLite too (migration 0019), and 0019 keeps what it rebuilds."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Table, delete, insert, literal_column, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.store import Database, migrate
from banditd.store.engine import alembic_config
from banditd.store.models import feedback_events, feedback_pending, routers

ID_TABLES = (routers, feedback_events, feedback_pending)


async def _add(conn: AsyncConnection, table: Table, router_id: int, key: str, **fields: Any) -> int:
    """Insert a row (``key``: the router's name, or the decision id) and return its id."""
    if table is routers:
        values: dict[str, Any] = dict(
            tenant="acme",
            name=key,
            policy="linucb",
            exploration=0.0,
            default_cost_weight=0.0,
            embedding_dim=4,
            feedback_ttl_seconds=86_400,
            prior_output_tokens=256,
            version=1,
            created_at=0.0,
            updated_at=0.0,
        )
    elif table is feedback_events:
        values = dict(arm="cheap", x=b"", reward=1.0, cost_usd=0.0, error=False, created_at=0.0)
    else:
        values = dict(tenant="acme", request={}, received_at=0.0)
    if table is not routers:
        values.update(router_id=router_id, decision_id=key)
    values.update(fields)
    row_id = await conn.scalar(insert(table).values(**values).returning(table.c.id))
    assert row_id is not None
    return int(row_id)


@pytest.mark.parametrize("table", ID_TABLES, ids=lambda t: t.name)
async def test_the_largest_id_deleted_is_never_given_again(database_url: str, table: Table) -> None:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    db = Database(database_url)
    try:
        async with db.transaction() as conn:
            owner = await _add(conn, routers, 0, "owner")
            ids = [await _add(conn, table, owner, f"row{i}") for i in range(3)]
        async with db.transaction() as conn:
            await conn.execute(delete(table).where(table.c.id == max(ids)))
        async with db.transaction() as conn:
            assert await _add(conn, table, owner, "again") > max(ids)
    finally:
        await db.close()


async def _rows(conn: AsyncConnection) -> dict[str, list[Any]]:
    """Every row of each table, with the columns it has at this revision (not the models')."""
    every = literal_column("*")
    return {
        t.name: [
            tuple(r) for r in await conn.execute(select(every).select_from(t).order_by(t.c.id))
        ]
        for t in ID_TABLES
    }


async def _shape(conn: AsyncConnection) -> dict[str, Any]:
    """What a rebuild must keep of each table: columns, indexes (unique ones and the primary
    key's included), foreign keys and triggers."""

    async def pragma(name: str, arg: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await conn.execute(text(f"PRAGMA {name}('{arg}')"))]

    shape = {}
    for t in ID_TABLES:
        indexes = set()
        for _, name, unique, origin, _ in await pragma("index_list", t.name):
            columns = tuple(r[2] for r in await pragma("index_info", name))
            indexes.add((name if origin == "c" else origin, unique, columns))
        triggers = await conn.scalars(
            text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
            {"t": t.name},
        )
        shape[t.name] = (
            await pragma("table_info", t.name),
            indexes,
            [r[2:] for r in await pragma("foreign_key_list", t.name)],
            sorted(triggers),
        )
    return shape


async def test_migration_0019_keeps_rows_ids_indexes_and_triggers_both_ways(
    sqlite_url: str,
) -> None:
    await migrate(sqlite_url, DEFAULT_MIGRATIONS_DIR, "0018")
    db = Database(sqlite_url)
    try:
        async with db.transaction() as conn:
            owner = await _add(conn, routers, 0, "owner")
            for table in ID_TABLES:
                for i in range(4):
                    await _add(conn, table, owner, f"row{i}")
                await conn.execute(delete(table).where(table.c.id == 2))  # a hole to keep
            rows, shape = await _rows(conn), await _shape(conn)
        assert shape["feedback_events"][3], "0011's triggers, to be kept"

        await migrate(sqlite_url, DEFAULT_MIGRATIONS_DIR, "0019")
        async with db.transaction() as conn:
            assert await _rows(conn) == rows and await _shape(conn) == shape
            sequence = dict((await conn.execute(text("SELECT * FROM sqlite_sequence"))).all())
            top = {t.name: max(r[0] for r in rows[t.name]) for t in ID_TABLES}
            assert sequence == top
            with pytest.raises(IntegrityError, match="out of bounds"):  # 0011's ceiling holds
                async with conn.begin_nested():
                    await _add(conn, feedback_events, owner, "costly", cost_usd=1e12)
            for table in ID_TABLES:
                await conn.execute(delete(table).where(table.c.id == top[table.name]))
        async with db.transaction() as conn:
            for table in ID_TABLES:
                assert await _add(conn, table, owner, "after") == top[table.name] + 1
            rows = await _rows(conn)

        await asyncio.to_thread(
            command.downgrade, alembic_config(sqlite_url, DEFAULT_MIGRATIONS_DIR), "0018"
        )
        async with db.transaction() as conn:
            assert await _rows(conn) == rows and await _shape(conn) == shape
    finally:
        await db.close()


async def test_migration_0019_goes_down_and_up(database_url: str) -> None:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    config = alembic_config(database_url, DEFAULT_MIGRATIONS_DIR)
    await asyncio.to_thread(command.downgrade, config, "0018")
    await asyncio.to_thread(command.upgrade, config, "head")
    db = Database(database_url)
    try:
        async with db.transaction() as conn:
            assert await _add(conn, routers, 0, "chat") == 1
    finally:
        await db.close()


@pytest.mark.postgres
async def test_replicas_that_migrate_one_database_at_once_all_start(postgres_url: str) -> None:
    """Replicas started together each migrate on start (BANDITD_MIGRATE_ON_START): one migrates,
    the others wait for it and find nothing left to do, rather than fail on its tables."""
    command = [sys.executable, "-m", "banditd.commands.cli", "migrate"]
    env = {**os.environ, "BANDITD_DATABASE_URL": postgres_url}
    runs = [
        await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.PIPE)
        for _ in range(3)
    ]
    outcomes = [await asyncio.wait_for(run.communicate(), 120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err for _, err in outcomes]
    db = Database(postgres_url)
    try:
        async with db.transaction() as conn:
            assert await _add(conn, routers, 0, "chat") == 1
    finally:
        await db.close()
