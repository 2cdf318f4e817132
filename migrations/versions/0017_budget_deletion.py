"""DeleteBudget, additive: when a budget was deleted (null: it is in force).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("budgets", sa.Column("deleted_at", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("budgets", "deleted_at")
