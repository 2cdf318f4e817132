"""Gateway (issue 22), additive: each arm's upstream (base URL, model, the name of the env
variable holding its key; never a key), and usage reports kept apart from the event log.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ARM_COLUMNS = (
    ("upstream_base_url", sa.Text()),
    ("upstream_model", sa.String(256)),
    ("upstream_api_key_env", sa.String(128)),
)


def upgrade() -> None:
    for column, kind in ARM_COLUMNS:
        op.add_column("arms", sa.Column(column, kind, nullable=False, server_default=""))
    op.create_table(
        "decision_usage",
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column("router_id", BigId, nullable=False),
        sa.Column("arm", sa.String(128), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("first_token_ms", sa.Float(), nullable=True),
        sa.Column("energy_wh", sa.Float(), nullable=True),
        sa.Column("error", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["router_id"],
            ["routers.id"],
            name="fk_decision_usage_router_id_routers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("decision_id", name="pk_decision_usage"),
    )
    op.create_index("ix_decision_usage_router_id_arm", "decision_usage", ["router_id", "arm"])


def downgrade() -> None:
    op.drop_index("ix_decision_usage_router_id_arm", table_name="decision_usage")
    op.drop_table("decision_usage")
    for column, _ in reversed(ARM_COLUMNS):
        op.drop_column("arms", column)
