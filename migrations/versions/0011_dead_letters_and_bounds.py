"""Dead letters, and bounded money columns (issue 17).

- ``dead_letters``: rows set aside instead of written (see banditd.store.dead_letters).
- Every cost a row can hold is bounded: |cost| <= 1e9 USD
  (banditd.domain.ceilings.HARD_MAX_CALL_USD), and NaN is refused. A sum of such values over any
  number of rows a table can hold (< 2**63) stays below 1e29, so no spend total can overflow
  float64 again, on either database. Postgres gets CHECK constraints NOT VALID (rows logged
  before stay where they are: the posterior and the statistics skip them); SQLite, which adds a
  CHECK only by copying the table (and would then fail on those old rows), gets triggers that
  refuse the same rows.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_USD = "1e9"
# (table, column, lowest value): signals of "last"/"mean" routers carry cost changes (< 0).
BOUNDED = (
    ("feedback_events", "cost_usd", f"-{MAX_USD}"),
    ("decisions", "expected_cost_usd", "0"),
    ("budget_charges", "expected_cost_usd", "0"),
    ("budget_charges", "cost_usd", f"-{MAX_USD}"),
)


def _name(table: str, column: str) -> str:
    return f"ck_{table}_{column}_bounded"


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("router_id", sa.BigInteger(), nullable=True),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
        sa.UniqueConstraint("kind", "ref", name="uq_dead_letters_kind_ref"),
    )
    op.create_index("ix_dead_letters_router_id", "dead_letters", ["router_id"])
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, column, low in BOUNDED:
        allowed = f"{column} BETWEEN {low} AND {MAX_USD}"  # NaN is in no range on either database
        if postgres:
            op.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {_name(table, column)} "
                f"CHECK ({column} IS NULL OR {allowed}) NOT VALID"
            )
            continue
        for when in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER {_name(table, column)}_{when.lower()} BEFORE {when} ON {table} "
                f"WHEN NEW.{column} IS NOT NULL AND NOT (NEW.{allowed}) "
                f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {column} out of bounds'); END"
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, column, _ in BOUNDED:
        if postgres:
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {_name(table, column)}")
        else:
            for when in ("insert", "update"):
                op.execute(f"DROP TRIGGER {_name(table, column)}_{when}")
    op.drop_index("ix_dead_letters_router_id", "dead_letters")
    op.drop_table("dead_letters")
