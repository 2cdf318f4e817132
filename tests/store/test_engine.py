"""Migrations (banditd.store.engine.migrate, migrations/env.py): a migration that fails half-way
leaves nothing of itself, on either database, so running it again once the cause is gone works
(0023 on Postgres, which builds its index outside a transaction, repairs what it left instead).
Stopped by a lock timeout or a cancel on Postgres, it is UNAVAILABLE, naming the version kept."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.errors import FailedPrecondition, Unavailable
from banditd.store import Database, migrate
from tests.helpers import wait_until

MIGRATION_LOCK = 0x62616E64  # the migrations' advisory lock (migrations/env.py)

# A next migration shaped like 0022 (two ADD COLUMNs), stopped after its first statement: as a
# process killed, a full disk or a lock timeout would stop it.
HALF_WAY = """
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("decisions", sa.Column("first", sa.Float(), nullable=True))
    {stop}
    op.add_column("decisions", sa.Column("second", sa.Float(), nullable=True))


def downgrade():
    op.drop_column("decisions", "second")
    op.drop_column("decisions", "first")
"""


def _head() -> str:
    return max(p.name[:4] for p in (DEFAULT_MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))


async def _state(url: str) -> tuple[str, list[str]]:
    db = Database(url)
    try:
        async with db.transaction() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            columns = (await conn.execute(text("SELECT * FROM decisions WHERE 1 = 0"))).keys()
            assert version is not None
            return str(version), list(columns)
    finally:
        await db.close()


async def test_a_migration_stopped_half_way_leaves_nothing_and_runs_again(
    database_url: str, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, migrations)
    head = _head()
    await migrate(database_url, migrations)
    before = await _state(database_url)

    step = migrations / "versions" / "9999_half_way.py"
    step.write_text(HALF_WAY.format(head=head, stop='raise RuntimeError("stopped")'))
    with pytest.raises(RuntimeError, match="stopped"):
        await migrate(database_url, migrations)
    assert await _state(database_url) == before  # neither column, the version not moved

    step.write_text(HALF_WAY.format(head=head, stop="pass"))
    await migrate(database_url, migrations)
    version, columns = await _state(database_url)
    assert version == "9999" and columns == [*before[1], "first", "second"]


async def test_migrate_refuses_a_revision_the_database_is_past_and_changes_nothing(
    database_url: str,
) -> None:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    before = await _state(database_url)
    for older in ("0022", "base"):
        with pytest.raises(FailedPrecondition, match=f"at revision {_head()}, past {older}"):
            await migrate(database_url, DEFAULT_MIGRATIONS_DIR, older)
    with pytest.raises(FailedPrecondition, match="Can't locate revision identified by 'nope'"):
        await migrate(database_url, DEFAULT_MIGRATIONS_DIR, "nope")
    assert await _state(database_url) == before
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)  # already at head: nothing to do
    assert await _state(database_url) == before


async def test_a_database_locked_past_the_wait_is_unavailable_not_a_traceback(
    sqlite_url: str,
) -> None:
    # Another process holds SQLite's write lock for longer than the migration waits for it: a
    # clear UNAVAILABLE (retry later), the database unchanged, not the driver's raw error.
    await migrate(sqlite_url, DEFAULT_MIGRATIONS_DIR)
    before = await _state(sqlite_url)
    holder = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable, match=r"database unavailable.*locked"):
            await migrate(sqlite_url, DEFAULT_MIGRATIONS_DIR)
    finally:
        holder.close()
    assert await _state(sqlite_url) == before


@pytest.mark.postgres
async def test_a_migration_blocked_by_a_long_transaction_gives_up_and_changes_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    # A transaction that read the decisions table stays open: the next migration's ALTER TABLE
    # waits for it, and meanwhile every replica's query on decisions queues behind the ALTER.
    # Past the lock timeout it gives up: a clear UNAVAILABLE (retry), the database unchanged.
    migrations = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, migrations)
    await migrate(postgres_url, migrations)
    before = await _state(postgres_url)
    (migrations / "versions" / "9999_two_columns.py").write_text(
        HALF_WAY.format(head=_head(), stop="pass")
    )
    holder = Database(postgres_url)
    try:
        async with holder.engine.connect() as conn:
            await conn.execute(text("SELECT count(*) FROM decisions"))  # its transaction stays open
            kept = f"nothing after version {_head()} was applied, retry"
            with pytest.raises(Unavailable, match=rf"could not lock a table within 0.2 s.*{kept}"):
                # The guard only turns a migration that waits forever into a failure.
                await asyncio.wait_for(migrate(postgres_url, migrations, lock_timeout_s=0.2), 60)
            await conn.rollback()
    finally:
        await holder.close()
    assert await _state(postgres_url) == before


# 0023's index (migrations/versions/0023_feedback_idempotency_key.py), as Postgres describes it.
KEYED_INDEX = "uq_feedback_events_decision_id_idempotency_key"
KEYED_INDEX_DEF = (
    f"CREATE UNIQUE INDEX {KEYED_INDEX} ON public.feedback_events USING btree "
    "(decision_id, idempotency_key) WHERE (idempotency_key IS NOT NULL)"
)


async def _keyed_index(url: str) -> tuple[str, str | None, bool | None]:
    """The version, and 0023's index: its definition and whether it is valid (None: absent)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            index = (
                await conn.execute(
                    text(
                        "SELECT pg_get_indexdef(indexrelid), indisvalid FROM pg_index "
                        "WHERE indexrelid = to_regclass(:name)"
                    ),
                    {"name": KEYED_INDEX},
                )
            ).first()
            return str(version), *(index or (None, None))
    finally:
        await engine.dispose()


