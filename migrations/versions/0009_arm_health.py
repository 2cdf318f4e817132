"""Arm health: per-router circuit-breaker settings, and breaker state kept with snapshots.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        batch.add_column(
            sa.Column("breaker_error_rate", sa.Float(), nullable=False, server_default="0.5")
        )
        batch.add_column(
            sa.Column("breaker_min_events", sa.Integer(), nullable=False, server_default="20")
        )
        batch.add_column(
            sa.Column("breaker_cooldown_seconds", sa.Integer(), nullable=False, server_default="30")
        )
    with op.batch_alter_table("posterior_snapshots") as batch:
        batch.add_column(sa.Column("health", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("posterior_snapshots") as batch:
        batch.drop_column("health")
    with op.batch_alter_table("routers") as batch:
        batch.drop_column("breaker_cooldown_seconds")
        batch.drop_column("breaker_min_events")
        batch.drop_column("breaker_error_rate")
