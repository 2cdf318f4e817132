"""A decision's request cost weight, additive: off-policy evaluation scores each decision at the
weight its Select used (null: the request had none, or it was logged before 0020; the router's
default applies).

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("cost_weight", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("decisions", "cost_weight")