async def _building(conn: AsyncConnection, upgrade: asyncio.Task[None]) -> int:
    """Wait until the migration's index build waits for an older snapshot (one a test holds),
    and return its backend's pid; fail if the migration ends first (it built no such index)."""

    async def waiting() -> int | None:
        assert not upgrade.done(), "the migration ended without a CREATE INDEX CONCURRENTLY"
        row = (
            await conn.execute(
                text(
                    "SELECT pid, command, phase FROM pg_stat_progress_create_index "
                    "WHERE datname = current_database()"
                )
            )
        ).first()
        await conn.rollback()  # no snapshot of this connection's own for the build to wait for
        if row is None or row.phase != "waiting for old snapshots":
            return None
        assert row.command == "CREATE INDEX CONCURRENTLY"
        return int(row.pid)

    return int(await wait_until(waiting, "0023's index build to wait for an old snapshot", 60))


async def _hold_a_snapshot(conn: AsyncConnection) -> None:
    """A transaction that has read something (a long report, a backup): a CONCURRENTLY build
    waits for it before it ends, and a plain CREATE INDEX does not."""
    await conn.execute(text("BEGIN ISOLATION LEVEL REPEATABLE READ"))
    await conn.execute(text("SELECT count(*) FROM routers"))


@pytest.mark.postgres
async def test_0023_builds_its_index_concurrently_while_feedback_is_written(
    postgres_url: str,
) -> None:
    # A plain CREATE INDEX holds a SHARE lock on the event log while it reads all of it: every
    # feedback write waits for the build. CONCURRENTLY holds none that a write waits for.
    await migrate(postgres_url, DEFAULT_MIGRATIONS_DIR, "0022")
    engine = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as reader, engine.connect() as writer:
            await _hold_a_snapshot(reader)
            # The guards only turn a migration that waits forever into a failure.
            upgrade = asyncio.create_task(
                migrate(postgres_url, DEFAULT_MIGRATIONS_DIR, lock_timeout_s=120)
            )
            await _building(writer, upgrade)
            await writer.execute(text("BEGIN"))  # a feedback write's lock, taken at once
            await writer.execute(text("LOCK TABLE feedback_events IN ROW EXCLUSIVE MODE NOWAIT"))
            await writer.execute(text("ROLLBACK"))

            # The build runs after a commit, still under the migrations' lock: another replica's
            # migration still waits its turn.
            try_lock = text("SELECT pg_try_advisory_lock(:key)")
            assert await writer.scalar(try_lock, {"key": MIGRATION_LOCK}) is False
            await reader.execute(text("ROLLBACK"))
            await asyncio.wait_for(upgrade, 60)
    finally:
        await engine.dispose()
    assert await _keyed_index(postgres_url) == ("0023", KEYED_INDEX_DEF, True)


