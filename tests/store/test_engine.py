"""Migrations (banditd.store.engine.migrate, migrations/env.py): a migration that fails half-way
leaves nothing of itself, on either database, so running it again once the cause is gone works."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.errors import FailedPrecondition, Unavailable
from banditd.store import Database, migrate

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
            with pytest.raises(Unavailable, match=r"could not lock a table within 0.2 s.*retry"):
                # The guard only turns a migration that waits forever into a failure.
                await asyncio.wait_for(migrate(postgres_url, migrations, lock_timeout_s=0.2), 60)
            await conn.rollback()
    finally:
        await holder.close()
    assert await _state(postgres_url) == before
