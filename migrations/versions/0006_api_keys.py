"""Security: API keys (hashed) and the per-router feedback cap per client key.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("roles", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False, server_default=""),
        sa.Column("secret_sha256", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_tenant"), "api_keys", ["tenant"])
    with op.batch_alter_table("routers") as batch:
        batch.add_column(
            sa.Column("feedback_cap_per_key", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column(
                "feedback_cap_window_seconds", sa.Integer(), nullable=False, server_default="3600"
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        batch.drop_column("feedback_cap_window_seconds")
        batch.drop_column("feedback_cap_per_key")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    op.drop_table("api_keys")
