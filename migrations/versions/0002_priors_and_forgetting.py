"""Router priors, forgetting and forced exploration of new arms.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("forgetting", "prior_quality", "prior_weight")


def upgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=False, server_default="1.0"))
        batch.add_column(
            sa.Column("explore_new_arm", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        batch.drop_column("explore_new_arm")
        for name in reversed(COLUMNS):
            batch.drop_column(name)
