"""Compact decision tokens (issue 20): feedback_pending, feedback whose decision row was not yet
visible when it was accepted, joined to the decision when the row appears (banditd.flows.joiner).
A new table only.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "feedback_pending",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column(
            "router_id",
            BigId,
            sa.ForeignKey(
                "routers.id",
                ondelete="CASCADE",
                name="fk_feedback_pending_router_id_routers",
            ),
            nullable=False,
        ),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("settled_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_feedback_pending"),
        sa.UniqueConstraint("decision_id", name="uq_feedback_pending_decision_id"),
    )
    op.create_index("ix_feedback_pending_state_id", "feedback_pending", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_pending_state_id", table_name="feedback_pending")
    op.drop_table("feedback_pending")
