"""Ids never reused on SQLite: AUTOINCREMENT on the tables whose ids are cursors or references.

A plain INTEGER PRIMARY KEY on SQLite (the rowid) gives a new row max(id) + 1, so the row with
the largest id, once deleted, hands its id to the next row; Postgres (BIGSERIAL) never reuses one,
and this migration changes nothing there. On SQLite it rebuilds, ids and rows kept:

- ``routers``: a replica holds routers by id (live state, the decision log's pending decisions,
  decision tokens), and dead letters name one by id after it is deleted. A router deleted and
  created again must not get the deleted one's id.
- ``feedback_events``: replicas tail the log by id and snapshots record the last id applied; a
  router's deletion removes its events, and the next event must not take an id a cursor passed.
- ``feedback_pending``: a replica claims parked rows and settles them by id later; a router's
  deletion removes its rows (cascade), and a new row must not be settled in their place.

Left as they are: ``decisions`` (a uuid, not an integer), ``router_versions`` (keyed by the
router id and a version), ``posterior_snapshots`` (ordered by id within a router only, which a
reused id, always the largest, keeps), and ``budgets``, ``budget_leases``, ``dead_letters`` (no
row is ever deleted: a budget's deletion only marks it, and leases and letters are kept).

The rebuild is Alembic's batch copy, which keeps the columns, indexes and constraints but not
triggers, so the triggers of 0011 are read before and created again after. SQLite's own
sqlite_sequence starts at the largest id copied. Foreign key enforcement must be off, as the
migrations' own connection leaves it: dropping the old ``routers`` would otherwise cascade to
every row that refers to a router. The copy takes time and disk in proportion to the event log.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("routers", "feedback_events", "feedback_pending")


def _rebuild(autoincrement: bool) -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return  # Postgres never reuses an id
    if conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("migration 0019 needs SQLite's foreign keys off (PRAGMA foreign_keys)")
    for table in TABLES:
        triggers = sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t")
        kept = list(conn.execute(triggers, {"t": table}).scalars())
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ) as batch:
            if not autoincrement:  # AUTOINCREMENT's key is unnamed, on the column: name it again
                batch.create_primary_key(f"pk_{table}", ["id"])
        for sql in kept:
            op.execute(sql)


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
