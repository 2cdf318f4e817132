"""Latency and energy heads (issue 21), additive: router default weights, arm priors, and the
energy a Feedback measured.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ADD / DROP COLUMN (SQLite >= 3.35 has both): a batch copy of feedback_events on SQLite
# would drop the triggers of 0011 that bound its money columns.
FLOATS = (
    ("routers", "default_latency_weight"),
    ("routers", "default_energy_weight"),
    ("arms", "prior_latency_ms"),
    ("arms", "input_energy_wh_per_mtok"),
    ("arms", "output_energy_wh_per_mtok"),
)


def upgrade() -> None:
    for table, column in FLOATS:
        op.add_column(table, sa.Column(column, sa.Float(), nullable=False, server_default="0"))
    op.add_column("feedback_events", sa.Column("energy_wh", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("feedback_events", "energy_wh")
    for table, column in reversed(FLOATS):
        op.drop_column(table, column)
