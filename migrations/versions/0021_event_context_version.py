"""Each feedback event's featurisation (its decision's context_version, or the warm start's
pipeline's), additive: a router folds only the events whose x its encoder's weights built (null:
logged before 0021, read as its decision's version, else as unknown and folded).

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ADD / DROP COLUMN (as 0016): a batch copy of feedback_events on SQLite would drop the
# triggers of 0011 that bound its money columns.
def upgrade() -> None:
    op.add_column("feedback_events", sa.Column("context_version", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("feedback_events", "context_version")
