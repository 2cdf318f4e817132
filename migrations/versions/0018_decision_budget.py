"""A decision's budget price and outcome, additive: a repeated request_id, answered from the log,
says what the budget did to the first answer (null: logged before 0018, read as no budget).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("budget_price", sa.Float(), nullable=True))
    op.add_column("decisions", sa.Column("budget_outcome", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("decisions", "budget_outcome")
    op.drop_column("decisions", "budget_price")
