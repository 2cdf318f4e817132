"""Feedback idempotency keys, additive: the key a Feedback named its event by, on the event and
on feedback parked before its decision row, unique per decision where set (null: none, or logged
before 0023), so that a resend is answered as the event it repeats, never a second signal.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_feedback_events_decision_id_idempotency_key"
KEYED = sa.text("idempotency_key IS NOT NULL")
TABLES = ("feedback_events", "feedback_pending")


# Plain ADD / DROP COLUMN (as 0021): a batch copy of feedback_events on SQLite would drop the
# triggers of 0011 that bound its money columns. Every existing row has no key: the partial
# index starts empty, but building it still reads the whole event log.
def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":  # SQLite: in the run's one transaction
        for table in TABLES:
            op.add_column(table, sa.Column("idempotency_key", sa.String(128), nullable=True))
        _create_index()
        return
    # Postgres: a plain CREATE INDEX would block every feedback write while it reads the log, so
    # the index is built CONCURRENTLY, which runs outside a transaction: the block commits the
    # columns (with the version still at 0022), and the version moves once the index is built.
    # Stopped in between, a rerun finds the columns (IF NOT EXISTS) and perhaps the index.
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS idempotency_key VARCHAR(128)")
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        # A concurrent build (and drop) waits for every older transaction to end, a report or a
        # backup, and Postgres counts that as a lock wait: the session's lock_timeout
        # (BANDITD_MIGRATE_LOCK_TIMEOUT_S, migrations/env.py) would fail it after it read the
        # log, while the wait blocks no reads or writes. Off for them only, then back for the
        # migrations after (a failure ends the run and its session).
        lock_timeout = bind.scalar(sa.text("SELECT current_setting('lock_timeout')"))
        bind.execute(sa.text("SET lock_timeout = 0"))
        # A build that failed or was stopped leaves its index behind, INVALID: enforced on
        # writes, never used for reads. Build it again; IF NOT EXISTS keeps only a valid one.
        valid = bind.scalar(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": INDEX},
        )
        if valid is False:
            op.drop_index(INDEX, table_name="feedback_events", postgresql_concurrently=True)
        _create_index(postgresql_concurrently=True, if_not_exists=True)
        bind.execute(
            sa.text("SELECT set_config('lock_timeout', :value, false)"), {"value": lock_timeout}
        )


def _create_index(**options: bool) -> None:
    op.create_index(
        INDEX,
        "feedback_events",
        ["decision_id", "idempotency_key"],
        unique=True,
        sqlite_where=KEYED,
        postgresql_where=KEYED,
        **options,
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="feedback_events")
    for table in reversed(TABLES):
        op.drop_column(table, "idempotency_key")
