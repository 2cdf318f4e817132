"""The budgets' tables (issue 6): budgets, their ledger per period, the leases replicas hold and
each decision's charge. The schema changes only through Alembic migrations in migrations/."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from banditd.store.models import BigId, metadata

budgets = Table(
    "budgets",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(128), nullable=False),
    # "" for a budget over every router of the tenant.
    Column("router", String(128), nullable=False),
    Column("limit_usd", Float, nullable=False),
    Column("period", String(16), nullable=False),
    Column("window_seconds", Integer, nullable=False),
    Column("window_start", Float, nullable=False),
    Column("alerts", JSON, nullable=False),
    Column("on_exhausted", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("tenant", "router", name="uq_budgets_tenant_router"),
)

# One row per budget and period. Invariant kept by every lease grant: spent + leased <= limit
# (spent grows past it only by feedback reporting more than a decision's expected cost).
budget_ledger = Table(
    "budget_ledger",
    metadata,
    Column("budget_id", BigId, ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True),
    Column("period_start", Float, primary_key=True),
    Column("period_end", Float, nullable=False),
    Column("limit_usd", Float, nullable=False),
    # Settled: the expected cost of decisions under closed leases, feedback corrections, overage.
    Column("spent_usd", Float, nullable=False),
    # Granted to open leases (their charges are spend too; the rest is not).
    Column("leased_usd", Float, nullable=False),
    Column("last_grant_usd", Float, nullable=False),
    # How many of the budget's alert fractions have fired this period.
    Column("alerts_fired", Integer, nullable=False),
)

budget_leases = Table(
    "budget_leases",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("budget_id", BigId, ForeignKey("budgets.id", ondelete="CASCADE"), nullable=False),
    Column("period_start", Float, nullable=False),
    Column("holder", String(128), nullable=False),
    Column("granted_usd", Float, nullable=False),
    Column("used_usd", Float, nullable=True),  # set when the lease closes
    Column("expires_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    Index("ix_budget_leases_closed_at_expires_at", "closed_at", "expires_at"),
)

# What each decision made under a budget reserved (and, once feedback reports it, really cost).
budget_charges = Table(
    "budget_charges",
    metadata,
    Column("decision_id", String(36), primary_key=True),
    Column("budget_id", BigId, ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True),
    Column("period_start", Float, nullable=False),
    Column("lease_id", BigInteger, nullable=True),  # None: over the budget (on_exhausted cheapest)
    Column("expected_cost_usd", Float, nullable=False),
    Column("cost_usd", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_budget_charges_lease_id", "lease_id"),
)

# DeleteBudget (migration 0017): a deleted budget's row stays, so that the charges of decisions
# still in flight keep their budget; SetBudget of the same tenant and router revives it.
budgets.append_column(Column("deleted_at", Float, nullable=True))
