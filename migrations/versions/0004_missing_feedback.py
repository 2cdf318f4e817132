"""Missing feedback: a router's default reward and wait, and the context logged with decisions.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        batch.add_column(sa.Column("default_reward", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("reward_wait_seconds", sa.Integer(), nullable=False, server_default="3600")
        )
    with op.batch_alter_table("feedback_events") as batch:
        batch.add_column(
            sa.Column("defaulted", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("x", sa.LargeBinary(), nullable=True))
        batch.create_index("ix_decisions_router_id_created_at", ["router_id", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_index("ix_decisions_router_id_created_at")
        batch.drop_column("x")
    with op.batch_alter_table("feedback_events") as batch:
        batch.drop_column("defaulted")
    with op.batch_alter_table("routers") as batch:
        batch.drop_column("reward_wait_seconds")
        batch.drop_column("default_reward")
