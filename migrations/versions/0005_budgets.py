"""Budgets: per-tenant (or per-router) limits, their ledger per period, leases and charges.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("router", sa.String(128), nullable=False),
        sa.Column("limit_usd", sa.Float(), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("alerts", sa.JSON(), nullable=False),
        sa.Column("on_exhausted", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("tenant", "router", name=op.f("uq_budgets_tenant_router")),
    )
    op.create_table(
        "budget_ledger",
        sa.Column("budget_id", BigId, nullable=False),
        sa.Column("period_start", sa.Float(), nullable=False),
        sa.Column("period_end", sa.Float(), nullable=False),
        sa.Column("limit_usd", sa.Float(), nullable=False),
        sa.Column("spent_usd", sa.Float(), nullable=False),
        sa.Column("leased_usd", sa.Float(), nullable=False),
        sa.Column("last_grant_usd", sa.Float(), nullable=False),
        sa.Column("alerts_fired", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.id"],
            name=op.f("fk_budget_ledger_budget_id_budgets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("budget_id", "period_start", name=op.f("pk_budget_ledger")),
    )
    op.create_table(
        "budget_leases",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("budget_id", BigId, nullable=False),
        sa.Column("period_start", sa.Float(), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("granted_usd", sa.Float(), nullable=False),
        sa.Column("used_usd", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("closed_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.id"],
            name=op.f("fk_budget_leases_budget_id_budgets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_leases")),
    )
    op.create_index(
        "ix_budget_leases_closed_at_expires_at", "budget_leases", ["closed_at", "expires_at"]
    )
    op.create_table(
        "budget_charges",
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column("budget_id", BigId, nullable=False),
        sa.Column("period_start", sa.Float(), nullable=False),
        sa.Column("lease_id", sa.BigInteger(), nullable=True),
        sa.Column("expected_cost_usd", sa.Float(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.id"],
            name=op.f("fk_budget_charges_budget_id_budgets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("decision_id", "budget_id", name=op.f("pk_budget_charges")),
    )
    op.create_index("ix_budget_charges_lease_id", "budget_charges", ["lease_id"])


def downgrade() -> None:
    op.drop_index("ix_budget_charges_lease_id", table_name="budget_charges")
    op.drop_table("budget_charges")
    op.drop_index("ix_budget_leases_closed_at_expires_at", table_name="budget_leases")
    op.drop_table("budget_leases")
    op.drop_table("budget_ledger")
    op.drop_table("budgets")