# A next migration that fails unless the session's lock timeout (0.2 s) is back after 0023.
LOCK_TIMEOUT_KEPT = """
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    timeout = op.get_bind().scalar(sa.text("SELECT current_setting('lock_timeout')"))
    if timeout != "200ms":
        raise RuntimeError(f"lock_timeout is {{timeout}} after 0023")


def downgrade():
    pass
"""


@pytest.mark.postgres
async def test_0023_waits_for_a_transaction_longer_than_the_lock_timeout_then_keeps_it(
    postgres_url: str, tmp_path: Path
) -> None:
    # A report older than the build runs past the lock timeout (BANDITD_MIGRATE_LOCK_TIMEOUT_S):
    # the build, which blocks nothing while it waits, waits for it and completes once it ends;
    # the migrations after 0023 have the lock timeout again.
    migrations = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, migrations)
    (migrations / "versions" / "9999_lock_timeout_kept.py").write_text(
        LOCK_TIMEOUT_KEPT.format(head=_head())
    )
    await migrate(postgres_url, migrations, "0022")
    engine = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as reader, engine.connect() as watcher:
            await _hold_a_snapshot(reader)
            upgrade = asyncio.create_task(migrate(postgres_url, migrations, lock_timeout_s=0.2))
            await _building(watcher, upgrade)
            await asyncio.sleep(1)  # the report goes on, five lock timeouts long
            assert not upgrade.done()
            await reader.execute(text("ROLLBACK"))
            await asyncio.wait_for(upgrade, 60)  # the guard only turns a hang into a failure
    finally:
        await engine.dispose()
    assert await _keyed_index(postgres_url) == ("9999", KEYED_INDEX_DEF, True)


@pytest.mark.postgres
async def test_0023_cancelled_while_it_builds_leaves_an_invalid_index_that_a_rerun_rebuilds(
    postgres_url: str,
) -> None:
    # An operator cancels the migration while its build waits for an older transaction
    # (pg_cancel_backend): a clear UNAVAILABLE, not the driver's error. The columns are
    # committed, the version is not, and the index Postgres left is INVALID: a rerun rebuilds it.
    await migrate(postgres_url, DEFAULT_MIGRATIONS_DIR, "0022")
    engine = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as reader, engine.connect() as operator:
            await _hold_a_snapshot(reader)
            upgrade = asyncio.create_task(
                migrate(postgres_url, DEFAULT_MIGRATIONS_DIR, lock_timeout_s=120)
            )
            pid = await _building(operator, upgrade)
            cancel = text("SELECT pg_cancel_backend(:pid)")
            assert await operator.scalar(cancel, {"pid": pid}) is True
            kept = "nothing after version 0022 was applied, rerun"
            with pytest.raises(Unavailable, match=rf"the migration was cancelled .*{kept}"):
                await asyncio.wait_for(upgrade, 60)
            await reader.execute(text("ROLLBACK"))
    finally:
        await engine.dispose()
    assert await _keyed_index(postgres_url) == ("0022", KEYED_INDEX_DEF, False)
    await migrate(postgres_url, DEFAULT_MIGRATIONS_DIR)
    assert await _keyed_index(postgres_url) == ("0023", KEYED_INDEX_DEF, True)
