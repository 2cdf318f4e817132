"""Pairwise feedback (issue 21), additive: a decision's challenger arm, and a preference event's
challenger and the reward it gave that arm.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ADD / DROP COLUMN (SQLite >= 3.35 has both): a batch copy of feedback_events on SQLite
# would drop the triggers of 0011 that bound its money columns.
def upgrade() -> None:
    op.add_column("decisions", sa.Column("challenger", sa.String(128), nullable=True))
    op.add_column("feedback_events", sa.Column("challenger", sa.String(128), nullable=True))
    op.add_column("feedback_events", sa.Column("challenger_reward", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("feedback_events", "challenger_reward")
    op.drop_column("feedback_events", "challenger")
    op.drop_column("decisions", "challenger")
