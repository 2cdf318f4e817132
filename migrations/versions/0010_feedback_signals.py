"""Several feedback signals per decision (combine first / last / mean) and per-router thumbs.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        batch.add_column(sa.Column("combine", sa.String(8), nullable=False, server_default="first"))
        batch.add_column(
            sa.Column("thumb_up_reward", sa.Float(), nullable=False, server_default="1")
        )
        batch.add_column(
            sa.Column("thumb_down_reward", sa.Float(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("feedback_events") as batch:
        batch.add_column(sa.Column("signal", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("effective_reward", sa.Float(), nullable=True))
        batch.add_column(sa.Column("reward_delta", sa.Float(), nullable=True))
        batch.drop_constraint("uq_feedback_events_decision_id", type_="unique")
        batch.create_unique_constraint(
            "uq_feedback_events_decision_signal", ["decision_id", "signal"]
        )


def downgrade() -> None:
    with op.batch_alter_table("feedback_events") as batch:
        batch.drop_constraint("uq_feedback_events_decision_signal", type_="unique")
        batch.create_unique_constraint("uq_feedback_events_decision_id", ["decision_id"])
        batch.drop_column("reward_delta")
        batch.drop_column("effective_reward")
        batch.drop_column("signal")
    with op.batch_alter_table("routers") as batch:
        batch.drop_column("thumb_down_reward")
        batch.drop_column("thumb_up_reward")
        batch.drop_column("combine")
