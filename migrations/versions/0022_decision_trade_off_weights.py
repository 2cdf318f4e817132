"""A decision's request latency and energy weights, additive: off-policy evaluation scores each
decision at the weights its Select used (null: the request had none, or it was logged before
0022; the default of the decision's router version applies).

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("latency_weight", sa.Float(), nullable=True))
    op.add_column("decisions", sa.Column("energy_weight", sa.Float(), nullable=True))


def downgrade() -> None:  # plain DROP COLUMN, as 0020: a batch copy would drop 0011's triggers
    op.drop_column("decisions", "energy_weight")
    op.drop_column("decisions", "latency_weight")
