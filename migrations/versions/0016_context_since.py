"""Relearning after a change of context, additive: the router version since which a router builds
x as now, and each feedback event's decision's router version.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ADD / DROP COLUMN (as 0013): a batch copy of feedback_events on SQLite would drop the
# triggers of 0011 that bound its money columns.
def upgrade() -> None:
    op.add_column(
        "routers", sa.Column("context_since", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("feedback_events", sa.Column("decision_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("feedback_events", "decision_version")
    op.drop_column("routers", "context_since")
