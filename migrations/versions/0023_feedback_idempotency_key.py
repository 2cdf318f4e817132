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


# Plain ADD / DROP COLUMN (as 0021): a batch copy of feedback_events on SQLite would drop the
# triggers of 0011 that bound its money columns. Every existing row has no key: the partial
# index starts empty.
def upgrade() -> None:
    op.add_column("feedback_events", sa.Column("idempotency_key", sa.String(128), nullable=True))
    op.add_column("feedback_pending", sa.Column("idempotency_key", sa.String(128), nullable=True))
    op.create_index(
        INDEX,
        "feedback_events",
        ["decision_id", "idempotency_key"],
        unique=True,
        sqlite_where=KEYED,
        postgresql_where=KEYED,
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="feedback_events")
    op.drop_column("feedback_pending", "idempotency_key")
    op.drop_column("feedback_events", "idempotency_key")
